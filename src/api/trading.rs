//! Trading analytics endpoints:
//! - `GET /api/v1/trading/strategies` and `/strategies/{id}`: strategy
//!   performance from rollups ([`crate::query::strategies`]);
//! - `GET /api/v1/trading/orders`, `/execution` and
//!   `/markets/{symbol}/bars`: order lifecycle, execution quality and OHLCV
//!   bars from the trading tables ([`crate::trading`]).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::RequestedRange;
use super::queries::timed;
use crate::model::event::now_ms;
use crate::query::strategies::{
    MAX_BUCKETS, StrategyError, StrategyPerformance, strategy_performance,
};
use crate::rollup::{Interval, TimeRange};
use crate::store::{Store, StoreError};
use crate::trading::metrics::{
    Statistic, TradingMetric, bar_points, execution_points, order_points,
};
use crate::trading::report::{Bar, Filters, Groups, bars};
use crate::trading::summary::{execution_report, orders_report};

/// How far ahead of now a lifecycle event may be stamped (the accepted
/// future skew is smaller).
const LIFECYCLE_AHEAD_MS: i64 = 3_600_000;

fn interval_param(params: &HashMap<String, String>) -> Result<Interval, ApiError> {
    match params.get("interval").filter(|text| !text.is_empty()) {
        None => Ok(Interval::H1),
        Some(text) => Interval::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid interval {text:?}")).with_details(
                json!({"field": "interval", "allowed": ["1m", "5m", "15m", "30m", "1h", "4h", "1d"]}),
            )
        }),
    }
}

async fn performance(
    state: &AppState,
    params: &HashMap<String, String>,
    only: Option<&str>,
) -> Result<(RequestedRange, Interval, Vec<StrategyPerformance>), ApiError> {
    let interval = interval_param(params)?;
    let now = now_ms();
    let range = RequestedRange::from_params(params, now)?;
    let lifecycle = TimeRange {
        start_ms: now.saturating_sub(state.settings.raw_retention_ms),
        end_ms: now.saturating_add(LIFECYCLE_AHEAD_MS),
    };
    let strategies = timed(state, "strategies", async {
        strategy_performance(&state.query, range.half_open(), interval, lifecycle, only)
            .await
            .map_err(|error| match error {
                StrategyError::TooManyBuckets { .. } => ApiError::bad_request(error.to_string())
                    .with_details(json!({"field": "interval"})),
                StrategyError::Store(error) => ApiError::from(error),
            })
    })
    .await?;
    Ok((range, interval, strategies))
}

/// `GET /api/v1/trading/strategies`: every strategy's summary over the range.
pub async fn strategies(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (range, interval, strategies) = performance(&state, &params, None).await?;
    let summaries: Vec<_> = strategies
        .into_iter()
        .map(|performance| performance.summary)
        .collect();
    Ok(Json(json!({
        "start_time": range.start_text(),
        "end_time": range.end_text(),
        "interval": interval.as_str(),
        "count": summaries.len(),
        "strategies": summaries,
    }))
    .into_response())
}

/// `GET /api/v1/trading/strategies/{id}`: one strategy's summary and its
/// series per bucket (PnL, cumulative PnL, trades, winners, losers).
pub async fn strategy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (range, interval, strategies) = performance(&state, &params, Some(&id)).await?;
    let Some(performance) = strategies.into_iter().next() else {
        return Err(ApiError::not_found(format!(
            "no closed positions in the range and no start or stop for strategy {id:?}"
        )));
    };
    let mut body = serde_json::to_value(&performance).map_err(ApiError::internal)?;
    body["start_time"] = json!(range.start_text());
    body["end_time"] = json!(range.end_text());
    body["interval"] = json!(interval.as_str());
    Ok(Json(body).into_response())
}

/// The bars of `symbol` over the whole minutes of `range`.
async fn symbol_bars(
    store: &dyn Store,
    symbol: &str,
    range: TimeRange,
    interval: Interval,
) -> Result<Vec<Bar>, StoreError> {
    let minutes = store
        .read_bars(
            symbol,
            Interval::M1.bucket_start(range.start_ms),
            range.end_ms,
        )
        .await?;
    Ok(bars(&minutes, interval))
}

/// The trading tables exist only with `analytics.aggregation.trading`.
fn ensure_trading(state: &AppState) -> Result<(), ApiError> {
    if state.settings.trading_enabled {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "trading analytics are off (analytics.aggregation.trading is false)",
        ))
    }
}

/// `symbol`, `strategy_id` and `side` (`buy` or `sell`, any case).
fn filters_param(params: &HashMap<String, String>) -> Result<Filters, ApiError> {
    let text = |name: &str| {
        params
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let side = match text("side").map(|side| side.to_ascii_lowercase()) {
        None => None,
        Some(side) if side == "buy" || side == "sell" => Some(side),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid side {other:?}; expected buy or sell"
            ))
            .with_details(json!({"field": "side", "allowed": ["buy", "sell"]})));
        }
    };
    Ok(Filters {
        symbol: text("symbol"),
        strategy_id: text("strategy_id"),
        side,
    })
}

/// The range and interval of a report, with the bucket count checked.
fn range_params(
    params: &HashMap<String, String>,
) -> Result<(RequestedRange, TimeRange, Interval), ApiError> {
    let interval = interval_param(params)?;
    let range = RequestedRange::from_params(params, now_ms())?;
    let half_open = range.half_open();
    let buckets = (half_open.end_ms - half_open.start_ms) / interval.millis() + 1;
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad_request(format!(
            "the range holds {buckets} buckets of {}, more than {MAX_BUCKETS}; use a coarser interval or a shorter range",
            interval.as_str()
        ))
        .with_details(json!({"field": "interval"})));
    }
    Ok((range, half_open, interval))
}

