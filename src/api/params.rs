//! Query-parameter parsing shared by the read endpoints.

use std::collections::HashMap;

use super::error::ApiError;
use crate::model::event::{format_timestamp, parse_timestamp_text};
use crate::rollup::TimeRange;

const DAY_MS: i64 = 86_400_000;

/// A client's time range: both ends inclusive on the wire, half-open inside.
#[derive(Debug, Clone, Copy)]
pub struct RequestedRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl RequestedRange {
    /// `start_time` / `end_time` (RFC 3339 or epoch ms); defaults now − 24 h
    /// and now.
    pub fn from_params(params: &HashMap<String, String>, now_ms: i64) -> Result<Self, ApiError> {
        let start_ms = match params.get("start_time").filter(|text| !text.is_empty()) {
            Some(text) => parse_timestamp_text(text)
                .ok_or_else(|| ApiError::bad_request("Invalid start_time format"))?,
            None => now_ms - DAY_MS,
        };
        let end_ms = match params.get("end_time").filter(|text| !text.is_empty()) {
            Some(text) => parse_timestamp_text(text)
                .ok_or_else(|| ApiError::bad_request("Invalid end_time format"))?,
            None => now_ms,
        };
        if start_ms > end_ms {
            return Err(ApiError::bad_request(
                "start_time must not be after end_time",
            ));
        }
        Ok(RequestedRange { start_ms, end_ms })
    }

    /// The half-open range `[start, end + 1 ms)` the queries use.
    pub fn half_open(self) -> TimeRange {
        TimeRange {
            start_ms: self.start_ms,
            end_ms: self.end_ms.saturating_add(1),
        }
    }

    pub fn start_text(self) -> String {
        format_timestamp(self.start_ms)
    }

    pub fn end_text(self) -> String {
        format_timestamp(self.end_ms)
    }
}
