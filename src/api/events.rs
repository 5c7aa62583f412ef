//! `POST /api/v1/events`, `POST /api/v1/events/batch`, `GET /api/v1/events`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::body::{BodyKind, body_kind, malformed, read_body};
use super::error::ApiError;
use super::params::RequestedRange;
use crate::model::event::{format_timestamp, now_ms};
use crate::model::wire::{self, BatchSink, WireEvent, read_json};
use crate::model::{Event, Properties};
use crate::pipeline::validate::Rejection;
use crate::store::EventQuery;

fn rejection_error(rejection: &Rejection) -> ApiError {
    match rejection {
        Rejection::Invalid(error) => {
            ApiError::bad_request(error.to_string()).with_details(json!({"field": error.field()}))
        }
        Rejection::Schema { violations, .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.to_string())
                .with_details(json!({"field": "properties", "violations": violations}))
        }
    }
}

/// `POST /api/v1/events`: track one event; answered after the commit.
pub async fn track_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    body_kind(&headers, false)?;
    let bytes = read_body(body, state.settings.max_body_bytes)?;
    let wire: WireEvent = read_json(&bytes).map_err(|error| malformed(&error))?;
    state.http_source.record_received(1);
    let event = state
        .validator
        .validate(wire, now_ms(), Uuid::now_v7)
        .map_err(|rejection| {
            state.telemetry.record_rejected(&rejection.field());
            rejection_error(&rejection)
        })?;
    let event_id = event.id;
    let inserted = state.pipeline.submit(vec![event]).await?;
    let new = inserted.first().copied().unwrap_or(false);
    state
        .http_source
        .record_committed(usize::from(new), usize::from(!new));
    if new {
        Ok((
            StatusCode::CREATED,
            Json(json!({"success": true, "event_id": event_id})),
        )
            .into_response())
    } else {
        Ok((
            StatusCode::OK,
            Json(json!({"success": true, "event_id": event_id, "duplicate": true})),
        )
            .into_response())
    }
}

/// One refused item of a batch.
#[derive(Debug, Serialize)]
struct RejectedItem {
    index: usize,
    error: String,
    field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

/// Bodies larger than this are read and validated on the blocking pool. A
/// 10 000-event body takes milliseconds of CPU; on an async worker it would
/// hold up every task queued behind it there (the committer starting the
/// next commit, the syncer answering a committed batch), and the writer
/// would wait for them.
const READ_INLINE_MAX_BYTES: usize = 64 * 1024;

/// Large bodies read at once: one per core, as many as the async workers
/// that read them before; a body read holds its events, two to three times
/// its size, so the readers are capped rather than the blocking pool's
/// hundreds of threads.
static LARGE_READS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, usize::from))
});

/// Validates a batch's items as they are read (see [`read_batch`]).
struct Validating<'a> {
    state: &'a AppState,
    now: i64,
    /// Items seen; past `max_batch_events` they are only counted.
    items: usize,
    events: Vec<Event>,
    rejected: Vec<RejectedItem>,
    /// The fields of the rejections, for the telemetry once the batch is
    /// taken.
    rejected_fields: Vec<String>,
}

impl Validating<'_> {
    fn over_limit(&self) -> bool {
        self.items > self.state.settings.max_batch_events
    }

    fn item(&mut self, item: Result<WireEvent, String>) {
        let index = self.items;
        self.items += 1;
        if self.over_limit() {
            return;
        }
        let wire = match item {
            Ok(wire) => wire,
            Err(error) => {
                self.rejected.push(RejectedItem {
                    index,
                    error,
                    field: String::new(),
                    details: None,
                });
                return;
            }
        };
        match self.state.validator.validate(wire, self.now, Uuid::now_v7) {
            Ok(event) => self.events.push(event),
            Err(rejection) => {
                let field = rejection.field();
                self.rejected_fields.push(field.clone());
                self.rejected.push(RejectedItem {
                    index,
                    error: rejection.to_string(),
                    field,
                    details: match &rejection {
                        Rejection::Schema { violations, .. } => {
                            Some(json!({"violations": violations}))
                        }
                        Rejection::Invalid(_) => None,
                    },
                });
            }
        }
    }
}

impl BatchSink for Validating<'_> {
    fn event(&mut self, event: WireEvent) {
        self.item(Ok(event));
    }

    fn restart(&mut self) {
        self.items = 0;
        self.events.clear();
        self.rejected.clear();
        self.rejected_fields.clear();
    }
}

/// The valid events of a batch body, and its refused items.
type ReadBatch = (Vec<Event>, Vec<RejectedItem>);

