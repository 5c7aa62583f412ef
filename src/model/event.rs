//! Events: the wire form clients send, and the validated form the rest of the
//! service works with.
//!
//! Parsing happens once, at the edge: [`parse_event`] turns a wire event (read
//! straight from JSON as a [`WireEvent`], or from a JSON value) into an
//! [`Event`] or an [`EventError`] that names the offending field. Everything
//! past this point may rely on the invariants of `Event`: the type is a
//! non-empty bounded string, `properties` is an object within the configured
//! limits, and the timestamp lies inside the accepted window.

use uuid::Uuid;

use super::properties::{Properties, PropertiesField, Scalar};
use super::wire::{Parsed, WireEvent};

/// Longest accepted `event_type`, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// Longest accepted `user_id` / `session_id`, in bytes.
pub const MAX_ID_FIELD_LEN: usize = 256;

/// A validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Uuid,
    pub event_type: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub properties: Properties,
    /// Event time, epoch milliseconds UTC.
    pub timestamp_ms: i64,
    /// Ingestion time, epoch milliseconds UTC.
    pub created_at_ms: i64,
}

impl Event {
    /// A numeric property, accepting JSON numbers and numeric strings (as
    /// exchanges send them). Non-finite values are treated as absent.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.properties.get(name)?.number()
    }

    /// A string property (numbers are not coerced).
    pub fn string(&self, name: &str) -> Option<&str> {
        match self.properties.get(name)? {
            Scalar::String(text) if !text.is_empty() => Some(text),
            _ => None,
        }
    }
}

/// What limits an event must respect; built from the configuration.
#[derive(Debug, Clone)]
pub struct EventLimits {
    pub max_properties: usize,
    pub max_property_size: usize,
    /// How far in the future (ms) an event time may lie.
    pub max_future_skew_ms: i64,
    /// How far in the past (ms) an event time may lie (raw-event retention).
    pub max_age_ms: i64,
}

/// Why an event was refused. Each variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("event must be a JSON object")]
    NotAnObject,
    #[error("event_type is required")]
    MissingEventType,
    #[error("event_type must be a string")]
    EventTypeNotString,
    #[error("event_type must not be empty")]
    EmptyEventType,
    #[error("event_type must be at most {MAX_EVENT_TYPE_LEN} bytes")]
    EventTypeTooLong,
    #[error("event_type must not contain control characters or surrounding whitespace")]
    EventTypeInvalidCharacters,
    #[error("{0} must be a string")]
    FieldNotString(&'static str),
    #[error("{0} must be at most {MAX_ID_FIELD_LEN} bytes")]
    FieldTooLong(&'static str),
    #[error("{0} must not contain a NUL character")]
    NulCharacter(&'static str),
    #[error("properties.{0} must not contain a NUL character")]
    NulInProperty(String),
    #[error("id must be a UUID")]
    InvalidId,
    #[error("properties must be a JSON object")]
    PropertiesNotObject,
    #[error("properties has {count} keys, more than the limit of {limit}")]
    TooManyProperties { count: usize, limit: usize },
    #[error("properties.{key} is {size} bytes, more than the limit of {limit}")]
    PropertyTooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("timestamp must be an RFC 3339 string or integer epoch milliseconds")]
    InvalidTimestamp,
    #[error("timestamp is more than {skew_seconds}s in the future")]
    TimestampInFuture { skew_seconds: i64 },
    #[error("timestamp is older than the raw-event retention of {retention_days} days")]
    TimestampTooOld { retention_days: i64 },
}

impl EventError {
    /// The wire field this error is about.
    pub fn field(&self) -> String {
        match self {
            EventError::NotAnObject => "".into(),
            EventError::MissingEventType
            | EventError::EventTypeNotString
            | EventError::EmptyEventType
            | EventError::EventTypeTooLong
            | EventError::EventTypeInvalidCharacters => "event_type".into(),
            EventError::FieldNotString(field)
            | EventError::FieldTooLong(field)
            | EventError::NulCharacter(field) => (*field).into(),
            EventError::NulInProperty(key) => format!("properties.{key}"),
            EventError::InvalidId => "id".into(),
            EventError::PropertiesNotObject | EventError::TooManyProperties { .. } => {
                "properties".into()
            }
            EventError::PropertyTooLarge { key, .. } => format!("properties.{key}"),
            EventError::InvalidTimestamp
            | EventError::TimestampInFuture { .. }
            | EventError::TimestampTooOld { .. } => "timestamp".into(),
        }
    }
}

/// Parses and validates one wire event. `now_ms` is the receipt time; an event
/// without `id` gets `default_id()` (a time-ordered UUIDv7 for HTTP, one
/// the same on every delivery for stream and file sources).
pub fn parse_event(
    wire: impl Into<WireEvent>,
    limits: &EventLimits,
    now_ms: i64,
    default_id: impl FnOnce() -> Uuid,
) -> Result<Event, EventError> {
    let WireEvent::Object(fields) = wire.into() else {
        return Err(EventError::NotAnObject);
    };
    let event_type = parse_event_type(fields.event_type)?;
    let user_id = parse_optional_string(fields.user_id, "user_id")?;
    let session_id = parse_optional_string(fields.session_id, "session_id")?;
    let id = match fields.id {
        None | Some(Parsed::Null) => default_id(),
        Some(Parsed::Valid(id)) => id,
        Some(Parsed::Invalid) => return Err(EventError::InvalidId),
    };
    let properties = match fields.properties {
        None | Some(PropertiesField::Null) => Properties::default(),
        Some(PropertiesField::Object(properties)) => properties,
        Some(PropertiesField::NotAnObject) => return Err(EventError::PropertiesNotObject),
    };
    properties.check(limits)?;
    let timestamp_ms = match fields.timestamp {
        None | Some(Parsed::Null) => now_ms,
        Some(Parsed::Valid(millis)) => millis,
        Some(Parsed::Invalid) => return Err(EventError::InvalidTimestamp),
    };
    if timestamp_ms > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(EventError::TimestampInFuture {
            skew_seconds: limits.max_future_skew_ms / 1000,
        });
    }
    if timestamp_ms < now_ms.saturating_sub(limits.max_age_ms) {
        return Err(EventError::TimestampTooOld {
            retention_days: limits.max_age_ms / 86_400_000,
        });
    }
    Ok(Event {
        id,
        event_type,
        user_id,
        session_id,
        properties,
        timestamp_ms,
        created_at_ms: now_ms,
    })
}

