//! Storage: the [`Store`] trait every backend implements, and what the
//! backends share.
//!
//! Invariants every implementation keeps:
//! - [`Store::commit_batch`] is atomic: the new events and the rollups of
//!   exactly those events are committed in one transaction, or nothing is.
//! - An event whose id is already stored is skipped and contributes nothing
//!   (exactly-once rollups under retries and redelivery).
//! - Rollups are additive and bucketed by event time, so late events update
//!   the bucket they belong to.
//!
//! Nothing above this trait knows which backend it talks to.

mod checkpoint;
mod decoded_cache;
mod distinct_cache;
mod pending;
pub mod postgres;
mod rollup_cache;
pub mod sqlite;

use async_trait::async_trait;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::metric::{for_each_contribution, for_each_distinct};
use crate::model::{CustomEventDefinition, Event};
use crate::rollup::{Accumulator, Interval, RollupBatch};
use crate::trading::summary::{Mark, MergeSlices, SummaryBody, SummaryKind, SummaryPart};
use crate::trading::{BarDelta, FillView, OrderDelta, TradingBatch};

/// A storage failure. Client mistakes never reach this layer; everything
/// here is either a conflict the API reports or a fault it hides behind 5xx.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the write; retrying later may work.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated (e.g. a custom event name already exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Events ready to commit, with the work that does not need the database
/// done beforehand (apart from the commit, in parallel with other
/// submissions; see also [`PreparingBatch`]): the rollup deltas of all the
/// events, their distinct values and their trading changes. (Each event's properties come as the JSON
/// text the stores keep: see [`crate::model::Properties`].) The store uses
/// those deltas when every event turns out new, and recomputes them from
/// the inserted events when some were duplicates, so rollups always count
/// exactly the inserted events.
#[derive(Debug)]
pub struct PreparedBatch {
    pub events: Vec<Event>,
    pub rollups: RollupBatch,
    /// Distinct values per minute: (dimension, minute start, value).
    pub distinct: DistinctValues,
    /// The trading tables' changes (orders, fills, quotes, bars) of all the
    /// events, when the store keeps them (`analytics.aggregation.trading`);
    /// like `rollups`, recomputed from the inserted events when some were
    /// duplicates.
    pub trading: Option<TradingBatch>,
}

impl PreparedBatch {
    /// Prepares `events` for a store that rolls up into `intervals` and
    /// keeps the trading tables.
    pub fn prepare(events: Vec<Event>, intervals: &[Interval]) -> PreparedBatch {
        PreparedBatch::prepare_with(events, intervals, true)
    }

    /// Prepares `events` for a store that rolls up into `intervals`, and
    /// keeps the trading tables when `trading`.
    pub fn prepare_with(
        events: Vec<Event>,
        intervals: &[Interval],
        trading: bool,
    ) -> PreparedBatch {
        let derived = Derived::of(&events, intervals, trading);
        derived.with_events(events)
    }

