//! Trading analytics endpoints: `GET /api/v1/trading/strategies` and
//! `GET /api/v1/trading/strategies/{id}` (strategy performance, see
//! [`crate::query::strategies`]).

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
use crate::query::strategies::{StrategyError, StrategyPerformance, strategy_performance};
use crate::rollup::{Interval, TimeRange};

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
