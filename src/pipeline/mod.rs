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
//! Up to `commits_in_flight` transactions run at once (PostgreSQL, where
//! several connections commit in parallel), but one starts beside running
//! ones only when a full `batch_size` is waiting: smaller groups keep
//! growing instead. The embedded store has one writer and commits one at a
//! time, so it runs with one: a second commit prepared while the first
//! runs would only split the next group.
//!
//! A committed batch is answered only after [`Store::sync`] made it durable.
//! A separate syncer task runs the syncs, so one fsync covers every batch
//! committed while the previous one ran and the committer never waits for
//! the disk (group sync).
//!
//! Memory is bounded: a semaphore holds one permit per queued event
//! (`buffer_size`), and a submission that cannot get its permits at once is
//! refused with [`SubmitError::Overloaded`] instead of queueing without
//! bound.

pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::model::Event;
use crate::rollup::Interval;
use crate::store::{PreparedBatch, Store};
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

/// Why [`Pipeline::try_submit`] did not commit.
#[derive(Debug)]
pub enum Refused {
    /// The queue is full: the events, untouched, to offer again later.
    Full(Vec<Event>),
    /// Anything else ([`SubmitError`] other than `Overloaded`).
    Failed(SubmitError),
}

/// Sizes of the pipeline, from `analytics.ingestion`.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Most events committed in one transaction.
    pub batch_size: usize,
    /// Most transactions committing at once (at least one).
    pub commits_in_flight: usize,
    /// Most events queued (waiting or being committed) at once.
    pub buffer_size: usize,
    /// The rollup intervals of the store.
    pub intervals: Vec<Interval>,
    /// Whether the store keeps the trading tables for these events.
    pub trading: bool,
    /// Told about every committed batch.
    pub on_commit: Option<Arc<dyn CommitListener>>,
}

impl std::fmt::Debug for dyn CommitListener {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("CommitListener")
    }
}

/// The event-time span a committed batch touched: every event it inserted
/// lies in `[min_timestamp_ms, max_timestamp_ms]` (duplicates may widen it;
/// never narrower).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchedTime {
    pub min_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
}

/// Something that must learn which event times changed, e.g. a query cache
/// invalidating the answers that cover them. Called by the committer right
/// after each successful commit, before the batch is acknowledged; it must
/// not block (hand slow work to a task of its own).
pub trait CommitListener: Send + Sync {
    fn committed(&self, touched: TouchedTime);
}

/// Submissions larger than this are prepared on the blocking pool, so a
/// 10 000-event batch never stalls an async worker.
const PREPARE_INLINE_MAX_EVENTS: usize = 64;