/// Reads and validates a batch body: a JSON array, `{"events": [...]}`, or
/// NDJSON (one event per non-blank line; a line that is not JSON is a
/// refused item rather than a malformed batch). Each item is validated as
/// soon as it is read.
fn read_batch(state: &AppState, kind: BodyKind, bytes: &[u8]) -> Result<ReadBatch, ApiError> {
    let limit = state.settings.max_batch_events;
    let mut batch = Validating {
        state,
        now: now_ms(),
        items: 0,
        // Events of more than 64 bytes of JSON (nearly all) fit at once; a
        // larger reserve costs only address space.
        events: Vec::with_capacity((bytes.len() / 64).min(limit)),
        rejected: Vec::new(),
        rejected_fields: Vec::new(),
    };
    match kind {
        BodyKind::Json => {
            if !wire::read_batch(bytes, &mut batch).map_err(|error| malformed(&error))? {
                return Err(ApiError::bad_request(
                    "batch must be a JSON array of events or an object {\"events\": [...]}",
                ));
            }
        }
        BodyKind::Ndjson => {
            for line in bytes
                .split(|byte| *byte == b'\n')
                .filter(|line| line.iter().any(|byte| !byte.is_ascii_whitespace()))
            {
                batch.item(read_json(line).map_err(|error| format!("malformed JSON: {error}")));
            }
        }
    }
    if batch.items == 0 {
        return Err(ApiError::bad_request("batch is empty"));
    }
    if batch.over_limit() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "batch has {} events, more than the limit of {limit}",
                batch.items
            ),
        ));
    }
    for field in &batch.rejected_fields {
        state.telemetry.record_rejected(field);
    }
    Ok((batch.events, batch.rejected))
}

/// `POST /api/v1/events/batch`: many events in one request and one commit.
pub async fn track_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let kind = body_kind(&headers, true)?;
    let bytes = read_body(body, state.settings.max_body_bytes)?;
    let (events, rejected) = if bytes.len() <= READ_INLINE_MAX_BYTES {
        read_batch(&state, kind, &bytes)?
    } else {
        let _reading = LARGE_READS.acquire().await.map_err(ApiError::internal)?;
        let reader = state.clone();
        tokio::task::spawn_blocking(move || read_batch(&reader, kind, &bytes))
            .await
            .map_err(ApiError::internal)??
    };
    let submitted = events.len();
    state
        .http_source
        .record_received(submitted + rejected.len());
    let inserted = state.pipeline.submit(events).await?;
    let accepted = inserted.iter().filter(|flag| **flag).count();
    state
        .http_source
        .record_committed(accepted, submitted - accepted);
    let mut body = json!({
        "accepted": accepted,
        "duplicates": submitted - accepted,
        "rejected": rejected,
    });
    if submitted == 0 {
        body["error"] = json!("no valid events in the batch");
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Wire form of a stored event.
#[derive(Debug, Serialize)]
pub struct EventOut {
    id: Uuid,
    event_type: String,
    user_id: Option<String>,
    session_id: Option<String>,
    properties: Properties,
    timestamp: String,
    created_at: String,
}

impl From<Event> for EventOut {
    fn from(event: Event) -> Self {
        EventOut {
            id: event.id,
            event_type: event.event_type,
            user_id: event.user_id,
            session_id: event.session_id,
            properties: event.properties,
            timestamp: format_timestamp(event.timestamp_ms),
            created_at: format_timestamp(event.created_at_ms),
        }
    }
}

/// `GET /api/v1/events`: events in a range, newest first.
pub async fn list_events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let range = RequestedRange::from_params(&params, now_ms())?;
    let limit = match params.get("limit") {
        None => state.settings.default_limit,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=state.settings.max_results).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request("Invalid limit parameter").with_details(json!({
                    "field": "limit",
                    "allowed": format!("1..={}", state.settings.max_results)
                }))
            })?,
    };
    let half_open = range.half_open();
    let events = state
        .query
        .store()
        .list_events(EventQuery {
            start_ms: half_open.start_ms,
            end_ms: half_open.end_ms,
            event_type: params
                .get("event_type")
                .filter(|text| !text.is_empty())
                .cloned(),
            limit,
        })
        .await?;
    let events: Vec<EventOut> = events.into_iter().map(EventOut::from).collect();
    Ok(Json(json!({
        "count": events.len(),
        "events": events,
        "start_time": range.start_text(),
        "end_time": range.end_text(),
    }))
    .into_response())
}
