//! Live dashboard figures (`GET /api/v1/dashboard/metrics`), every one of
//! them computed (the old service left three at zero).
//!
//! Windows are whole minutes, so every figure is read from rollups and
//! per-minute distinct sets and the cost never depends on how many events
//! are stored or how fast they arrive: "the last hour" is the current
//! minute and the 59 before it, "the last 5 minutes" the current minute and
//! the 4 before it, and events per second are those of the last complete
//! minute ÷ 60.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{MetricFilter, QueryEngine};
use crate::model::event::format_timestamp;
use crate::model::metric::{
    DISTINCT_STRATEGIES, DISTINCT_USERS, EVENTS_COUNT, FILLED_NOTIONAL, ORDERS_LATENCY_MS,
};
use crate::rollup::{Interval, TimeRange};
use crate::store::StoreError;
use crate::trading::report::{Filters, Groups};
use crate::trading::summary::{execution_report, orders_report};

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

/// The whole-minute windows of a dashboard computed at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardWindows {
    pub last_complete_minute: TimeRange,
    pub last_five_minutes: TimeRange,
    pub last_hour: TimeRange,
}

impl DashboardWindows {
    pub fn at(now_ms: i64) -> Self {
        let next_minute = Interval::M1.bucket_start(now_ms) + MINUTE_MS;
        let ending_now = |minutes: i64| TimeRange {
            start_ms: next_minute - minutes * MINUTE_MS,
            end_ms: next_minute,
        };
        DashboardWindows {
            last_complete_minute: TimeRange {
                start_ms: next_minute - 2 * MINUTE_MS,
                end_ms: next_minute - MINUTE_MS,
            },
            last_five_minutes: ending_now(5),
            last_hour: ending_now(60),
        }
    }
}

/// Computes the dashboard as of `now_ms`.
pub async fn dashboard(engine: &QueryEngine, now_ms: i64) -> Result<DashboardMetrics, StoreError> {
    let windows = DashboardWindows::at(now_ms);
    let per_minute = engine
        .totals(
            &[MetricFilter::new(EVENTS_COUNT, None)],
            windows.last_complete_minute,
        )
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
            windows.last_hour,
        )
        .await?;
    let store = engine.store();
    let five = windows.last_five_minutes;
    let active_users = store
        .count_distinct(DISTINCT_USERS, five.start_ms, five.end_ms)
        .await?;
    let active_strategies = store
        .count_distinct(DISTINCT_STRATEGIES, five.start_ms, five.end_ms)
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

/// How old the dashboard's trading figures may get before a request starts
/// computing them again.
const TRADING_REFRESH_MS: i64 = 1_000;

/// The dashboard's trading figures, computed at most once a second and off
/// the request path: they read the orders and fills of the last five
/// minutes, which costs more the faster the desk trades, while every other
/// dashboard figure is read from rollups at a fixed cost. A request finds
/// the latest figures; when they are older than a second it starts one
/// refresh in the background and answers with them. Only the first request
/// waits for the computation.
#[derive(Default)]
pub struct TradingSnapshot {
    /// (computed at, epoch ms; the figures).
    latest: std::sync::Mutex<Option<(i64, Map<String, Value>)>>,
    refreshing: std::sync::atomic::AtomicBool,
}

impl TradingSnapshot {
    pub async fn figures(
        self: &std::sync::Arc<Self>,
        store: &std::sync::Arc<dyn crate::store::Store>,
        now_ms: i64,
    ) -> Result<Map<String, Value>, StoreError> {
        use std::sync::atomic::Ordering;
        let latest = self.lock().clone();
        let Some((computed_at, figures)) = latest else {
            let figures = trading_figures(&**store, now_ms).await?;
            *self.lock() = Some((now_ms, figures.clone()));
            return Ok(figures);
        };
        if now_ms - computed_at >= TRADING_REFRESH_MS
            && !self.refreshing.swap(true, Ordering::AcqRel)
        {
            let snapshot = std::sync::Arc::clone(self);
            let store = std::sync::Arc::clone(store);
            tokio::spawn(async move {
                let now = crate::model::event::now_ms();
                match trading_figures(&*store, now).await {
                    Ok(figures) => *snapshot.lock() = Some((now, figures)),
                    // The previous figures stay; the next request retries.
                    Err(error) => {
                        tracing::warn!(%error, "refreshing the dashboard's trading figures failed")
                    }
                }
                snapshot.refreshing.store(false, Ordering::Release);
            });
        }
        Ok(figures)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(i64, Map<String, Value>)>> {
        // The data is replaced whole, so a panic elsewhere cannot leave it
        // half-written.
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The trading figures of the last five whole minutes at `now_ms` (see
/// [`crate::trading::report`]): order figures of the orders placed in the
/// window, execution figures of its fills, and `trading_computed_at`.
pub async fn trading_figures(
    store: &dyn crate::store::Store,
    now_ms: i64,
) -> Result<Map<String, Value>, StoreError> {
    let five = DashboardWindows::at(now_ms).last_five_minutes;
    let all = Filters::default();
    let orders = orders_report(store, five, Interval::H1, &all, Groups::Without)
        .await?
        .summary;
    let execution = execution_report(store, five, Interval::H1, &all, Groups::Without)
        .await?
        .summary;
    let mut figures = Map::new();
    for (name, value) in [
        ("orders_placed_5m", json!(orders.orders_placed)),
        ("orders_fill_rate_5m", json!(orders.fill_rate)),
        ("orders_cancel_rate_5m", json!(orders.cancel_rate)),
        ("orders_reject_rate_5m", json!(orders.reject_rate)),
        (
            "orders_time_to_fill_p50_ms_5m",
            json!(orders.time_to_full_fill_ms.p50),
        ),
        (
            "orders_time_to_fill_p95_ms_5m",
            json!(orders.time_to_full_fill_ms.p95),
        ),
        ("execution_fills_5m", json!(execution.fills)),
        ("execution_maker_ratio_5m", json!(execution.maker_ratio)),
        (
            "execution_slippage_bps_5m",
            json!(execution.slippage_bps_notional_weighted),
        ),
        (
            "execution_slippage_bps_p95_5m",
            json!(execution.slippage_bps.p95),
        ),
        ("trading_computed_at", json!(format_timestamp(now_ms))),
    ] {
        figures.insert(name.to_owned(), value);
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_whole_minutes_ending_with_the_current_one() {
        let now = 1_759_492_845_123; // 12:00:45.123
        let minute = 1_759_492_800_000;
        let windows = DashboardWindows::at(now);
        assert_eq!(
            windows.last_hour,
            TimeRange {
                start_ms: minute - 59 * MINUTE_MS,
                end_ms: minute + MINUTE_MS
            }
        );
        assert_eq!(
            windows.last_five_minutes,
            TimeRange {
                start_ms: minute - 4 * MINUTE_MS,
                end_ms: minute + MINUTE_MS
            }
        );
        assert_eq!(
            windows.last_complete_minute,
            TimeRange {
                start_ms: minute - MINUTE_MS,
                end_ms: minute
            }
        );
    }
}
