//! Answers from rollups: the aggregation engine every read endpoint uses.
//!
//! A range is decomposed into whole buckets of the stored intervals plus the
//! raw events of its partial edges ([`crate::rollup::decompose`]). Whole
//! buckets are read from the rollup table; edge events are scanned and fed
//! through the same [`for_each_contribution`] that ingest uses, so the sum is
//! exact for any range while a query reads O(buckets), not O(events).

pub mod dashboard;
pub mod series;
pub mod stats;
pub mod strategies;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::metric::{EVENTS_COUNT, for_each_contribution};
use crate::rollup::{Accumulator, Interval, Piece, TimeRange, decompose};
use crate::store::{Store, StoreError};

pub use crate::store::MetricFilter;

/// Accumulators by group start (epoch ms) and dimension value.
pub type Grouped = BTreeMap<i64, HashMap<String, Accumulator>>;

/// Reads aggregates over ranges.
#[derive(Clone)]
pub struct QueryEngine {
    store: Arc<dyn Store>,
    intervals: Arc<[Interval]>,
}

/// Adds a row read from the store to its group (moved in when it is the
/// first of its dimension value: no copy of its sketch).
fn merge_into(
    target: &mut HashMap<String, Accumulator>,
    dimensions: String,
    accumulator: Accumulator,
) {
    match target.get_mut(&dimensions) {
        Some(existing) => existing.merge(&accumulator),
        None => {
            target.insert(dimensions, accumulator);
        }
    }
}

impl QueryEngine {
    pub fn new(store: Arc<dyn Store>, intervals: &[Interval]) -> Self {
        QueryEngine {
            store,
            intervals: intervals.into(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Aggregates each filter over `range`. With `group` the result is split
    /// into buckets of that interval (keyed by bucket start); without, one
    /// group keyed by `range.start_ms` holds everything. One result per
    /// filter, in order.
    pub async fn aggregate(
        &self,
        filters: &[MetricFilter],
        range: TimeRange,
        group: Option<Interval>,
    ) -> Result<Vec<Grouped>, StoreError> {
        let group_of = |timestamp_ms: i64| match group {
            Some(interval) => interval.bucket_start(timestamp_ms),
            None => range.start_ms,
        };
        // Only intervals that nest inside the grouping interval may be read,
        // so no stored bucket straddles two groups.
        let usable: Vec<Interval> = self
            .intervals
            .iter()
            .copied()
            .filter(|interval| group.is_none_or(|group| *interval <= group))
            .collect();
        let mut results: Vec<Grouped> = vec![Grouped::new(); filters.len()];
        // Counting by type needs no properties; skipping their JSON makes
        // the raw edges much cheaper.
        let include_properties = filters.iter().any(|filter| filter.metric != EVENTS_COUNT);
        // When every metric comes from one known event type, raw edges read
        // only the events of those types.
        let sole_sources: Option<Vec<String>> = filters
            .iter()
            .map(|filter| crate::model::metric::sole_source(&filter.metric).map(str::to_string))
            .collect::<Option<BTreeSet<String>>>()
            .map(|types| types.into_iter().collect());
        for piece in decompose(range, &usable) {
            match piece {
                Piece::Buckets {
                    interval,
                    start_ms,
                    end_ms,
                } => {
                    for (filter, result) in filters.iter().zip(results.iter_mut()) {
                        let rows = self
                            .store
                            .read_rollups(
                                &filter.metric,
                                filter.dimensions.as_deref(),
                                interval,
                                start_ms,
                                end_ms,
                            )
                            .await?;
                        for row in rows {
                            let target = result.entry(group_of(row.bucket_start_ms)).or_default();
                            merge_into(target, row.dimensions, row.accumulator);
                        }
                    }
                }
                Piece::Raw { start_ms, end_ms } => {
                    // A raw edge whose bucket holds no event outside the
                    // edge equals that bucket: read it instead of scanning
                    // (ranges ending "now" always qualify while nothing is
                    // stamped in the future).
                    if let Some(finest) = usable.first().copied() {
                        let bucket_start_ms = finest.bucket_start(start_ms);
                        let covered = self
                            .store
                            .read_bucket_if_covered(
                                filters,
                                finest,
                                bucket_start_ms,
                                start_ms,
                                end_ms,
                            )
                            .await?;
                        if let Some(rows_per_filter) = covered {
                            for (rows, result) in
                                rows_per_filter.into_iter().zip(results.iter_mut())
                            {
                                for row in rows {
                                    let target =
                                        result.entry(group_of(row.bucket_start_ms)).or_default();
                                    merge_into(target, row.dimensions, row.accumulator);
                                }
                            }
                            continue;
                        }
                    }
                    // Counts by type (all that events.count rolls up) are
                    // counted by the database. That needs the whole piece
                    // in one group: true without grouping, and when some
                    // interval is usable (a raw piece then lies inside one
                    // finest bucket, which lies inside one group).
                    if !include_properties && (group.is_none() || !usable.is_empty()) {
                        let group = group_of(start_ms);
                        let counts = self.store.count_events_by_type(start_ms, end_ms).await?;
                        for (filter, result) in filters.iter().zip(results.iter_mut()) {
                            for (event_type, count) in &counts {
                                if filter.matches(EVENTS_COUNT, event_type) {
                                    let counted =
                                        Accumulator::from_parts(*count, None, None, None, None)
                                            .map_err(|error| {
                                                StoreError::Corrupt(error.to_string())
                                            })?;
                                    merge_into(
                                        result.entry(group).or_default(),
                                        event_type.clone(),
                                        counted,
                                    );
                                }
                            }
                        }
                        continue;
                    }
                    let events = match &sole_sources {
                        // Only the events that can contribute.
                        Some(types) => {
                            self.store
                                .scan_events_of_types(start_ms, end_ms, types.clone())
                                .await?
                        }
                        None => {
                            self.store
                                .scan_events(start_ms, end_ms, include_properties)
                                .await?
                        }
                    };
                    for event in &events {
                        for_each_contribution(event, |contribution| {
                            for (filter, result) in filters.iter().zip(results.iter_mut()) {
                                if !filter.matches(contribution.metric, &contribution.dimensions) {
                                    continue;
                                }
                                let target =
                                    result.entry(group_of(event.timestamp_ms)).or_default();
                                let accumulator =
                                    match target.get_mut(contribution.dimensions.as_ref()) {
                                        Some(accumulator) => accumulator,
                                        None => target
                                            .entry(contribution.dimensions.to_string())
                                            .or_insert_with(|| match contribution.value {
                                                None => Accumulator::new_count_only(),
                                                Some(_) => Accumulator::new_with_values(),
                                            }),
                                    };
                                match contribution.value {
                                    None => accumulator.record_event(),
                                    Some(value) => accumulator.record_value(value),
                                }
                            }
                        });
                    }
                }
            }
        }
        Ok(results)
    }

    /// Aggregates each filter over `range` into one accumulator per filter
    /// (all dimension values merged).
    pub async fn totals(
        &self,
        filters: &[MetricFilter],
        range: TimeRange,
    ) -> Result<Vec<Accumulator>, StoreError> {
        let grouped = self.aggregate(filters, range, None).await?;
        Ok(grouped
            .into_iter()
            .map(|groups| {
                let mut total = Accumulator::new_count_only();
                for accumulator in groups.values().flat_map(HashMap::values) {
                    total.merge(accumulator);
                }
                total
            })
            .collect())
    }
}