    /// The batches as one, each batch's events after the previous one's
    /// (`None` for none). The trading changes are merged in one pass (see
    /// [`TradingBatch::merge_all`]).
    pub fn combine(batches: Vec<PreparedBatch>) -> Option<PreparedBatch> {
        let mut batches = batches.into_iter();
        let mut combined = batches.next()?;
        let mut trading: Vec<TradingBatch> = combined.trading.take().into_iter().collect();
        for batch in batches {
            combined.events.extend(batch.events);
            combined.rollups.merge(batch.rollups);
            combined.distinct.extend(batch.distinct);
            trading.extend(batch.trading);
        }
        // Every submission of a pipeline prepares the trading changes, or
        // none does.
        combined.trading = (!trading.is_empty()).then(|| TradingBatch::merge_all(trading));
        Some(combined)
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The rollup deltas of exactly the inserted events (`inserted` index
    /// for index with `events`), and the distinct values (idempotent, so
    /// those of duplicates change nothing). The events themselves are
    /// [`dispose`]d of.
    pub fn into_rollups_of_inserted(self, inserted: &[bool]) -> (RollupBatch, DistinctValues) {
        let PreparedBatch {
            events,
            rollups,
            distinct,
            trading,
        } = self;
        let rollups = if inserted.iter().all(|flag| *flag) {
            rollups
        } else {
            rollups_for(
                events
                    .iter()
                    .zip(inserted)
                    .filter(|(_, was_inserted)| **was_inserted)
                    .map(|(event, _)| event),
                rollups.intervals(),
            )
        };
        dispose((events, trading));
        (rollups, distinct)
    }
}

/// What preparing a batch derives from its events (see [`PreparedBatch`]).
#[derive(Debug)]
pub struct Derived {
    rollups: RollupBatch,
    distinct: DistinctValues,
    trading: Option<TradingBatch>,
}

impl Derived {
    /// The rollup deltas, distinct values and (when `trading`) trading
    /// changes of `events`, for a store that rolls up into `intervals`.
    pub fn of(events: &[Event], intervals: &[Interval], trading: bool) -> Derived {
        let rollups = rollups_for(events.iter(), intervals);
        let mut distinct = DistinctValues::default();
        for event in events {
            let minute = Interval::M1.bucket_start(event.timestamp_ms);
            for_each_distinct(event, |dimension, value| {
                distinct.insert(dimension, minute, value);
            });
        }
        Derived {
            rollups,
            distinct,
            trading: trading.then(|| TradingBatch::of(events)),
        }
    }

    /// The prepared batch of `events`, which these parts were derived from.
    fn with_events(self, events: Vec<Event>) -> PreparedBatch {
        PreparedBatch {
            events,
            rollups: self.rollups,
            distinct: self.distinct,
            trading: self.trading,
        }
    }
}

/// A batch whose events are ready and whose [`Derived`] parts are being
/// computed on the blocking pool. A store may start on the events before
/// the rest is ready: the embedded store inserts them meanwhile, so a
/// large submission's preparation is not paid before its commit starts
/// ([`Store::commit_preparing`]).
#[derive(Debug)]
pub struct PreparingBatch {
    events: Arc<Vec<Event>>,
    /// The intervals its rollups come in, finest first.
    intervals: Vec<Interval>,
    derived: tokio::sync::oneshot::Receiver<Derived>,
}

impl PreparingBatch {
    /// Starts preparing `events` (see [`PreparedBatch::prepare_with`]) on
    /// the blocking pool of the current runtime.
    pub fn start(events: Vec<Event>, intervals: Arc<[Interval]>, trading: bool) -> PreparingBatch {
        let events = Arc::new(events);
        let (sender, derived) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(&events);
        let rolled_up = crate::rollup::batch::finest_first(&intervals);
        tokio::task::spawn_blocking(move || {
            let parts = Derived::of(&shared, &intervals, trading);
            // Before the send, so that the receiver holds the only
            // reference once it has the parts (no copy of the events).
            drop(shared);
            // A receiver gone (its commit failed) needs nothing.
            let _ = sender.send(parts);
        });
        PreparingBatch {
            events,
            intervals: rolled_up,
            derived,
        }
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The intervals its rollups come in, finest first (as
    /// [`RollupBatch::intervals`] will say once it is prepared).
    pub fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Waits for the preparation.
    pub async fn finish(self) -> Result<PreparedBatch, StoreError> {
        let parts = self.derived.await.map_err(|_| preparation_failed())?;
        Ok(parts.with_events(Arc::unwrap_or_clone(self.events)))
    }

    /// Waits for the preparation, blocking the thread: for a store's
    /// blocking writer, never on an async worker.
    pub fn finish_blocking(self) -> Result<PreparedBatch, StoreError> {
        let parts = self
            .derived
            .blocking_recv()
            .map_err(|_| preparation_failed())?;
        Ok(parts.with_events(Arc::unwrap_or_clone(self.events)))
    }
}

/// The preparing task ended without its parts: it panicked (a bug, logged
/// by the runtime).
fn preparation_failed() -> StoreError {
    StoreError::Unavailable("preparing the batch failed".into())
}

/// The distinct values of a batch (see
/// [`crate::model::metric::for_each_distinct`]): each (dimension, minute,
/// value) once, in that order.
#[derive(Debug, Default)]
pub struct DistinctValues(BTreeMap<(&'static str, i64), BTreeSet<String>>);

impl DistinctValues {
    /// Adds `value`; copies it only when it is new.
    pub fn insert(&mut self, dimension: &'static str, minute: i64, value: &str) {
        let values = self.0.entry((dimension, minute)).or_default();
        if !values.contains(value) {
            values.insert(value.to_owned());
        }
    }

    /// Adds every value of `other`.
    pub fn extend(&mut self, other: DistinctValues) {
        for (key, mut values) in other.0 {
            self.0.entry(key).or_default().append(&mut values);
        }
    }

    /// (dimension, minute, value) in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, i64, &str)> {
        self.0.iter().flat_map(|((dimension, minute), values)| {
            values
                .iter()
                .map(|value| (*dimension, *minute, value.as_str()))
        })
    }
}

impl IntoIterator for DistinctValues {
    type Item = (&'static str, i64, String);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + Send>;

    /// (dimension, minute, value) in order.
    fn into_iter(self) -> Self::IntoIter {
        Box::new(
            self.0
                .into_iter()
                .flat_map(|((dimension, minute), values)| {
                    values
                        .into_iter()
                        .map(move |value| (dimension, minute, value))
                }),
        )
    }
}

/// Most values [`dispose`] holds waiting for its thread.
const DISPOSE_QUEUE: usize = 16;

/// Drops `value` on a thread of its own, so that freeing what a committed
/// batch allocated (10 000 events are some hundred thousand allocations:
/// a tenth of the committer's time) happens beside the next commit instead
/// of before it. When the thread lags `DISPOSE_QUEUE` values behind, the
/// caller drops `value` itself, so memory stays bounded.
pub fn dispose<T: Send + 'static>(value: T) {
    type Disposal = Box<dyn Send>;
    static QUEUE: std::sync::LazyLock<Option<std::sync::mpsc::SyncSender<Disposal>>> =
        std::sync::LazyLock::new(|| {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Disposal>(DISPOSE_QUEUE);
            std::thread::Builder::new()
                .name("analytics-dispose".into())
                .spawn(move || receiver.into_iter().for_each(drop))
                .ok()
                .map(|_| sender)
        });
    if let Some(queue) = &*QUEUE {
        // Full (or gone): dropped here, as `try_send` hands it back.
        let _ = queue.try_send(Box::new(value));
    }
}

/// Which stored metric to read, optionally restricted to one dimension
/// value.
#[derive(Debug, Clone)]
pub struct MetricFilter {
    pub metric: String,
    pub dimensions: Option<String>,
}

impl MetricFilter {
    pub fn new(metric: &str, dimensions: Option<&str>) -> Self {
        MetricFilter {
            metric: metric.to_string(),
            dimensions: dimensions.map(str::to_string),
        }
    }

    /// Whether a contribution to `metric`/`dimensions` is selected.
    pub fn matches(&self, metric: &str, dimensions: &str) -> bool {
        self.metric == metric
            && self
                .dimensions
                .as_deref()
                .is_none_or(|wanted| wanted == dimensions)
    }
}

/// What retention removes: everything stamped before these instants
/// (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCutoffs {
    pub events_before_ms: i64,
    /// Per rollup interval, the bucket start before which rows go.
    pub rollups_before_ms: Vec<(Interval, i64)>,
}

/// What one retention run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    pub events_deleted: u64,
    pub rollup_rows_deleted: u64,
    pub distinct_rows_deleted: u64,
    /// Whole partitions dropped (stores that partition events by day).
    pub partitions_dropped: u64,
    /// Rows of the trading tables (orders, fills, quotes, one-minute bars).
    pub trading_rows_deleted: u64,
}

/// Which cutoff a retention statement of the trading tables uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TradingCutoff {
    /// The raw events' cutoff.
    Events,
    /// The raw events' cutoff, one symbol (`?3`/`$3`) at a time.
    EventsPerSymbol,
    /// The one-minute bars' cutoff ([`RetentionCutoffs::bars_before_ms`]).
    Bars,
}

impl RetentionCutoffs {
    /// Where the one-minute market bars end: with the one-minute rollups,
    /// else with the raw events.
    pub(crate) fn trading_before_ms(&self, cutoff: TradingCutoff) -> i64 {
        match cutoff {
            TradingCutoff::Events | TradingCutoff::EventsPerSymbol => self.events_before_ms,
            TradingCutoff::Bars => self.bars_before_ms(),
        }
    }

    pub fn bars_before_ms(&self) -> i64 {
        self.rollups_before_ms
            .iter()
            .find(|(interval, _)| *interval == Interval::M1)
            .map_or(self.events_before_ms, |(_, before)| *before)
    }
}

/// One stored rollup bucket.
#[derive(Debug, Clone)]
pub struct RollupRow {
    pub dimensions: String,
    pub bucket_start_ms: i64,
    pub accumulator: Accumulator,
}

/// Adds `deltas` (`(dimensions, bucket start, delta)`, bucket starts of
/// the rows' interval) to `rows`: each merged into the row of its bucket,
/// or appended as a row of its own.
pub(crate) fn merge_into_rows<'a>(
    rows: &mut Vec<RollupRow>,
    deltas: impl IntoIterator<Item = (&'a str, i64, &'a Accumulator)>,
) {
    let mut index: Option<std::collections::HashMap<(String, i64), usize>> = None;
    for (dimensions, bucket_start_ms, delta) in deltas {
        let index = index.get_or_insert_with(|| {
            rows.iter()
                .enumerate()
                .map(|(at, row)| ((row.dimensions.clone(), row.bucket_start_ms), at))
                .collect()
        });
        let key = (dimensions.to_owned(), bucket_start_ms);
        match index.get(&key) {
            Some(&at) => rows[at].accumulator.merge(delta),
            None => {
                index.insert(key, rows.len());
                rows.push(RollupRow {
                    dimensions: dimensions.to_owned(),
                    bucket_start_ms,
                    accumulator: delta.clone(),
                });
            }
        }
    }
}

/// Which events to list.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Inclusive start, epoch ms.
    pub start_ms: i64,
    /// Exclusive end, epoch ms.
    pub end_ms: i64,
    pub event_type: Option<String>,
    pub limit: usize,
}

