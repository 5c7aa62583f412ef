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
//! The work that needs no database (rollup deltas, distinct values, trading
//! changes) is prepared apart from the commit, in parallel, for submissions
//! of more than a few events: a large one is prepared on the blocking pool
//! while it queues and while the embedded store inserts its events, so its
//! preparation is not paid before its commit starts. Small ones
//! (single-event POSTs) are prepared by the committer, all of a group's in
//! one pass (see [`Work`]).
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
use crate::store::{PreparedBatch, PreparingBatch, Store};
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
/// 10 000-event batch never stalls an async worker, and handed over while
/// being prepared.
const PREPARE_INLINE_MAX_EVENTS: usize = 64;

/// Submissions of at most this many events are left for the committer to
/// prepare, all of a group's together in one pass (see [`Work`]).
const PREPARE_IN_GROUP_MAX_EVENTS: usize = 16;

/// How events are prepared for the store (see [`PreparedBatch`]): its
/// rollup intervals, and whether it keeps the trading tables.
#[derive(Clone)]
struct Preparation {
    intervals: Arc<[Interval]>,
    trading: bool,
}

impl Preparation {
    fn prepare(&self, events: Vec<Event>) -> PreparedBatch {
        PreparedBatch::prepare_with(events, &self.intervals, self.trading)
    }

    fn start(&self, events: Vec<Event>) -> PreparingBatch {
        PreparingBatch::start(events, Arc::clone(&self.intervals), self.trading)
    }
}

/// What a submission hands the committer.
enum Work {
    /// Prepared by the submitter (a few dozen events).
    Prepared(PreparedBatch),
    /// Being prepared on the blocking pool, started by the submitter, in
    /// parallel with other submissions; the store may start on its events
    /// before the preparation ends (see [`Store::commit_preparing`]).
    Preparing(PreparingBatch),
    /// A small submission (single-event POSTs, mostly), prepared by the
    /// committer together with the other small ones of its group. Preparing
    /// it alone would build rollup deltas (a map entry and a sketch per
    /// series) only to merge them into the group's a moment later; in one
    /// pass, events of the same series share them.
    Small(Vec<Event>),
}

impl Work {
    fn len(&self) -> usize {
        match self {
            Work::Prepared(batch) => batch.len(),
            Work::Preparing(batch) => batch.len(),
            Work::Small(events) => events.len(),
        }
    }
}

