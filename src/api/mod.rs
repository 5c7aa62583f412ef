//! The HTTP API: routes, shared state, and the middleware every request
//! passes through. Handlers live one resource per file.

mod body;
mod custom_events;
mod dead_letters;
pub mod error;
mod events;
pub mod health;
mod params;
mod queries;
pub mod request_id;
pub mod security;
mod trading;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::error::ApiError;
use self::health::Readiness;
use crate::pipeline::Pipeline;
use crate::pipeline::validate::EventValidator;
use crate::query::QueryEngine;
use crate::telemetry::Telemetry;
use crate::telemetry::sources::SourceStats;

/// Limits and defaults the handlers apply, from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub max_results: usize,
    pub default_limit: usize,
    pub query_timeout: Duration,
    pub custom_events_enabled: bool,
    /// `analytics.aggregation.trading`: the stores keep the trading tables.
    pub trading_enabled: bool,
    /// How far back raw events are kept (strategy start/stop look-back).
    pub raw_retention_ms: i64,
}

/// What every handler can reach. Cloned for every request (by the router
/// and each middleware), so it is one shared pointer to [`AppParts`].
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub pipeline: Pipeline,
    pub validator: Arc<EventValidator>,
    pub query: QueryEngine,
    pub telemetry: Arc<Telemetry>,
    pub readiness: Arc<Readiness>,
    pub settings: Arc<ApiSettings>,
    /// API keys, rate limits and the in-flight cap.
    pub security: Arc<security::Security>,
    /// Answers of the read endpoints (in process, or shared via Redis).
    pub cache: Arc<crate::cache::CachedQueries>,
    /// The counters of HTTP ingestion.
    pub http_source: Arc<SourceStats>,
    /// The configured stream sources (Kafka, NATS), for `/health`.
    pub stream_sources: Vec<Arc<SourceStats>>,
    /// The dashboard's trading figures, refreshed off the request path.
    pub trading_snapshot: Arc<crate::query::dashboard::TradingSnapshot>,
}

/// The API router. `cors` is the layer of `security.cors` (`None` when
/// disabled).
pub fn router(state: AppState, cors: Option<tower_http::cors::CorsLayer>) -> Router {
    let body_limit = state.settings.max_body_bytes;
    let api = Router::new()
        .route(
            "/api/v1/events",
            post(events::track_event).get(events::list_events),
        )
        .route("/api/v1/events/batch", post(events::track_batch))
        .route("/api/v1/events/stats", get(queries::stats))
        .route("/api/v1/metrics", get(queries::metrics))
        .route("/api/v1/dashboard/metrics", get(queries::dashboard_metrics))
        .route(
            "/api/v1/custom-events",
            post(custom_events::create).get(custom_events::list),
        )
        .route(
            "/api/v1/custom-events/{name}",
            get(custom_events::get)
                .put(custom_events::update)
                .delete(custom_events::deactivate),
        )
        .route(
            "/api/v1/internal/ingestion-metrics",
            get(queries::ingestion_metrics),
        )
        .route("/api/v1/trading/strategies", get(trading::strategies))
        .route("/api/v1/trading/strategies/{id}", get(trading::strategy))
        .route("/api/v1/trading/orders", get(trading::orders))
        .route("/api/v1/trading/execution", get(trading::execution))
        .route(
            "/api/v1/trading/markets/{symbol}/bars",
            get(trading::market_bars),
        )
        .route("/api/v1/internal/dead-letters", get(dead_letters::list))
        .route(
            "/api/v1/internal/dead-letters/replay",
            post(dead_letters::replay_all),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_during_shutdown,
        ));
    // Layers run outermost last-added: request id and log line, then CORS
    // (preflights answered before any key is asked for), then the in-flight
    // cap, then keys and rate limits (see `security`).
    let mut router = Router::new()
        .route("/health", get(health::health))
        .route("/healthz", get(health::health))
        .route("/ready", get(health::ready))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security::limit_in_flight,
        ));
    if let Some(cors) = cors {
        router = router
            .layer(cors)
            .layer(middleware::from_fn(security::preflight_no_content));
    }
    router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_id::track_request,
        ))
        .with_state(state)
}

/// Once shutdown has begun, API requests are refused (health and readiness
/// still answer, so a load balancer sees the state).
async fn refuse_during_shutdown(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.readiness.is_shutting_down() {
        return ApiError::unavailable("the service is shutting down", 5).into_response();
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    )
}
