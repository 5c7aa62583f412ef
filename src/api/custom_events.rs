//! Custom event definitions: create, read, list, update, deactivate.
//!
//! The stored definition is the source of truth; after each successful
//! write the compiled schema is installed in the ingest validator, so the
//! next event of that type is checked against it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::AppState;
use super::body::{body_kind, malformed, read_body};
use super::error::ApiError;
use crate::model::custom_event::{
    CustomEventDefinitionOut, optional_active, optional_string, validate_definition_name,
};
use crate::model::event::now_ms;
use crate::model::wire::read_json;
use crate::model::{CompiledDefinition, CustomEventDefinition, DefinitionError};
use crate::store::StoreError;

fn ensure_enabled(state: &AppState) -> Result<(), ApiError> {
    if state.settings.custom_events_enabled {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "custom events are disabled (custom_events.enabled is false)",
        ))
    }
}

fn definition_error(error: DefinitionError) -> ApiError {
    match &error {
        DefinitionError::InvalidSchema(problems) => {
            ApiError::bad_request("schema is not a valid JSON Schema")
                .with_details(json!({"field": "schema", "problems": problems}))
        }
        DefinitionError::InvalidName(_) => {
            ApiError::bad_request(error.to_string()).with_details(json!({"field": "name"}))
        }
        DefinitionError::FieldNotString(field) => {
            ApiError::bad_request(error.to_string()).with_details(json!({"field": field}))
        }
        DefinitionError::ActiveNotBool => {
            ApiError::bad_request(error.to_string()).with_details(json!({"field": "is_active"}))
        }
    }
}

fn read_object(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    body_kind(headers, false)?;
    let bytes = read_body(body, limit)?;
    match read_json(&bytes).map_err(|error| malformed(&error))? {
        Value::Object(object) => Ok(object),
        _ => Err(ApiError::bad_request("body must be a JSON object")),
    }
}

fn schema_of(body: &Map<String, Value>) -> Result<Option<Value>, ApiError> {
    match body.get("schema") {
        None | Some(Value::Null) => Ok(None),
        Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(Some(schema.clone())),
        Some(_) => Err(ApiError::bad_request("schema must be a JSON Schema object")
            .with_details(json!({"field": "schema"}))),
    }
}

/// Stores a changed definition and enforces it from the next event on.
async fn save_changed(
    state: &AppState,
    mut definition: CustomEventDefinition,
) -> Result<Response, ApiError> {
    definition.updated_at_ms = now_ms();
    let compiled = CompiledDefinition::compile(definition.clone()).map_err(definition_error)?;
    state.query.store().update_definition(&definition).await?;
    state.validator.install(compiled);
    Ok(out(&definition).into_response())
}

fn not_found() -> ApiError {
    ApiError::not_found("Custom event not found")
}

fn out(definition: &CustomEventDefinition) -> Json<CustomEventDefinitionOut> {
    Json(CustomEventDefinitionOut::from(definition))
}

/// `POST /api/v1/custom-events`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ensure_enabled(&state)?;
    let body = read_object(&headers, body, state.settings.max_body_bytes)?;
    let name = match body.get("name") {
        Some(Value::String(name)) => name.clone(),
        None | Some(Value::Null) => {
            return Err(
                ApiError::bad_request("name is required").with_details(json!({"field": "name"}))
            );
        }
        Some(_) => {
            return Err(ApiError::bad_request("name must be a string")
                .with_details(json!({"field": "name"})));
        }
    };
    validate_definition_name(&name).map_err(definition_error)?;
    let now = now_ms();
    let definition = CustomEventDefinition {
        id: Uuid::now_v7(),
        display_name: optional_string(&body, "display_name")
            .map_err(definition_error)?
            .unwrap_or_else(|| name.clone()),
        description: optional_string(&body, "description")
            .map_err(definition_error)?
            .unwrap_or_default(),
        schema: schema_of(&body)?.unwrap_or_else(|| json!({"type": "object"})),
        is_active: optional_active(&body)
            .map_err(definition_error)?
            .unwrap_or(true),
        created_at_ms: now,
        updated_at_ms: now,
        name,
    };
    let compiled = CompiledDefinition::compile(definition.clone()).map_err(definition_error)?;
    match state.query.store().create_definition(&definition).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(
                ApiError::new(StatusCode::CONFLICT, "Custom event already exists")
                    .with_details(json!({"field": "name"})),
            );
        }
        Err(error) => return Err(error.into()),
    }
    state.validator.install(compiled);
    tracing::info!(name = %definition.name, "custom event defined");
    Ok((StatusCode::CREATED, out(&definition)).into_response())
}

/// `GET /api/v1/custom-events/{name}`.
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    ensure_enabled(&state)?;
    let definition = state
        .query
        .store()
        .get_definition(&name)
        .await?
        .ok_or_else(not_found)?;
    Ok(out(&definition).into_response())
}

/// `GET /api/v1/custom-events`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    ensure_enabled(&state)?;
    let definitions = state.query.store().list_definitions().await?;
    let items: Vec<CustomEventDefinitionOut> = definitions
        .iter()
        .map(CustomEventDefinitionOut::from)
        .collect();
    Ok(Json(json!({"custom_events": items, "count": items.len()})).into_response())
}

/// `PUT /api/v1/custom-events/{name}`: changes display name, description,
/// schema or `is_active`; the name is the identity and cannot change.
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    ensure_enabled(&state)?;
    let body = read_object(&headers, body, state.settings.max_body_bytes)?;
    if let Some(new_name) = body.get("name").and_then(Value::as_str)
        && new_name != name
    {
        return Err(
            ApiError::bad_request("name cannot be changed").with_details(json!({"field": "name"}))
        );
    }
    let mut definition = state
        .query
        .store()
        .get_definition(&name)
        .await?
        .ok_or_else(not_found)?;
    if let Some(display_name) = optional_string(&body, "display_name").map_err(definition_error)? {
        definition.display_name = display_name;
    }
    if let Some(description) = optional_string(&body, "description").map_err(definition_error)? {
        definition.description = description;
    }
    if let Some(schema) = schema_of(&body)? {
        definition.schema = schema;
    }
    if let Some(active) = optional_active(&body).map_err(definition_error)? {
        definition.is_active = active;
    }
    save_changed(&state, definition).await
}

/// `DELETE /api/v1/custom-events/{name}`: deactivates (events of the type are
/// no longer checked against the schema); the definition stays readable.
pub async fn deactivate(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    ensure_enabled(&state)?;
    let mut definition = state
        .query
        .store()
        .get_definition(&name)
        .await?
        .ok_or_else(not_found)?;
    definition.is_active = false;
    save_changed(&state, definition).await
}
