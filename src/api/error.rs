//! The one place where failures become HTTP responses.
//!
//! A client's mistake becomes a 4xx whose JSON body names what is wrong; an
//! internal fault becomes a 5xx with a generic body while the cause is logged
//! with the request id. Every error body carries `request_id`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::request_id::current_request_id;
use crate::pipeline::SubmitError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Option<Value>,
    retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: None,
            retry_after_seconds: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 503 with `Retry-After`: the service cannot take this now.
    pub fn unavailable(message: impl Into<String>, retry_after_seconds: u64) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, message);
        error.retry_after_seconds = Some(retry_after_seconds);
        error
    }

    /// 500: logs the cause, tells the client nothing internal.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "database unavailable");
                ApiError::unavailable("database unavailable", 1)
            }
            StoreError::Conflict(cause) => ApiError::new(StatusCode::CONFLICT, cause),
            StoreError::Corrupt(cause) => ApiError::internal(cause),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Overloaded => {
                ApiError::unavailable("ingest queue is full, retry later", 1)
            }
            SubmitError::CommitFailed(cause) => {
                tracing::error!(error = %cause, "events not stored");
                ApiError::unavailable("events could not be stored, retry later", 1)
            }
            SubmitError::ShuttingDown => ApiError::unavailable("the service is shutting down", 5),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(details) = self.details {
            body["details"] = details;
        }
        if let Some(request_id) = current_request_id() {
            body["request_id"] = Value::String(request_id);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