struct Submission {
    work: Work,
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
    preparation: Preparation,
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
        let preparation = Preparation {
            intervals: settings.intervals.into(),
            trading: settings.trading,
        };
        let committer = tokio::spawn(run_committer(
            receiver,
            store,
            CommitterSettings {
                batch_size: settings.batch_size.max(1),
                in_flight: settings.commits_in_flight.max(1),
                preparation: preparation.clone(),
            },
            Arc::clone(&telemetry),
            settings.on_commit.clone(),
        ));
        let pipeline = Pipeline {
            sender,
            permits: Arc::new(Semaphore::new(buffer_size)),
            buffer_size,
            preparation,
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
        // Work that needs no database starts here, in the submitter's task
        // or on the blocking pool, so submissions prepare in parallel and
        // the committer only writes (small ones excepted: see `Work::Small`).
        let work = if events.len() <= PREPARE_IN_GROUP_MAX_EVENTS {
            Work::Small(events)
        } else if events.len() <= PREPARE_INLINE_MAX_EVENTS {
            Work::Prepared(self.preparation.prepare(events))
        } else {
            Work::Preparing(self.preparation.start(events))
        };
        let (reply, outcome) = oneshot::channel();
        let submission = Submission {
            work,
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
    /// How small submissions are prepared (see [`Work::Small`]).
    preparation: Preparation,
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
                &settings,
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
                waiting_events += submission.work.len();
                waiting.push(submission);
                // Take what is already waiting; never wait for more.
                while waiting_events < settings.batch_size {
                    match receiver.try_recv() {
                        Ok(submission) => {
                            waiting_events += submission.work.len();
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

/// A group's submissions as one batch for the store.
enum Group {
    Prepared(PreparedBatch),
    /// A lone submission still being prepared, handed over as it is.
    Preparing(PreparingBatch),
}

impl Group {
    fn events(&self) -> &[Event] {
        match self {
            Group::Prepared(batch) => &batch.events,
            Group::Preparing(batch) => batch.events(),
        }
    }
}

/// A submitter waiting for its group's commit: its reply, its permits and
/// how many of the group's events are its own.
type Waiter = (
    oneshot::Sender<Result<Vec<bool>, SubmitError>>,
    OwnedSemaphorePermit,
    usize,
);

/// Makes one batch of a group's submissions and lists their submitters in
/// `waiters`, in the order of their events. A lone submission being
/// prepared goes as it is; otherwise the small submissions come first, as
/// one batch prepared here, then the others, the ones being prepared
/// waited for. One whose preparation failed is answered at once and left
/// out (and out of `total`). `None`: no events left.
async fn gather(
    mut submissions: Vec<Submission>,
    total: &mut usize,
    settings: &CommitterSettings,
    telemetry: &Telemetry,
    waiters: &mut Vec<Waiter>,
) -> Option<Group> {
    if let [only] = submissions.as_slice()
        && matches!(only.work, Work::Preparing(_))
        && let Some(Submission {
            work: Work::Preparing(batch),
            reply,
            _permits,
        }) = submissions.pop()
    {
        waiters.push((reply, _permits, batch.len()));
        return Some(Group::Preparing(batch));
    }
    let mut small = Vec::new();
    let mut prepared = Vec::with_capacity(submissions.len());
    for submission in submissions {
        let batch = match submission.work {
            Work::Small(events) => {
                waiters.push((submission.reply, submission._permits, events.len()));
                small.extend(events);
                continue;
            }
            Work::Prepared(batch) => batch,
            Work::Preparing(batch) => {
                let length = batch.len();
                match batch.finish().await {
                    Ok(batch) => batch,
                    Err(error) => {
                        *total -= length;
                        telemetry.record_batch_failed(length);
                        tracing::error!(events = length, error = %error, "submission not committed");
                        let _ = submission
                            .reply
                            .send(Err(SubmitError::CommitFailed(error.to_string())));
                        continue;
                    }
                }
            }
        };
        prepared.push((submission.reply, submission._permits, batch));
    }
    let mut batches = Vec::with_capacity(prepared.len() + 1);
    if !small.is_empty() {
        batches.push(settings.preparation.prepare(small));
    }
    for (reply, permits, batch) in prepared {
        waiters.push((reply, permits, batch.len()));
        batches.push(batch);
    }
    PreparedBatch::combine(batches).map(Group::Prepared)
}

/// Commits one batch. Failed batches are answered at once; committed ones
/// are returned to wait for their sync.
async fn commit(
    store: &dyn Store,
    submissions: Vec<Submission>,
    mut total: usize,
    settings: &CommitterSettings,
    telemetry: &Telemetry,
    on_commit: Option<&dyn CommitListener>,
) -> Option<Vec<AwaitingSync>> {
    let mut waiters = Vec::with_capacity(submissions.len());
    let Some(group) = gather(submissions, &mut total, settings, telemetry, &mut waiters).await
    else {
        return Some(Vec::new());
    };
    let touched = group
        .events()
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
    let committed = match group {
        Group::Prepared(batch) => store.commit_batch(batch).await,
        Group::Preparing(batch) => store.commit_preparing(batch).await,
    };
    match committed {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::store::sqlite::{SqliteStore, Synchronous};

    const MINUTE: i64 = 1_700_000_040_000;

    fn event(event_type: &str, id: Uuid, offset_ms: i64) -> Event {
        let mut properties = serde_json::Map::new();
        properties.insert("latency_ms".into(), json!(offset_ms % 97));
        Event {
            id,
            event_type: event_type.into(),
            user_id: None,
            session_id: None,
            properties: properties.into(),
            timestamp_ms: MINUTE + offset_ms,
            created_at_ms: MINUTE,
        }
    }

    /// Small submissions are prepared by the committer, together, and go
    /// first in their group's batch; larger ones are still being prepared
    /// when they reach the committer, alone (the store inserts their events
    /// meanwhile) or in a group (waited for, then combined). Each submitter
    /// must still get the flags of exactly its own events, and the rollups
    /// must count every new event once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_of_small_prepared_and_preparing_submissions_answers_each_submitter_for_its_own_events()
     {
        let directory = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                &directory.path().join("pipeline.db"),
                Synchronous::Normal,
                &[Interval::M1],
            )
            .unwrap(),
        );
        let telemetry = Arc::new(Telemetry::new());
        let (pipeline, committer) = Pipeline::start(
            Arc::clone(&store),
            PipelineSettings {
                batch_size: 100_000,
                commits_in_flight: 1,
                buffer_size: 100_000,
                intervals: vec![Interval::M1],
                trading: true,
                on_commit: None,
            },
            Arc::clone(&telemetry),
        );
        // Stored first: later submissions repeat some of these ids.
        let stored: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
        let first: Vec<Event> = stored
            .iter()
            .enumerate()
            .map(|(index, id)| event("order.placed", *id, index as i64))
            .collect();
        assert!(pipeline.submit(first).await.unwrap().iter().all(|new| *new));

        // A large submission keeps the writer busy while the others queue
        // behind it, so they share the next commit.
        let large: Vec<Event> = (0..20_000)
            .map(|index| event("page.view", Uuid::now_v7(), index % 60_000))
            .collect();
        let mut tasks = vec![tokio::spawn({
            let pipeline = pipeline.clone();
            async move { (vec![true; large.len()], pipeline.submit(large).await) }
        })];
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut repeated = stored.iter();
        for submission in 0..30usize {
            // In turn one event (small), 20 (prepared by the submitter)
            // and 100 (being prepared); every fourth submission repeats a
            // stored id, at a position that differs between submissions.
            let size = [1, 20, 100][submission % 3];
            let mut events = Vec::with_capacity(size);
            let mut expected = Vec::with_capacity(size);
            for index in 0..size {
                let repeat = submission % 4 == 0 && index == submission % size;
                let id = if repeat {
                    *repeated.next().unwrap()
                } else {
                    Uuid::now_v7()
                };
                let kind = if index % 2 == 0 {
                    "order.placed"
                } else {
                    "user.login"
                };
                events.push(event(kind, id, (submission * 100 + index) as i64));
                expected.push(!repeat);
            }
            let pipeline = pipeline.clone();
            tasks.push(tokio::spawn(async move {
                (expected, pipeline.submit(events).await)
            }));
        }
        let mut new_events = 40;
        for task in tasks {
            let (expected, answered) = task.await.unwrap();
            assert_eq!(answered.unwrap(), expected);
            new_events += expected.iter().filter(|new| **new).count();
        }
        let commits = telemetry.ingestion_metrics().batches_processed;
        assert!(
            commits < 30,
            "the submissions were not grouped ({commits} commits)"
        );

        drop(pipeline);
        committer.await.unwrap();
        store.fold_pending().await.unwrap();
        let by_type: BTreeMap<String, u64> = store
            .count_events_by_type(MINUTE - 60_000, MINUTE + 120_000)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(by_type.values().sum::<u64>(), new_events as u64);
        for (event_type, count) in &by_type {
            let counted: u64 = store
                .read_rollups(
                    crate::model::metric::EVENTS_COUNT,
                    Some(event_type),
                    Interval::M1,
                    MINUTE - 60_000,
                    MINUTE + 120_000,
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.accumulator.count())
                .sum();
            assert_eq!(counted, *count, "{event_type}");
        }
    }
}