struct Submission {
    batch: PreparedBatch,
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
    intervals: Arc<[Interval]>,
    trading: bool,
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
            CommitterSettings {
                batch_size: settings.batch_size.max(1),
                in_flight: settings.commits_in_flight.max(1),
            },
            Arc::clone(&telemetry),
            settings.on_commit.clone(),
        ));
        let pipeline = Pipeline {
            sender,
            permits: Arc::new(Semaphore::new(buffer_size)),
            buffer_size,
            intervals: settings.intervals.into(),
            trading: settings.trading,
            telemetry,
        };
        (pipeline, committer)
    }

    /// Submits events and waits until they are committed. Returns, index for
    /// index, whether each was newly stored (`false`: duplicate id).
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<bool>, SubmitError> {
        match self.try_submit(events).await {
            Ok(inserted) => Ok(inserted),
            Err(Refused::Full(_)) => Err(SubmitError::Overloaded),
            Err(Refused::Failed(error)) => Err(error),
        }
    }

    /// Like [`Pipeline::submit`], but a submission refused because the
    /// queue is full gets its events back, so a source can wait and offer
    /// them again without keeping a copy of every batch.
    pub async fn try_submit(&self, events: Vec<Event>) -> Result<Vec<bool>, Refused> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // A submission larger than the whole buffer takes the whole buffer.
        let wanted = u32::try_from(events.len().min(self.buffer_size)).unwrap_or(u32::MAX);
        let permits = match Arc::clone(&self.permits).try_acquire_many_owned(wanted) {
            Ok(permits) => permits,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.telemetry.overloaded.inc();
                return Err(Refused::Full(events));
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(Refused::Failed(SubmitError::ShuttingDown));
            }
        };
        let queued = events.len() as i64;
        self.telemetry.queue_depth.add(queued);
        // Work that needs no database happens here, in the submitter's task,
        // so submissions prepare in parallel and the committer only writes.
        let batch = if events.len() <= PREPARE_INLINE_MAX_EVENTS {
            PreparedBatch::prepare_with(events, &self.intervals, self.trading)
        } else {
            let intervals = Arc::clone(&self.intervals);
            let trading = self.trading;
            match tokio::task::spawn_blocking(move || {
                PreparedBatch::prepare_with(events, &intervals, trading)
            })
            .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    self.telemetry.queue_depth.sub(queued);
                    return Err(Refused::Failed(SubmitError::CommitFailed(format!(
                        "preparing the batch failed: {error}"
                    ))));
                }
            }
        };
        let (reply, outcome) = oneshot::channel();
        let submission = Submission {
            batch,
            reply,
            _permits: permits,
        };
        let result = match self.sender.send(submission).await {
            Ok(()) => outcome.await.unwrap_or(Err(SubmitError::ShuttingDown)),
            Err(_) => Err(SubmitError::ShuttingDown),
        };
        self.telemetry.queue_depth.sub(queued);
        result.map_err(Refused::Failed)
    }
}

/// A committed submission waiting for its sync before it is answered.
struct AwaitingSync {
    reply: oneshot::Sender<Result<Vec<bool>, SubmitError>>,
    inserted: Vec<bool>,
    _permits: OwnedSemaphorePermit,
}

/// Committed batches in flight between the committer and the syncer.
const SYNC_QUEUE_BATCHES: usize = 64;

/// How the committer groups and overlaps its transactions.
struct CommitterSettings {
    batch_size: usize,
    in_flight: usize,
}

