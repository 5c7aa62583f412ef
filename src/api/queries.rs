//! `GET /api/v1/events/stats`, `GET /api/v1/metrics`,
//! `GET /api/v1/dashboard/metrics`: answered from rollups.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::RequestedRange;
use crate::model::event::now_ms;
use crate::model::metric::QueryMetric;
use crate::query::dashboard::dashboard;
use crate::query::series::{Aggregation, SeriesError, metric_series};
use crate::query::stats::event_stats;
use crate::rollup::Interval;

/// Runs a query under the configured timeout and records its duration.
async fn timed<T>(
    state: &AppState,
    kind: &str,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(state.settings.query_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::unavailable("query timed out", 1)),
    };
    state
        .telemetry
        .query_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// `GET /api/v1/events/stats`.
pub async fn stats(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let range = RequestedRange::from_params(&params, now_ms())?;
    let stats = timed(&state, "stats", async {
        Ok(event_stats(&state.query, range.half_open()).await?)
    })
    .await?;
    Ok(Json(json!({
        "start_time": range.start_text(),
        "end_time": range.end_text(),
        "total_events": stats.total_events,
        "by_type": stats.by_type,
    }))
    .into_response())
}

/// `GET /api/v1/metrics`.
pub async fn metrics(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let metric_name = params
        .get("metric_name")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::bad_request("metric_name is required"))?;
    let metric = QueryMetric::parse(metric_name).map_err(|message| {
        ApiError::bad_request(message).with_details(json!({"field": "metric_name"}))
    })?;
    let interval = match params.get("interval").filter(|text| !text.is_empty()) {
        None => Interval::H1,
        Some(text) => Interval::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid interval {text:?}"))
                .with_details(json!({"field": "interval", "allowed": ["1m", "5m", "15m", "30m", "1h", "4h", "1d"]}))
        })?,
    };
    let aggregation = match params.get("aggregation").filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => Some(Aggregation::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!("Invalid aggregation {text:?}")).with_details(json!({
                "field": "aggregation",
                "allowed": ["avg", "count", "sum", "min", "max", "p50", "p95", "p99"]
            }))
        })?),
    };
    let range = RequestedRange::from_params(&params, now_ms())?;
    let series = timed(&state, "metrics", async {
        metric_series(
            &state.query,
            &metric,
            metric_name,
            interval,
            range.half_open(),
            aggregation,
        )
        .await
        .map_err(|error| match error {
            SeriesError::AggregationNotApplicable(..) => ApiError::bad_request(error.to_string())
                .with_details(json!({"field": "aggregation"})),
            SeriesError::Store(error) => ApiError::from(error),
        })
    })
    .await?;
    Ok(Json(json!({
        // No query cache yet: every answer is computed.
        "cached": false,
        "result": {
            "metric_name": metric_name,
            "interval": interval.as_str(),
            "start_time": range.start_text(),
            "end_time": range.end_text(),
            "data_points": series.data_points,
            "total_count": series.total_count,
            "aggregation": series.aggregation.as_str(),
        }
    }))
    .into_response())
}

/// `GET /api/v1/dashboard/metrics`.
pub async fn dashboard_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = timed(&state, "dashboard", async {
        Ok(dashboard(&state.query, now_ms()).await?)
    })
    .await?;
    Ok(Json(metrics).into_response())
}

/// `GET /api/v1/internal/ingestion-metrics`.
pub async fn ingestion_metrics(State(state): State<AppState>) -> Response {
    Json(state.telemetry.ingestion_metrics()).into_response()
}
