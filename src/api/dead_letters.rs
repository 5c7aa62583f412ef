//! `GET /api/v1/internal/dead-letters` and
//! `POST /api/v1/internal/dead-letters/replay` (admin scope): the stream
//! messages that could not become events, and their replay after a fix.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::sources::dead_letters::{ReplayError, replay};
use crate::store::DeadLetterQuery;

/// Sources that dead-letter messages.
const SOURCES: &[&str] = &["kafka", "nats"];

fn source_param(params: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match params.get("source") {
        None => Ok(None),
        Some(source) if SOURCES.contains(&source.as_str()) => Ok(Some(source.clone())),
        Some(source) => Err(ApiError::bad_request(format!(
            "Invalid source parameter {source:?}: one of {}",
            SOURCES.join(", ")
        ))
        .with_details(json!({"field": "source", "allowed": SOURCES}))),
    }
}

/// `GET /api/v1/internal/dead-letters?source=&after=&limit=`: oldest first;
/// `next_after` pages on.
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let source = source_param(&params)?;
    let after_id = match params.get("after") {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| {
                ApiError::bad_request("Invalid after parameter: a dead letter id (integer >= 0)")
                    .with_details(json!({"field": "after"}))
            })?,
    };
    let max = state.settings.max_results;
    let limit = match params.get("limit") {
        None => state.settings.default_limit,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request("Invalid limit parameter")
                    .with_details(json!({"field": "limit", "allowed": format!("1..={max}")}))
            })?,
    };
    let letters = state
        .query
        .store()
        .list_dead_letters(&DeadLetterQuery {
            source,
            after_id,
            limit,
        })
        .await?;
    let next_after = (letters.len() == limit)
        .then(|| letters.last().map(|letter| letter.id))
        .flatten();
    Ok(Json(json!({
        "dead_letters": letters,
        "count": letters.len(),
        "next_after": next_after,
    }))
    .into_response())
}

/// `POST /api/v1/internal/dead-letters/replay?source=`: decodes every dead
/// letter again with the current schemas and stores the ones that pass.
pub async fn replay_all(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let source = source_param(&params)?;
    let report = replay(
        state.query.store().as_ref(),
        &state.pipeline,
        &state.validator,
        source.as_deref(),
    )
    .await
    .map_err(|error| match error {
        ReplayError::Store(error) => ApiError::from(error),
        ReplayError::Submit(error) => ApiError::from(error),
    })?;
    Ok(Json(report).into_response())
}