/// Validates an event type name (also used for custom event definitions).
pub fn validate_event_type(text: &str) -> Result<(), EventError> {
    if text.is_empty() {
        return Err(EventError::EmptyEventType);
    }
    if text.len() > MAX_EVENT_TYPE_LEN {
        return Err(EventError::EventTypeTooLong);
    }
    if text.chars().any(char::is_control) || text.trim() != text {
        return Err(EventError::EventTypeInvalidCharacters);
    }
    Ok(())
}

fn parse_event_type(value: Option<Parsed<String>>) -> Result<String, EventError> {
    match value {
        None | Some(Parsed::Null) => Err(EventError::MissingEventType),
        Some(Parsed::Valid(text)) => {
            validate_event_type(&text)?;
            Ok(text)
        }
        Some(Parsed::Invalid) => Err(EventError::EventTypeNotString),
    }
}

fn parse_optional_string(
    value: Option<Parsed<String>>,
    field: &'static str,
) -> Result<Option<String>, EventError> {
    match value {
        None | Some(Parsed::Null) => Ok(None),
        Some(Parsed::Valid(text)) if text.len() > MAX_ID_FIELD_LEN => {
            Err(EventError::FieldTooLong(field))
        }
        Some(Parsed::Valid(text)) if text.is_empty() => Ok(None),
        // Databases store these as text, which cannot hold NUL.
        Some(Parsed::Valid(text)) if text.contains('\0') => Err(EventError::NulCharacter(field)),
        Some(Parsed::Valid(text)) => Ok(Some(text)),
        Some(Parsed::Invalid) => Err(EventError::FieldNotString(field)),
    }
}

/// Parses RFC 3339 text, or a string of integer epoch milliseconds.
pub fn parse_timestamp_text(text: &str) -> Option<i64> {
    if let Ok(millis) = text.parse::<i64>() {
        return Some(millis);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_timestamp(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => millis.to_string(),
    }
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn limits() -> EventLimits {
        EventLimits {
            max_properties: 3,
            max_property_size: 16,
            max_future_skew_ms: 300_000,
            max_age_ms: 90 * 86_400_000,
        }
    }

    const NOW: i64 = 1_759_492_800_000; // 2025-10-03T12:00:00Z

    fn parse(value: Value) -> Result<Event, EventError> {
        parse_event(value, &limits(), NOW, Uuid::now_v7)
    }

    #[test]
    fn accepts_the_spec_example() {
        let event = parse(json!({
            "event_type": "order.placed", "user_id": "user123", "session_id": "s",
            "properties": {"symbol": "BTCUSDT", "price": "50000.5"},
            "timestamp": "2025-10-03T12:00:00Z"
        }))
        .unwrap();
        assert_eq!(event.timestamp_ms, NOW);
        assert_eq!(event.number("price"), Some(50000.5));
        assert_eq!(event.string("symbol"), Some("BTCUSDT"));
    }

    #[test]
    fn epoch_millis_and_default_timestamp() {
        assert_eq!(
            parse(json!({"event_type": "a", "timestamp": NOW - 5}))
                .unwrap()
                .timestamp_ms,
            NOW - 5
        );
        assert_eq!(parse(json!({"event_type": "a"})).unwrap().timestamp_ms, NOW);
    }

    #[test]
    fn each_error_names_its_field() {
        let cases = [
            (json!([]), ""),
            (json!({}), "event_type"),
            (json!({"event_type": 5}), "event_type"),
            (json!({"event_type": ""}), "event_type"),
            (json!({"event_type": "x".repeat(129)}), "event_type"),
            (json!({"event_type": "a", "user_id": 5}), "user_id"),
            (json!({"event_type": "a", "user_id": "a\0b"}), "user_id"),
            (
                json!({"event_type": "a", "properties": {"symbol": "BTC\0"}}),
                "properties.symbol",
            ),
            (
                json!({"event_type": "a", "properties": {"deep": [{"x": "\0"}]}}),
                "properties.deep",
            ),
            (json!({"event_type": "a", "id": "nope"}), "id"),
            (json!({"event_type": "a", "properties": [1]}), "properties"),
            (
                json!({"event_type": "a", "properties": {"a":1,"b":2,"c":3,"d":4}}),
                "properties",
            ),
            (
                json!({"event_type": "a", "properties": {"a": "x".repeat(20)}}),
                "properties.a",
            ),
            (
                json!({"event_type": "a", "timestamp": "yesterday"}),
                "timestamp",
            ),
            (
                json!({"event_type": "a", "timestamp": NOW + 301_000}),
                "timestamp",
            ),
            (
                json!({"event_type": "a", "timestamp": NOW - 91 * 86_400_000}),
                "timestamp",
            ),
        ];
        for (body, field) in cases {
            let error = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(error.field(), field, "{body}");
        }
    }

    #[test]
    fn client_id_is_kept() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse(json!({"event_type": "a", "id": id.to_string()}))
                .unwrap()
                .id,
            id
        );
    }
}
