//! Per-batch accumulation of rollup deltas.
//!
//! The committer feeds every inserted event of a batch through a
//! [`RollupBatch`], which folds them in memory into one [`Accumulator`] per
//! touched rollup row ([`RollupKey`]). The store then writes one additive
//! upsert per row instead of one per event, in key order.
//!
//! Invariants:
//! - every recorded event lands in exactly one bucket of every configured
//!   interval, so per interval the bucket counts sum to the events recorded;
//! - a row exists only if something was recorded into it (a non-finite value
//!   records nothing and touches no row);
//! - [`RollupBatch::into_sorted`] yields each key once, in ascending
//!   [`RollupKey`] order, so concurrent writers lock rows in the same order
//!   and cannot deadlock.
//!
//! Hot path: `add_*` runs about ten times per event. It records into the
//! finest interval only (coarser buckets are merged from the fine ones when
//! the batch is drained); lookups borrow the caller's `&str`s (metric, then
//! dimensions) and allocate only the first time a series is seen. The maps
//! hash with foldhash, not the standard library's SipHash: the keys are the
//! service's own metric names and dimension encodings, and SipHash was a
//! third of `add_*`'s instructions (BENCHMARKS.md, session 17).

use std::collections::BTreeMap;

use foldhash::HashMap;

use super::accumulator::Accumulator;
use super::bucket::Interval;

/// Identifies one rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey {
    /// Metric name.
    pub metric: String,
    /// Canonical encoding of the dimension values (empty for none).
    pub dimensions: String,
    /// The rollup interval.
    pub interval: Interval,
    /// Start of the bucket, a multiple of `interval.millis()`.
    pub bucket_start_ms: i64,
}

/// The finest-interval buckets of one series (metric, dimensions), by
/// bucket start.
type FinestBuckets = BTreeMap<i64, Accumulator>;

/// Accumulates the rollup deltas of one batch of events in memory, so a
/// store writes one upsert per touched row, not per event.
///
/// Events are recorded at the finest interval only; the coarser intervals
/// are merged from those buckets in [`RollupBatch::into_sorted`]. Every
/// supported interval is a whole multiple of every finer one, so each
/// coarse bucket is exactly the union of the fine buckets it contains, and
/// an event costs one map update and one sketch insertion instead of one per
/// interval.
#[derive(Debug, Default, Clone)]
pub struct RollupBatch {
    intervals: Vec<Interval>,
    series: HashMap<String, HashMap<String, FinestBuckets>>,
}

/// `intervals` finest first, each once: the intervals of a
/// [`RollupBatch`] made for them.
pub fn finest_first(intervals: &[Interval]) -> Vec<Interval> {
    let mut intervals = intervals.to_vec();
    intervals.sort_unstable();
    intervals.dedup();
    intervals
}

impl RollupBatch {
    /// A batch that rolls up into `intervals` (any order; duplicates ignored).
    pub fn new(intervals: &[Interval]) -> Self {
        RollupBatch {
            intervals: finest_first(intervals),
            series: HashMap::default(),
        }
    }

    /// The intervals this batch rolls up into, finest first.
    pub fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    /// Count one event for `metric`/`dimensions` at `timestamp_ms` in every interval.
    pub fn add_count(&mut self, metric: &str, dimensions: &str, timestamp_ms: i64) {
        self.record(
            metric,
            dimensions,
            timestamp_ms,
            Accumulator::new_count_only,
            Accumulator::record_event,
        );
    }

    /// Record one value (count, sum, min, max, sketch) in every interval.
    /// Non-finite values are ignored and touch no row.
    pub fn add_value(&mut self, metric: &str, dimensions: &str, timestamp_ms: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.record(
            metric,
            dimensions,
            timestamp_ms,
            Accumulator::new_with_values,
            |accumulator| accumulator.record_value(value),
        );
    }

    fn record(
        &mut self,
        metric: &str,
        dimensions: &str,
        timestamp_ms: i64,
        new_accumulator: fn() -> Accumulator,
        apply: impl FnOnce(&mut Accumulator),
    ) {
        let Some(finest) = self.intervals.first() else {
            return;
        };
        // Borrowed lookups first: an owned key is allocated only the first
        // time a series appears in the batch.
        let by_dimensions = match self.series.get_mut(metric) {
            Some(by_dimensions) => by_dimensions,
            None => self.series.entry(metric.to_owned()).or_default(),
        };
        let buckets = match by_dimensions.get_mut(dimensions) {
            Some(buckets) => buckets,
            None => by_dimensions.entry(dimensions.to_owned()).or_default(),
        };
        apply(
            buckets
                .entry(finest.bucket_start(timestamp_ms))
                .or_insert_with(new_accumulator),
        );
    }

