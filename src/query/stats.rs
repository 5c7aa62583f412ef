//! Event counts by type over a range (`GET /api/v1/events/stats`).

use std::collections::BTreeMap;

use super::{MetricFilter, QueryEngine};
use crate::model::metric::EVENTS_COUNT;
use crate::rollup::TimeRange;
use crate::store::StoreError;

/// Counts by event type, and their total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStats {
    pub total_events: u64,
    pub by_type: BTreeMap<String, u64>,
}

/// Counts the events of every type in `range`, exactly.
pub async fn event_stats(engine: &QueryEngine, range: TimeRange) -> Result<EventStats, StoreError> {
    let grouped = engine
        .aggregate(&[MetricFilter::new(EVENTS_COUNT, None)], range, None)
        .await?;
    let mut by_type = BTreeMap::new();
    for groups in grouped {
        for accumulators in groups.into_values() {
            for (event_type, accumulator) in accumulators {
                *by_type.entry(event_type).or_insert(0) += accumulator.count();
            }
        }
    }
    by_type.retain(|_, count| *count > 0);
    Ok(EventStats {
        total_events: by_type.values().sum(),
        by_type,
    })
}
