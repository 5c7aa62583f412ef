//! The ingest pipeline shared by every source.
//!
//! A source submits validated events and waits for the outcome. Submissions
//! queue in a bounded channel; one committer task takes everything that is
//! waiting (up to `batch_size` events) and commits it in one transaction:
//! concurrent requests share a commit (group commit), so the cost of a
//! durable commit is paid once per batch, not per event. The outcome goes
//! back to each submitter only after the commit, which is when a source may
//! acknowledge (answer HTTP, store a Kafka offset, ack a NATS message).
//!
//! Memory is bounded: a semaphore holds one permit per queued event
//! (`buffer_size`), and a submission that cannot get its permits at once is
//! refused with [`SubmitError::Overloaded`] instead of queueing without
//! bound.

pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::model::Event;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Why a submission was not committed. None of these acknowledge anything.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SubmitError {
    /// The queue is full; the source should retry later.
    #[error("ingest queue is full")]
    Overloaded,
    /// The commit failed; nothing of the submission was stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The pipeline has stopped.
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// Sizes of the pipeline, from `analytics.ingestion`.
#[derive(Debug, Clone, Copy)]
pub struct PipelineSettings {
    /// Most events committed in one transaction.
    pub batch_size: usize,
    /// Most events queued (waiting or being committed) at once.
    pub buffer_size: usize,
}

struct Submission {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Vec<bool>, SubmitError>>,
    _permits: OwnedSemaphorePermit,
}

/// Handle to submit events; cheap to clone. The committer stops once every
/// handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Pipeline {
    sender: mpsc::Sender<Submission>,
    permits: Arc<Semaphore>,
    buffer_size: usize,
    telemetry: Arc<Telemetry>,
}

impl Pipeline {
    /// Starts the committer task.
    pub fn start(
        store: Arc<dyn Store>,
        settings: PipelineSettings,
        telemetry: Arc<Telemetry>,
    ) -> (Pipeline, JoinHandle<()>) {
        let buffer_size = settings.buffer_size.max(1);
        // Each submission holds at least one permit, so the channel never
        // holds more than `buffer_size` submissions.
        let (sender, receiver) = mpsc::channel(buffer_size);
        let committer = tokio::spawn(run_committer(
            receiver,
            store,
            settings.batch_size.max(1),
            Arc::clone(&telemetry),
        ));
        let pipeline = Pipeline {
            sender,
            permits: Arc::new(Semaphore::new(buffer_size)),
            buffer_size,
            telemetry,
        };
        (pipeline, committer)
    }

    /// Submits events and waits until they are committed. Returns, index for
    /// index, whether each was newly stored (`false`: duplicate id).
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<bool>, SubmitError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // A submission larger than the whole buffer takes the whole buffer.
        let wanted = u32::try_from(events.len().min(self.buffer_size)).unwrap_or(u32::MAX);
        let permits = match Arc::clone(&self.permits).try_acquire_many_owned(wanted) {
            Ok(permits) => permits,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.telemetry.overloaded.inc();
                return Err(SubmitError::Overloaded);
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
        };
        let queued = events.len() as i64;
        self.telemetry.queue_depth.add(queued);
        let (reply, outcome) = oneshot::channel();
        let submission = Submission {
            events,
            reply,
            _permits: permits,
        };
        let result = match self.sender.send(submission).await {
            Ok(()) => outcome.await.unwrap_or(Err(SubmitError::ShuttingDown)),
            Err(_) => Err(SubmitError::ShuttingDown),
        };
        self.telemetry.queue_depth.sub(queued);
        result
    }
}

async fn run_committer(
    mut receiver: mpsc::Receiver<Submission>,
    store: Arc<dyn Store>,
    batch_size: usize,
    telemetry: Arc<Telemetry>,
) {
    while let Some(first) = receiver.recv().await {
        let mut total = first.events.len();
        let mut submissions = vec![first];
        // Take what is already waiting; never wait for more. Under load the
        // queue refills while a commit runs, so batches grow by themselves;
        // when idle, a lone event commits at once.
        while total < batch_size {
            match receiver.try_recv() {
                Ok(submission) => {
                    total += submission.events.len();
                    submissions.push(submission);
                }
                Err(_) => break,
            }
        }
        commit(&*store, submissions, total, &telemetry).await;
    }
    tracing::debug!("ingest committer stopped: queue closed and drained");
}

async fn commit(
    store: &dyn Store,
    mut submissions: Vec<Submission>,
    total: usize,
    telemetry: &Telemetry,
) {
    let mut events = Vec::with_capacity(total);
    let mut lengths = Vec::with_capacity(submissions.len());
    for submission in &mut submissions {
        lengths.push(submission.events.len());
        events.append(&mut submission.events);
    }
    let started = Instant::now();
    match store.commit_batch(events).await {
        Ok(inserted) => {
            let new_events = inserted.iter().filter(|flag| **flag).count();
            telemetry.record_batch_committed(
                total,
                new_events,
                total - new_events,
                started.elapsed(),
            );
            let mut rest = inserted.as_slice();
            for (submission, length) in submissions.into_iter().zip(lengths) {
                let (mine, others) = rest.split_at(length.min(rest.len()));
                rest = others;
                // A submitter that went away (client disconnected) no longer
                // needs its answer; its events are committed all the same.
                let _ = submission.reply.send(Ok(mine.to_vec()));
            }
        }
        Err(error) => {
            telemetry.record_batch_failed(total);
            tracing::error!(events = total, error = %error, "batch commit failed; nothing acknowledged");
            let message = error.to_string();
            for submission in submissions {
                let _ = submission
                    .reply
                    .send(Err(SubmitError::CommitFailed(message.clone())));
            }
        }
    }
}