    /// Adds every delta of `other` (built for the same intervals) to this
    /// batch: the batch of the union of both batches' events.
    pub fn merge(&mut self, other: RollupBatch) {
        debug_assert_eq!(
            self.intervals, other.intervals,
            "merging batches of different intervals"
        );
        for (metric, other_by_dimensions) in other.series {
            let by_dimensions = self.series.entry(metric).or_default();
            for (dimensions, other_buckets) in other_by_dimensions {
                let buckets = by_dimensions.entry(dimensions).or_default();
                for (bucket_start_ms, accumulator) in other_buckets {
                    match buckets.get_mut(&bucket_start_ms) {
                        Some(existing) => existing.merge(&accumulator),
                        None => {
                            buckets.insert(bucket_start_ms, accumulator);
                        }
                    }
                }
            }
        }
    }

    /// Number of finest-interval buckets (rows of the finest interval) the
    /// batch touches.
    pub fn finest_len(&self) -> usize {
        self.series
            .values()
            .flat_map(HashMap::values)
            .map(BTreeMap::len)
            .sum()
    }

    /// Every finest-interval bucket: `(metric, dimensions, bucket start,
    /// accumulator)`.
    pub fn finest(&self) -> impl Iterator<Item = (&str, &str, i64, &Accumulator)> {
        self.series.iter().flat_map(|(metric, by_dimensions)| {
            by_dimensions.iter().flat_map(move |(dimensions, buckets)| {
                buckets.iter().map(move |(bucket_start_ms, accumulator)| {
                    (
                        metric.as_str(),
                        dimensions.as_str(),
                        *bucket_start_ms,
                        accumulator,
                    )
                })
            })
        })
    }

    /// The finest-interval buckets of `metric` (one dimensions value, or
    /// all) whose starts lie in `[from_ms, to_ms)`, as `(dimensions, bucket
    /// start, accumulator)`.
    pub fn finest_of<'a>(
        &'a self,
        metric: &str,
        dimensions: Option<&'a str>,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Iterator<Item = (&'a str, i64, &'a Accumulator)> {
        self.series
            .get(metric)
            .into_iter()
            .flat_map(move |by_dimensions| {
                by_dimensions
                    .iter()
                    .filter(move |(stored, _)| dimensions.is_none_or(|wanted| wanted == *stored))
                    .flat_map(move |(stored, buckets)| {
                        buckets
                            .range(from_ms..to_ms.max(from_ms))
                            .map(move |(start, accumulator)| (stored.as_str(), *start, accumulator))
                    })
            })
    }

    /// Adds `accumulator` (a delta recorded at a bucket starting at
    /// `bucket_start_ms`) to the finest bucket holding that start.
    pub fn add_accumulator(
        &mut self,
        metric: &str,
        dimensions: &str,
        bucket_start_ms: i64,
        accumulator: Accumulator,
    ) {
        let Some(finest) = self.intervals.first() else {
            return;
        };
        let bucket = self
            .series
            .entry(metric.to_owned())
            .or_default()
            .entry(dimensions.to_owned())
            .or_default()
            .entry(finest.bucket_start(bucket_start_ms));
        match bucket {
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                entry.get_mut().merge(&accumulator)
            }
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(accumulator);
            }
        }
    }

    /// Number of rows (distinct keys across all intervals) the batch touches.
    pub fn len(&self) -> usize {
        self.series
            .values()
            .flat_map(HashMap::values)
            .map(|buckets| {
                self.intervals
                    .iter()
                    .map(|interval| distinct_buckets(buckets, *interval))
                    .sum::<usize>()
            })
            .sum()
    }

    /// Whether no event was recorded.
    pub fn is_empty(&self) -> bool {
        self.series
            .values()
            .all(|by_dimensions| by_dimensions.values().all(BTreeMap::is_empty))
    }

    /// The deltas of the finest interval alone, sorted by key: what a store
    /// keeps as deltas for a later fold to merge into every interval.
    pub fn into_finest_sorted(self) -> Vec<(RollupKey, Accumulator)> {
        let Some(&finest) = self.intervals.first() else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for (metric, by_dimensions) in self.series {
            for (dimensions, buckets) in by_dimensions {
                push_buckets(&mut rows, &metric, &dimensions, finest, buckets);
            }
        }
        rows.sort_unstable_by(|(left, _), (right, _)| left.cmp(right));
        rows
    }

    /// The deltas, sorted by key (stores upsert in key order so concurrent
    /// writers never deadlock).
    pub fn into_sorted(self) -> Vec<(RollupKey, Accumulator)> {
        let mut rows = Vec::new();
        let Some((&finest, coarser)) = self.intervals.split_first() else {
            return rows;
        };
        for (metric, by_dimensions) in self.series {
            for (dimensions, buckets) in by_dimensions {
                for &interval in coarser {
                    let mut current: Option<(i64, Accumulator)> = None;
                    // Ascending fine buckets: each coarse bucket is a run.
                    for (&fine_start, accumulator) in &buckets {
                        let start = interval.bucket_start(fine_start);
                        match &mut current {
                            Some((current_start, merged)) if *current_start == start => {
                                merged.merge(accumulator)
                            }
                            _ => {
                                if let Some((done_start, done)) =
                                    current.replace((start, accumulator.clone()))
                                {
                                    rows.push((
                                        key(&metric, &dimensions, interval, done_start),
                                        done,
                                    ));
                                }
                            }
                        }
                    }
                    if let Some((done_start, done)) = current {
                        rows.push((key(&metric, &dimensions, interval, done_start), done));
                    }
                }
                push_buckets(&mut rows, &metric, &dimensions, finest, buckets);
            }
        }
        rows.sort_unstable_by(|(left, _), (right, _)| left.cmp(right));
        rows
    }
}