/// A stream message that could not become an event: kept so an operator
/// can see what arrived and replay it after a fix.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// `kafka` or `nats`.
    pub source: String,
    /// Kafka topic or NATS subject.
    pub topic: String,
    /// Kafka partition; -1 for NATS.
    pub partition: i32,
    /// Kafka offset or JetStream stream sequence.
    pub offset: i64,
    pub key: Option<String>,
    /// The payload, cut to the configured size.
    #[serde(serialize_with = "serialize_lossy")]
    pub payload: Vec<u8>,
    pub payload_truncated: bool,
    /// The id the message's event gets, now and when replayed.
    pub event_id: uuid::Uuid,
    pub error: String,
    /// Epoch ms.
    pub received_at_ms: i64,
}

fn serialize_lossy<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredDeadLetter {
    pub id: i64,
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Replays that failed.
    pub attempts: i32,
}

/// Which dead letters to list: oldest first, after `after_id`.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    pub source: Option<String>,
    pub after_id: i64,
    pub limit: usize,
}

/// The storage backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores the events whose ids are new and applies their rollups, in one
    /// transaction. Returns, index for index, whether each event was
    /// inserted (`false`: its id was already stored, or appeared earlier in
    /// the same batch).
    async fn commit_batch(&self, batch: PreparedBatch) -> Result<Vec<bool>, StoreError>;

    /// [`Store::commit_batch`] of a batch still being prepared. A store may
    /// start on the events meanwhile; this one waits for the preparation
    /// first.
    async fn commit_preparing(&self, batch: PreparingBatch) -> Result<Vec<bool>, StoreError> {
        self.commit_batch(batch.finish().await?).await
    }

    /// Makes every batch committed before this call durable (on stable
    /// storage). The pipeline acknowledges a batch only after a `sync` that
    /// began after its commit, so one sync covers every batch committed in
    /// the meantime (group sync) and the next commit need not wait for it.
    /// Backends whose commit is already durable return at once.
    async fn sync(&self) -> Result<(), StoreError>;

    /// Folds this instance's pending rollup deltas into the rollup rows now
    /// (see `pending`), so that a stopped instance leaves none for the next
    /// one to recover.
    async fn fold_pending(&self) -> Result<(), StoreError>;

    /// Events in `[start_ms, end_ms)`, newest first.
    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError>;

    /// All events in `[start_ms, end_ms)` (the raw edges of a query).
    /// Without `include_properties` the events come with empty properties,
    /// which is all that counting by type needs and much cheaper.
    async fn scan_events(
        &self,
        start_ms: i64,
        end_ms: i64,
        include_properties: bool,
    ) -> Result<Vec<Event>, StoreError>;

    /// The events of the types `event_types` in `[start_ms, end_ms)`, with
    /// their properties: the raw edges of a query whose metrics come from
    /// those types only.
    async fn scan_events_of_types(
        &self,
        start_ms: i64,
        end_ms: i64,
        event_types: Vec<String>,
    ) -> Result<Vec<Event>, StoreError>;

    /// Number of events of each type in `[start_ms, end_ms)`: what
    /// `events.count` rolls up, counted in the database (the raw edges of
    /// count queries need nothing else).
    async fn count_events_by_type(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// Rollup rows of `metric` at `interval` whose bucket starts lie in
    /// `[start_ms, end_ms)`, optionally for one dimension value.
    async fn read_rollups(
        &self,
        metric: &str,
        dimensions: Option<&str>,
        interval: Interval,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<RollupRow>, StoreError>;

    /// The rows of one bucket (`interval`, starting at `bucket_start_ms`)
    /// for each filter, but only when every stored event of that bucket
    /// lies in `[covered_start_ms, covered_end_ms)`: then the bucket is
    /// exactly the raw events of that part. The check and the read see one
    /// snapshot. `None` when the bucket holds events outside the part.
    async fn read_bucket_if_covered(
        &self,
        filters: &[MetricFilter],
        interval: Interval,
        bucket_start_ms: i64,
        covered_start_ms: i64,
        covered_end_ms: i64,
    ) -> Result<Option<Vec<Vec<RollupRow>>>, StoreError>;

    /// Number of distinct values of `dimension` (see
    /// [`crate::model::metric::for_each_distinct`]) over the minutes whose
    /// starts lie in `[start_ms, end_ms)`.
    async fn count_distinct(
        &self,
        dimension: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Orders whose `order.placed` time lies in `[start_ms, end_ms)`, as
    /// the trading tables hold them now.
    async fn read_orders(&self, start_ms: i64, end_ms: i64) -> Result<Vec<OrderDelta>, StoreError>;

    /// Fills stamped in `[start_ms, end_ms)`, each with its side and strategy
    /// completed from its order and the mid price in force at its time.
    async fn read_fills(&self, start_ms: i64, end_ms: i64) -> Result<Vec<FillView>, StoreError>;

    /// One-minute bars of `symbol` (both sources) with minute starts in
    /// `[start_ms, end_ms)`, by minute.
    async fn read_bars(
        &self,
        symbol: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<BarDelta>, StoreError>;

    /// The outstanding marks of the trading summaries (see
    /// [`crate::trading::summary`]): all of them, or with `of = (kind,
    /// start_ms, end_ms)` those of `kind` holding a minute that meets
    /// `[start_ms, end_ms)` (found through the key, whatever the table's
    /// dead rows).
    async fn trading_marks(
        &self,
        of: Option<(SummaryKind, i64, i64)>,
    ) -> Result<Vec<Mark>, StoreError>;

    /// `part` of the summaries of `kind` of the blocks of `span_ms` (one
    /// of [`crate::trading::summary::LEVELS`]) whose starts lie in
    /// `[start_ms, end_ms)`, by start.
    async fn read_trading_summaries(
        &self,
        kind: SummaryKind,
        span_ms: i64,
        start_ms: i64,
        end_ms: i64,
        part: SummaryPart,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;

    /// In one transaction: removes the marks `cleared`, exactly as read
    /// (same span and version); when one of them is gone or has a newer
    /// version, does nothing and answers `false`. Otherwise writes the
    /// minute summaries `minutes` (`None` removes one), adds the marks
    /// `remainders`, rewrites the coarser blocks that hold those minutes,
    /// level by level, by merging the stored blocks of the level below with
    /// `merge`, and answers `true`.
    /// Refreshers of several instances take turns (a lock per schema).
    async fn write_trading_summaries(
        &self,
        kind: SummaryKind,
        minutes: Vec<(i64, Option<SummaryBody>)>,
        cleared: Vec<Mark>,
        remainders: Vec<(SummaryKind, i64, i64)>,
        merge: MergeSlices,
    ) -> Result<bool, StoreError>;

    /// Reclaims the space of removed and superseded marks. Every commit
    /// rewrites marks and every refresh removes them, so on a store with
    /// multiversion rows (PostgreSQL) the table fills with dead rows that
    /// each [`Store::trading_marks`] read walks unless they are reclaimed,
    /// whether or not the server's autovacuum runs. The refresher calls this
    /// now and then; stores without dead rows do nothing.
    async fn reclaim_trading_marks(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Empties the trading tables (orders, fills, quotes, bars, summaries
    /// and marks), for a rebuild from the raw events.
    async fn clear_trading(&self) -> Result<(), StoreError>;

    /// Writes `trading` (the changes of events already stored) into the
    /// trading tables, in one transaction.
    async fn write_trading(&self, trading: TradingBatch) -> Result<(), StoreError>;

    /// Removes what retention has expired: raw events (and the per-minute
    /// distinct sets) stamped before `cutoffs.events_before_ms`, and rollup
    /// rows whose bucket starts before their interval's cutoff. Works in
    /// bounded steps (chunks or whole partitions) so ingest is never
    /// blocked for long. Idempotent.
    async fn delete_expired(
        &self,
        cutoffs: &RetentionCutoffs,
    ) -> Result<RetentionReport, StoreError>;

    /// Succeeds when the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new definition; `Conflict` when the name exists.
    async fn create_definition(&self, definition: &CustomEventDefinition)
    -> Result<(), StoreError>;

    /// Replaces the stored definition with the same name.
    async fn update_definition(&self, definition: &CustomEventDefinition)
    -> Result<(), StoreError>;

    /// The definition with this name, if any.
    async fn get_definition(&self, name: &str)
    -> Result<Option<CustomEventDefinition>, StoreError>;

    /// Every definition, by name.
    async fn list_definitions(&self) -> Result<Vec<CustomEventDefinition>, StoreError>;

    /// Stores dead letters durably; a message already stored (same source,
    /// topic, partition, offset) is skipped. Returns how many were new.
    async fn insert_dead_letters(&self, letters: &[DeadLetter]) -> Result<u64, StoreError>;

    /// Dead letters, oldest first.
    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError>;

    /// Deletes dead letters (replayed ones); returns how many went.
    async fn delete_dead_letters(&self, ids: &[i64]) -> Result<u64, StoreError>;

    /// Records a failed replay: the new error, one more attempt.
    async fn record_dead_letter_failure(&self, id: i64, error: &str) -> Result<(), StoreError>;
}

/// The rollup deltas of `events` for every interval: the one definition of
/// what an inserted batch adds to the rollups, shared by all backends.
pub fn rollups_for<'a>(
    events: impl Iterator<Item = &'a Event>,
    intervals: &[Interval],
) -> RollupBatch {
    let mut batch = RollupBatch::new(intervals);
    for event in events {
        for_each_contribution(event, |contribution| match contribution.value {
            None => batch.add_count(
                contribution.metric,
                &contribution.dimensions,
                event.timestamp_ms,
            ),
            Some(value) => batch.add_value(
                contribution.metric,
                &contribution.dimensions,
                event.timestamp_ms,
                value,
            ),
        });
    }
    batch
}

/// Checks every backend runs through the same way.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    /// Count, sum, min, max and median of the one `orders.latency_ms` row
    /// of `interval` stored from `start_ms` on (the fold tests).
    pub(crate) async fn latency_figures(
        store: &dyn Store,
        interval: Interval,
        start_ms: i64,
    ) -> (u64, Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
        let rows = store
            .read_rollups(
                crate::model::metric::ORDERS_LATENCY_MS,
                Some(""),
                interval,
                start_ms,
                i64::MAX,
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{interval:?}");
        let row = &rows[0].accumulator;
        (
            row.count(),
            row.sum(),
            row.min(),
            row.max(),
            row.quantile(0.5),
        )
    }

    fn letter(source: &str, partition: i32, offset: i64) -> DeadLetter {
        DeadLetter {
            source: source.into(),
            topic: "trading.events".into(),
            partition,
            offset,
            key: Some("k".into()),
            payload: b"{not json".to_vec(),
            payload_truncated: false,
            event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &offset.to_be_bytes()),
            error: "payload is not valid JSON".into(),
            received_at_ms: 1_700_000_000_000,
        }
    }

    /// Dead letters: stored once per message, listed oldest first by
    /// source and page, failures recorded, deleted by id.
    pub(crate) async fn dead_letters(store: &dyn Store) {
        let letters = [
            letter("kafka", 0, 1),
            letter("kafka", 1, 1),
            letter("nats", -1, 7),
        ];
        assert_eq!(store.insert_dead_letters(&letters).await.unwrap(), 3);
        // A redelivered message adds nothing.
        assert_eq!(store.insert_dead_letters(&letters[..1]).await.unwrap(), 0);
        let all = store
            .list_dead_letters(&DeadLetterQuery {
                source: None,
                after_id: 0,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].letter, letters[0]);
        assert!(all.windows(2).all(|pair| pair[0].id < pair[1].id));
        let kafka_page = store
            .list_dead_letters(&DeadLetterQuery {
                source: Some("kafka".into()),
                after_id: all[0].id,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(kafka_page.len(), 1);
        assert_eq!(kafka_page[0].letter, letters[1]);
        store
            .record_dead_letter_failure(all[2].id, "still bad")
            .await
            .unwrap();
        assert_eq!(
            store
                .delete_dead_letters(&[all[0].id, all[1].id])
                .await
                .unwrap(),
            2
        );
        let left = store
            .list_dead_letters(&DeadLetterQuery {
                source: None,
                after_id: 0,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].attempts, left[0].letter.error.as_str()),
            (1, "still bad")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However the values come, the set holds each (dimension, minute,
    /// value) once, in the order of a set of triples.
    #[test]
    fn distinct_values_are_a_set_of_triples() {
        let triples = [
            ("user_id", 60_000, "u2"),
            ("user_id", 0, "u1"),
            ("strategy_id", 60_000, "s1"),
            ("user_id", 0, "u1"),
            ("user_id", 60_000, "u1"),
            ("user_id", 0, "u0"),
            ("strategy_id", 60_000, "s1"),
        ];
        let (first, second) = triples.split_at(4);
        let mut values = DistinctValues::default();
        let mut other = DistinctValues::default();
        for (dimension, minute, value) in first {
            values.insert(dimension, *minute, value);
        }
        for (dimension, minute, value) in second {
            other.insert(dimension, *minute, value);
        }
        values.extend(other);
        let expected: BTreeSet<(&str, i64, &str)> = triples.into_iter().collect();
        let listed: Vec<(&str, i64, &str)> = values.iter().collect();
        assert_eq!(listed, expected.iter().copied().collect::<Vec<_>>());
        assert_eq!(values.iter().count(), 5);
        let owned: Vec<(&str, i64, String)> = values.into_iter().collect();
        assert_eq!(
            owned,
            expected
                .iter()
                .map(|(dimension, minute, value)| (*dimension, *minute, value.to_string()))
                .collect::<Vec<_>>()
        );
    }
}
