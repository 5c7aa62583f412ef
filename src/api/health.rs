//! Liveness, health and readiness: three handlers, three meanings.
//!
//! - `/health`, `/healthz`: what the service depends on, right now. A lost
//!   database is `unhealthy` (503); a lost Redis (shared cache and rate
//!   limits) is `degraded` (200): requests are still answered from the
//!   store. `"cache"` is `connected` / `disconnected` with Redis, and
//!   `in_process` without it.
//! - A configured stream source (Kafka, NATS) that lost its broker makes
//!   the service `degraded` (200): HTTP ingestion and queries go on, and the
//!   source resumes where its group left off; `"sources"` says which.
//! - `/ready`: whether to send traffic here: 503 until startup finished,
//!   during shutdown, and while the database does not answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::model::event::{format_timestamp, now_ms};

/// Startup and shutdown state.
#[derive(Debug)]
pub struct Readiness {
    started: AtomicBool,
    shutting_down: AtomicBool,
    started_at: Instant,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            started: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            started_at: Instant::now(),
        }
    }
}

impl Readiness {
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }
}

/// How long a health probe may wait for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn database_connected(state: &AppState) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, state.query.store().ping()).await,
        Ok(Ok(()))
    )
}

/// `GET /health`, `GET /healthz`.
pub async fn health(State(state): State<AppState>) -> Response {
    let (database, cache) = tokio::join!(database_connected(&state), state.cache.status());
    let sources: serde_json::Map<String, serde_json::Value> = state
        .stream_sources
        .iter()
        .map(|source| {
            let connection = if source.is_connected() {
                "connected"
            } else {
                "disconnected"
            };
            (source.name().to_string(), connection.into())
        })
        .collect();
    let source_lost = state
        .stream_sources
        .iter()
        .any(|source| !source.is_connected());
    let status = if !database {
        "unhealthy"
    } else if cache == "disconnected" || source_lost {
        "degraded"
    } else {
        "healthy"
    };
    let code = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "timestamp": format_timestamp(now_ms()),
        "service": "analytics",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.readiness.started_at.elapsed().as_secs(),
        "database": if database { "connected" } else { "disconnected" },
        "cache": cache,
        "sources": sources,
    });
    (code, Json(body)).into_response()
}

/// `GET /ready`.
pub async fn ready(State(state): State<AppState>) -> Response {
    let reason = if !state.readiness.is_started() {
        Some("starting")
    } else if state.readiness.is_shutting_down() {
        Some("shutting down")
    } else if !database_connected(&state).await {
        Some("database unreachable")
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}