async fn run_committer(
    mut receiver: mpsc::Receiver<Submission>,
    store: Arc<dyn Store>,
    settings: CommitterSettings,
    telemetry: Arc<Telemetry>,
    on_commit: Option<Arc<dyn CommitListener>>,
) {
    let (to_syncer, syncer_queue) = mpsc::channel(SYNC_QUEUE_BATCHES);
    let syncer = tokio::spawn(run_syncer(syncer_queue, Arc::clone(&store)));
    let mut committing = FuturesUnordered::new();
    // Submissions taken from the queue for the next commit.
    let mut waiting: Vec<Submission> = Vec::new();
    let mut waiting_events = 0;
    let mut open = true;
    loop {
        // A commit starts at once when none runs: when idle, a lone event
        // commits at once; under load the queue refills while a commit
        // runs, so groups grow by themselves. Beside a running commit one
        // starts only with a full batch waiting: small groups (single
        // events) gain more from growing than from overlapping.
        if !waiting.is_empty()
            && (committing.is_empty()
                || (committing.len() < settings.in_flight && waiting_events >= settings.batch_size))
        {
            committing.push(commit(
                &*store,
                std::mem::take(&mut waiting),
                std::mem::take(&mut waiting_events),
                &telemetry,
                on_commit.as_deref(),
            ));
            continue;
        }
        if !open && waiting.is_empty() && committing.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            // Finished commits first: they free a slot and are answered.
            Some(committed) = committing.next(), if !committing.is_empty() => {
                if let Some(committed) = committed
                    && to_syncer.send(committed).await.is_err()
                {
                    tracing::error!("syncer stopped early; committed events left unanswered");
                }
            }
            next = receiver.recv(), if open && waiting_events < settings.batch_size => {
                let Some(submission) = next else {
                    open = false;
                    continue;
                };
                waiting_events += submission.batch.len();
                waiting.push(submission);
                // Take what is already waiting; never wait for more.
                while waiting_events < settings.batch_size {
                    match receiver.try_recv() {
                        Ok(submission) => {
                            waiting_events += submission.batch.len();
                            waiting.push(submission);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }
    drop(to_syncer);
    if let Err(error) = syncer.await {
        tracing::error!(error = %error, "syncer task failed");
    }
    tracing::debug!("ingest committer stopped: queue closed and drained");
}

/// Answers committed batches once they are durable. Each sync covers every
/// batch committed before it began, so under load one fsync answers many
/// batches while the committer goes on with the next.
async fn run_syncer(mut queue: mpsc::Receiver<Vec<AwaitingSync>>, store: Arc<dyn Store>) {
    while let Some(first) = queue.recv().await {
        let mut batches = vec![first];
        while let Ok(more) = queue.try_recv() {
            batches.push(more);
        }
        let synced = store.sync().await;
        if let Err(error) = &synced {
            // The events are committed but may not be durable: they are not
            // acknowledged. A client retry with the same id is deduplicated.
            tracing::error!(error = %error, "sync after commit failed; batch not acknowledged");
        }
        for waiting in batches.into_iter().flatten() {
            let answer = match &synced {
                Ok(()) => Ok(waiting.inserted),
                Err(error) => Err(SubmitError::CommitFailed(error.to_string())),
            };
            // A submitter that went away (client disconnected) no longer
            // needs its answer; its events are committed all the same.
            let _ = waiting.reply.send(answer);
        }
    }
}

/// Commits one batch. Failed batches are answered at once; committed ones
/// are returned to wait for their sync.
async fn commit(
    store: &dyn Store,
    submissions: Vec<Submission>,
    total: usize,
    telemetry: &Telemetry,
    on_commit: Option<&dyn CommitListener>,
) -> Option<Vec<AwaitingSync>> {
    // The batches go to the store as one; each submitter keeps its reply,
    // its permits and how many of the events were its own.
    let mut waiters = Vec::with_capacity(submissions.len());
    let mut batches = Vec::with_capacity(submissions.len());
    for Submission {
        batch,
        reply,
        _permits,
    } in submissions
    {
        waiters.push((reply, _permits, batch.len()));
        batches.push(batch);
    }
    let Some(combined) = PreparedBatch::combine(batches) else {
        return Some(Vec::new());
    };
    let touched = combined
        .events
        .iter()
        .fold(None, |span: Option<TouchedTime>, event| {
            let timestamp = event.timestamp_ms;
            Some(match span {
                None => TouchedTime {
                    min_timestamp_ms: timestamp,
                    max_timestamp_ms: timestamp,
                },
                Some(span) => TouchedTime {
                    min_timestamp_ms: span.min_timestamp_ms.min(timestamp),
                    max_timestamp_ms: span.max_timestamp_ms.max(timestamp),
                },
            })
        });
    let started = Instant::now();
    match store.commit_batch(combined).await {
        Ok(inserted) => {
            if let (Some(listener), Some(touched)) = (on_commit, touched) {
                listener.committed(touched);
            }
            let new_events = inserted.iter().filter(|flag| **flag).count();
            telemetry.record_batch_committed(
                total,
                new_events,
                total - new_events,
                started.elapsed(),
            );
            let mut rest = inserted.as_slice();
            let mut waiting = Vec::with_capacity(waiters.len());
            for (reply, _permits, length) in waiters {
                let (mine, others) = rest.split_at(length.min(rest.len()));
                rest = others;
                waiting.push(AwaitingSync {
                    reply,
                    inserted: mine.to_vec(),
                    _permits,
                });
            }
            Some(waiting)
        }
        Err(error) => {
            telemetry.record_batch_failed(total);
            tracing::error!(events = total, error = %error, "batch commit failed; nothing acknowledged");
            let message = error.to_string();
            for (reply, _permits, _) in waiters {
                let _ = reply.send(Err(SubmitError::CommitFailed(message.clone())));
            }
            None
        }
    }
}