fn report_body(
    range: RequestedRange,
    interval: Interval,
    filters: &Filters,
    report: impl serde::Serialize,
) -> Result<Response, ApiError> {
    let mut body = serde_json::to_value(report).map_err(ApiError::internal)?;
    body["start_time"] = json!(range.start_text());
    body["end_time"] = json!(range.end_text());
    body["interval"] = json!(interval.as_str());
    body["filters"] = json!({
        "symbol": filters.symbol,
        "strategy_id": filters.strategy_id,
        "side": filters.side,
    });
    Ok(Json(body).into_response())
}

/// The two reports read from the trading tables.
#[derive(Debug, Clone, Copy)]
enum Report {
    Orders,
    Execution,
}

/// A report endpoint: checks the switch and the parameters, then reads the
/// rows and computes the report under the query timeout.
async fn report_endpoint(
    state: &AppState,
    params: &HashMap<String, String>,
    report: Report,
) -> Result<Response, ApiError> {
    ensure_trading(state)?;
    let (range, half_open, interval) = range_params(params)?;
    let filters = filters_param(params)?;
    let store = &**state.query.store();
    let body = match report {
        Report::Orders => {
            timed(state, "trading_orders", async {
                let report =
                    orders_report(store, half_open, interval, &filters, Groups::With).await?;
                serde_json::to_value(report).map_err(ApiError::internal)
            })
            .await?
        }
        Report::Execution => {
            timed(state, "trading_execution", async {
                let report =
                    execution_report(store, half_open, interval, &filters, Groups::With).await?;
                serde_json::to_value(report).map_err(ApiError::internal)
            })
            .await?
        }
    };
    report_body(range, interval, &filters, body)
}

/// `GET /api/v1/trading/orders`: order lifecycle of the orders placed in the
/// range (summary, series by placement bucket, breakdowns).
pub async fn orders(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    report_endpoint(&state, &params, Report::Orders).await
}

/// `GET /api/v1/trading/execution`: fills in the range, their VWAP, maker
/// ratio, commission and slippage against the mid.
pub async fn execution(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    report_endpoint(&state, &params, Report::Execution).await
}

/// `GET /api/v1/trading/markets/{symbol}/bars`: OHLCV bars of the whole
/// minutes in the range.
pub async fn market_bars(
    State(state): State<AppState>,
    Path(symbol): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    ensure_trading(&state)?;
    let (range, half_open, interval) = range_params(&params)?;
    let bars = timed(&state, "trading_bars", async {
        Ok(symbol_bars(&**state.query.store(), &symbol, half_open, interval).await?)
    })
    .await?;
    Ok(Json(json!({
        "symbol": symbol,
        "start_time": range.start_text(),
        "end_time": range.end_text(),
        "interval": interval.as_str(),
        "count": bars.len(),
        "bars": bars,
    }))
    .into_response())
}

/// `GET /api/v1/metrics` for a trading metric name (see
/// [`crate::trading::metrics`]). Never cached: an order placed in the range
/// changes when a later fill arrives, which the cache's per-day
/// invalidation of the range would not see.
pub(super) async fn metric(
    state: &AppState,
    params: &HashMap<String, String>,
    metric_name: &str,
    metric: TradingMetric,
) -> Result<Response, ApiError> {
    ensure_trading(state)?;
    let (range, half_open, interval) = range_params(params)?;
    let filters = filters_param(params)?;
    let statistic = match params.get("aggregation").filter(|text| !text.is_empty()) {
        None => Statistic::Default,
        Some(text) if metric.takes_statistic() => Statistic::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid aggregation {text:?} for {metric_name}"))
                .with_details(json!({
                    "field": "aggregation",
                    "allowed": ["avg", "count", "p50", "p95", "p99"]
                }))
        })?,
        Some(text) => {
            return Err(ApiError::bad_request(format!(
                "aggregation {text:?} does not apply to {metric_name}"
            ))
            .with_details(json!({"field": "aggregation"})));
        }
    };
    let store = state.query.store();
    let (points, aggregation) = timed(state, "metrics", async {
        Ok(match &metric {
            TradingMetric::Order(order_metric) => {
                let report =
                    orders_report(&**store, half_open, interval, &filters, Groups::Without).await?;
                order_points(*order_metric, &report.series, statistic)
            }
            TradingMetric::Execution(execution_metric) => {
                let report =
                    execution_report(&**store, half_open, interval, &filters, Groups::Without)
                        .await?;
                execution_points(*execution_metric, &report.series, statistic)
            }
            TradingMetric::Bars(symbol) => {
                let bars = symbol_bars(&**store, symbol, half_open, interval).await?;
                (bar_points(&bars), "close")
            }
        })
    })
    .await?;
    let total_count: u64 = points.iter().map(|point| point.count).sum();
    Ok(Json(json!({
        "cached": false,
        "result": {
            "metric_name": metric_name,
            "interval": interval.as_str(),
            "start_time": range.start_text(),
            "end_time": range.end_text(),
            "data_points": points,
            "total_count": total_count,
            "aggregation": aggregation,
        },
    }))
    .into_response())
}
