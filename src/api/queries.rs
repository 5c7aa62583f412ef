//! `GET /api/v1/events/stats`, `GET /api/v1/metrics`,
//! `GET /api/v1/dashboard/metrics`: answered from rollups, through the
//! query cache (see `crate::cache` for what is cached and why a cached
//! answer is never stale for long). Only answers whose range the client
//! gave in full are cached: a defaulted range ends at "now", which is
//! another millisecond on every request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::RequestedRange;
use crate::cache::{CanonicalQuery, Lookup};
use crate::model::event::now_ms;
use crate::model::metric::QueryMetric;
use crate::query::dashboard::dashboard;
use crate::query::series::{Aggregation, SeriesError, metric_series};
use crate::query::stats::event_stats;
use crate::rollup::{Interval, TimeRange};
use crate::trading::metrics::TradingMetric;

/// Runs a query under the configured timeout and records its duration.
pub(super) async fn timed<T>(
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

/// How long a dashboard answer is kept: its windows slide with the clock.
const DASHBOARD_TTL: Duration = Duration::from_secs(1);

/// The answer of `query` from the cache, or computed by `compute` (and then
/// cached). `true` with a cached answer. `None`: not cacheable.
async fn through_cache<Fut>(
    state: &AppState,
    query: Option<CanonicalQuery>,
    compute: impl FnOnce() -> Fut,
) -> Result<(bool, Vec<u8>), ApiError>
where
    Fut: std::future::Future<Output = Result<Vec<u8>, ApiError>>,
{
    let lookup = match &query {
        Some(query) => state.cache.lookup(query).await,
        None => Lookup::Bypass,
    };
    match lookup {
        Lookup::Hit(answer) => Ok((true, answer)),
        Lookup::Miss(ticket) => {
            let answer = compute().await?;
            state.cache.store(ticket, answer.clone()).await;
            Ok((false, answer))
        }
        Lookup::Bypass => Ok((false, compute().await?)),
    }
}

/// Whether the client gave both ends of the range (see the module docs).
fn range_given(params: &HashMap<String, String>) -> bool {
    ["start_time", "end_time"]
        .iter()
        .all(|name| params.get(*name).is_some_and(|text| !text.is_empty()))
}

fn json_bytes(value: &serde_json::Value) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(ApiError::internal)
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /api/v1/events/stats`.
pub async fn stats(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let range = RequestedRange::from_params(&params, now_ms())?;
    let canonical =
        range_given(&params).then(|| CanonicalQuery::new("events/stats", range.half_open()));
    let (_, body) = through_cache(&state, canonical, || async {
        let stats = timed(&state, "stats", async {
            Ok(event_stats(&state.query, range.half_open()).await?)
        })
        .await?;
        json_bytes(&json!({
            "start_time": range.start_text(),
            "end_time": range.end_text(),
            "total_events": stats.total_events,
            "by_type": stats.by_type,
        }))
    })
    .await?;
    Ok(json_response(body))
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
    if let Some(trading) = TradingMetric::parse(metric_name) {
        return super::trading::metric(&state, &params, metric_name, trading).await;
    }
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
    let canonical = range_given(&params).then(|| {
        CanonicalQuery::new("metrics", range.half_open())
            .parameter("metric_name", metric_name.as_str())
            .parameter("interval", interval.as_str())
            .parameter(
                "aggregation",
                aggregation.map_or("default", |aggregation| aggregation.as_str()),
            )
    });
    let (cached, result) = through_cache(&state, canonical, || async {
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
                SeriesError::AggregationNotApplicable(..) => {
                    ApiError::bad_request(error.to_string())
                        .with_details(json!({"field": "aggregation"}))
                }
                SeriesError::Store(error) => ApiError::from(error),
            })
        })
        .await?;
        json_bytes(&json!({
            "metric_name": metric_name,
            "interval": interval.as_str(),
            "start_time": range.start_text(),
            "end_time": range.end_text(),
            "data_points": series.data_points,
            "total_count": series.total_count,
            "aggregation": series.aggregation.as_str(),
        }))
    })
    .await?;
    // The cached part is the result alone, so the envelope can say whether
    // it was cached without parsing it again.
    let mut body = Vec::with_capacity(result.len() + 32);
    body.extend_from_slice(if cached {
        br#"{"cached":true,"result":"#
    } else {
        br#"{"cached":false,"result":"#
    });
    body.extend_from_slice(&result);
    body.push(b'}');
    Ok(json_response(body))
}

/// `GET /api/v1/dashboard/metrics`.
pub async fn dashboard_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = now_ms();
    // Keyed by the current second, over the days of its longest window (the
    // last hour): commits there invalidate it like any other answer.
    let second_start = now.div_euclid(1000) * 1000;
    let canonical = CanonicalQuery::new(
        "dashboard/metrics",
        TimeRange {
            start_ms: second_start - 3_600_000,
            end_ms: second_start + 1000,
        },
    )
    .keep_at_most(DASHBOARD_TTL);
    let (_, body) = through_cache(&state, Some(canonical), || async {
        let metrics = timed(&state, "dashboard", async {
            let mut metrics = dashboard(&state.query, now).await?;
            if state.settings.trading_enabled {
                let figures = state
                    .trading_snapshot
                    .figures(state.query.store(), now)
                    .await?;
                metrics.custom_metrics.extend(figures);
            }
            Ok(metrics)
        })
        .await?;
        serde_json::to_vec(&metrics).map_err(ApiError::internal)
    })
    .await?;
    Ok(json_response(body))
}

/// `GET /api/v1/internal/ingestion-metrics`.
pub async fn ingestion_metrics(State(state): State<AppState>) -> Response {
    Json(state.telemetry.ingestion_metrics()).into_response()
}