/// Appends one row per bucket of `buckets` (of `interval`) to `rows`.
fn push_buckets(
    rows: &mut Vec<(RollupKey, Accumulator)>,
    metric: &str,
    dimensions: &str,
    interval: Interval,
    buckets: impl IntoIterator<Item = (i64, Accumulator)>,
) {
    for (bucket_start_ms, accumulator) in buckets {
        rows.push((
            key(metric, dimensions, interval, bucket_start_ms),
            accumulator,
        ));
    }
}

fn key(metric: &str, dimensions: &str, interval: Interval, bucket_start_ms: i64) -> RollupKey {
    RollupKey {
        metric: metric.to_owned(),
        dimensions: dimensions.to_owned(),
        interval,
        bucket_start_ms,
    }
}

/// How many buckets of `interval` the (ascending) fine buckets fall into.
fn distinct_buckets(buckets: &FinestBuckets, interval: Interval) -> usize {
    let mut count = 0;
    let mut last = None;
    for &fine_start in buckets.keys() {
        let start = interval.bucket_start(fine_start);
        if last != Some(start) {
            count += 1;
            last = Some(start);
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merged_batches_equal_the_batch_of_all_events() {
        let events: Vec<(i64, f64)> = (0..500)
            .map(|index| (index * 7_919 % 10_000_000, index as f64))
            .collect();
        let mut whole = RollupBatch::new(&Interval::ALL);
        let mut left = RollupBatch::new(&Interval::ALL);
        let mut right = RollupBatch::new(&Interval::ALL);
        for (index, (timestamp, value)) in events.iter().enumerate() {
            whole.add_value("latency", "", *timestamp, *value);
            whole.add_count("events", "a", *timestamp);
            let half = if index % 3 == 0 {
                &mut left
            } else {
                &mut right
            };
            half.add_value("latency", "", *timestamp, *value);
            half.add_count("events", "a", *timestamp);
        }
        left.merge(right);
        let summary = |batch: RollupBatch| -> Vec<(RollupKey, u64, Option<f64>, Option<f64>)> {
            batch
                .into_sorted()
                .into_iter()
                .map(|(key, accumulator)| {
                    (
                        key,
                        accumulator.count(),
                        accumulator.sum(),
                        accumulator.max(),
                    )
                })
                .collect()
        };
        assert_eq!(summary(left), summary(whole));
    }

    #[test]
    fn one_event_touches_one_row_per_interval() {
        let mut batch = RollupBatch::new(&Interval::ALL);
        assert!(batch.is_empty());
        batch.add_count("trades", "BTC-USD", 1_704_116_262_123);
        assert_eq!(batch.len(), 7);
        let rows = batch.into_sorted();
        let intervals: Vec<Interval> = rows.iter().map(|(key, _)| key.interval).collect();
        assert_eq!(intervals, Interval::ALL.to_vec());
        for (key, accumulator) in &rows {
            assert_eq!(
                key.bucket_start_ms,
                key.interval.bucket_start(1_704_116_262_123)
            );
            assert_eq!(accumulator.count(), 1);
            assert!(!accumulator.has_values());
        }
    }

    #[test]
    fn values_fold_into_the_same_row() {
        let mut batch = RollupBatch::new(&[Interval::H1, Interval::M1, Interval::H1]);
        assert_eq!(batch.intervals(), &[Interval::M1, Interval::H1]);
        batch.add_value("fill_price", "", 10, 1.0);
        batch.add_value("fill_price", "", 20, 3.0);
        batch.add_value("fill_price", "", 30, f64::NAN);
        batch.add_value("fill_price", "", 120_000, 5.0);
        batch.add_value("latency", "", 999_999_999, f64::INFINITY);
        assert_eq!(batch.len(), 3);
        let rows = batch.into_sorted();
        let summary: Vec<(Interval, i64, u64, Option<f64>)> = rows
            .iter()
            .map(|(key, accumulator)| {
                (
                    key.interval,
                    key.bucket_start_ms,
                    accumulator.count(),
                    accumulator.sum(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Interval::M1, 0, 2, Some(4.0)),
                (Interval::M1, 120_000, 1, Some(5.0)),
                (Interval::H1, 0, 3, Some(9.0)),
            ]
        );
    }

    #[test]
    fn no_intervals_records_nothing() {
        let mut batch = RollupBatch::default();
        batch.add_count("trades", "", 0);
        batch.add_value("trades", "", 0, 1.0);
        assert!(batch.is_empty());
        assert!(batch.into_sorted().is_empty());
    }

    fn event() -> impl Strategy<Value = (usize, usize, i64, Option<f64>)> {
        (
            0usize..3,
            0usize..3,
            prop_oneof![
                -3 * 86_400_000i64..3 * 86_400_000,
                1_700_000_000_000i64..1_700_000_000_000 + 40 * 86_400_000,
            ],
            prop::option::of(-1e3f64..1e3),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn bucket_counts_sum_to_events_and_output_is_sorted(
            events in prop::collection::vec(event(), 0..400),
        ) {
            const METRICS: [&str; 3] = ["trades", "volume", "latency"];
            const DIMENSIONS: [&str; 3] = ["", "symbol=BTC-USD", "symbol=ETH-USD"];
            let mut batch = RollupBatch::new(&Interval::ALL);
            for &(metric, dimensions, timestamp_ms, value) in &events {
                match value {
                    Some(value) => batch.add_value(METRICS[metric], DIMENSIONS[dimensions], timestamp_ms, value),
                    None => batch.add_count(METRICS[metric], DIMENSIONS[dimensions], timestamp_ms),
                }
            }
            let expected_rows = batch.len();
            let rows = batch.into_sorted();
            prop_assert_eq!(rows.len(), expected_rows);
            prop_assert!(rows.windows(2).all(|pair| pair[0].0 < pair[1].0), "not strictly ascending");
            for interval in Interval::ALL {
                let counted: u64 = rows
                    .iter()
                    .filter(|(key, _)| key.interval == interval)
                    .map(|(_, accumulator)| accumulator.count())
                    .sum();
                prop_assert_eq!(counted, events.len() as u64);
            }
            for (key, accumulator) in &rows {
                prop_assert_eq!(key.bucket_start_ms, key.interval.bucket_start(key.bucket_start_ms));
                let in_row = events.iter().filter(|&&(metric, dimensions, timestamp_ms, _)| {
                    METRICS[metric] == key.metric
                        && DIMENSIONS[dimensions] == key.dimensions
                        && key.interval.bucket_start(timestamp_ms) == key.bucket_start_ms
                });
                prop_assert_eq!(accumulator.count(), in_row.clone().count() as u64);
                prop_assert_eq!(accumulator.value_count(), in_row.filter(|event| event.3.is_some()).count() as u64);
            }
        }
    }
}
