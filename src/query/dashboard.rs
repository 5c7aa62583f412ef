//! Live dashboard figures (`GET /api/v1/dashboard/metrics`), every one of
//! them computed (the old service left three at zero).

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{MetricFilter, QueryEngine};
use crate::model::event::format_timestamp;
use crate::model::metric::{EVENTS_COUNT, FILLED_NOTIONAL, ORDERS_LATENCY_MS};
use crate::rollup::TimeRange;
use crate::store::StoreError;

const MINUTE_MS: i64 = 60_000;

/// The dashboard body (old service's shape, plus `custom_metrics` entries).
#[derive(Debug, Clone, Serialize)]
pub struct DashboardMetrics {
    pub active_users: u64,
    pub events_per_second: f64,
    pub orders_placed: u64,
    pub orders_filled: u64,
    pub active_strategies: u64,
    pub total_volume: f64,
    pub average_latency: f64,
    pub error_rate: f64,
    pub custom_metrics: Map<String, Value>,
    pub last_updated: String,
}

/// Computes the dashboard as of `now_ms`. Windows end at `now_ms` inclusive.
pub async fn dashboard(engine: &QueryEngine, now_ms: i64) -> Result<DashboardMetrics, StoreError> {
    let end_ms = now_ms + 1;
    let last_minute = TimeRange {
        start_ms: end_ms - MINUTE_MS,
        end_ms,
    };
    let last_five_minutes = TimeRange {
        start_ms: end_ms - 5 * MINUTE_MS,
        end_ms,
    };
    let last_hour = TimeRange {
        start_ms: end_ms - 60 * MINUTE_MS,
        end_ms,
    };

    let per_minute = engine
        .totals(&[MetricFilter::new(EVENTS_COUNT, None)], last_minute)
        .await?;
    let hour = engine
        .totals(
            &[
                MetricFilter::new(EVENTS_COUNT, Some("order.placed")),
                MetricFilter::new(EVENTS_COUNT, Some("order.filled")),
                MetricFilter::new(EVENTS_COUNT, Some("order.rejected")),
                MetricFilter::new(EVENTS_COUNT, Some("order.canceled")),
                MetricFilter::new(FILLED_NOTIONAL, Some("")),
                MetricFilter::new(ORDERS_LATENCY_MS, Some("")),
            ],
            last_hour,
        )
        .await?;
    let store = engine.store();
    let active_users = store
        .count_distinct_users(last_five_minutes.start_ms, last_five_minutes.end_ms)
        .await?;
    let active_strategies = store
        .count_distinct_strategies(last_five_minutes.start_ms, last_five_minutes.end_ms)
        .await?;

    let count = |index: usize| {
        hour.get(index)
            .map(|accumulator| accumulator.count())
            .unwrap_or(0)
    };
    let (placed, filled, rejected, canceled) = (count(0), count(1), count(2), count(3));
    let volume = hour
        .get(4)
        .and_then(|accumulator| accumulator.sum())
        .unwrap_or(0.0);
    let latency = hour.get(5);
    let mut custom_metrics = Map::new();
    custom_metrics.insert("orders_canceled".into(), json!(canceled));
    custom_metrics.insert("orders_rejected".into(), json!(rejected));
    for (name, quantile) in [
        ("latency_p50_ms", 0.5),
        ("latency_p95_ms", 0.95),
        ("latency_p99_ms", 0.99),
    ] {
        let value = latency
            .and_then(|accumulator| accumulator.quantile(quantile))
            .unwrap_or(0.0);
        custom_metrics.insert(name.into(), json!(value));
    }
    Ok(DashboardMetrics {
        active_users,
        events_per_second: per_minute
            .first()
            .map(|accumulator| accumulator.count())
            .unwrap_or(0) as f64
            / 60.0,
        orders_placed: placed,
        orders_filled: filled,
        active_strategies,
        total_volume: volume,
        average_latency: latency
            .and_then(|accumulator| accumulator.mean())
            .unwrap_or(0.0),
        error_rate: if placed == 0 {
            0.0
        } else {
            rejected as f64 / placed as f64
        },
        custom_metrics,
        last_updated: format_timestamp(now_ms),
    })
}
