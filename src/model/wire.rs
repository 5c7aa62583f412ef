//! The wire form of an event, read straight from JSON.
//!
//! Reading a client's event into a `serde_json::Value` first builds a map
//! of the whole object (a key string and a tree slot for every field), only
//! for [`parse_event`](super::event::parse_event) to take the fields out of
//! it again. [`WireEvent`] reads the known top-level fields into slots of
//! their own and skips the others, which costs about 40 % less per event
//! (BENCHMARKS.md, session 9). Each field is still a JSON value: its checks
//! and their messages are `parse_event`'s, however the event was read.
//!
//! As with a map, the last of repeated keys wins, and a JSON value that is
//! not an object is an event refused on its own (`NotAnObject`), not a
//! malformed body.

use std::fmt;

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;

use uuid::Uuid;

use super::event::parse_timestamp_text;
use super::properties::PropertiesField;

/// Reads JSON from bytes. Checking the whole text for UTF-8 once and then
/// reading it as a `str` costs a fraction of serde_json's reading from bytes,
/// which checks every string it reads on its own (a tenth of the time spent
/// reading a batch; BENCHMARKS.md, session 17). Bytes that are not UTF-8 are
/// read as bytes, so the error is serde_json's own, at its place (or the
/// bytes read, where they lie in a value that is skipped).
pub fn read_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// One event as sent: its known top-level fields, or the news that it is not
/// a JSON object.
// Unboxed: a batch reads its events into one Vec of these, and a box per
// event would cost an allocation where the refused kind saves only space.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WireEvent {
    Object(WireFields),
    /// Any JSON value but an object.
    NotAnObject,
}

/// The top-level fields of a wire event that the service reads; `None` when
/// absent (a JSON `null` is kept as `Some(Parsed::Null)`). The properties are
/// read into their stored form at once (see [`Properties`]), the other
/// fields into what they say (see [`Parsed`]): a string field into its text,
/// any other JSON value in it into `Invalid`.
///
/// [`Properties`]: super::properties::Properties
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireFields {
    pub id: Option<Parsed<Uuid>>,
    pub event_type: Option<Parsed<String>>,
    pub user_id: Option<Parsed<String>>,
    pub session_id: Option<Parsed<String>>,
    /// Epoch milliseconds.
    pub timestamp: Option<Parsed<i64>>,
    pub properties: Option<PropertiesField>,
}

/// A top-level field read straight into what it says, without keeping the
/// text: `Null` for a JSON null, `Invalid` for a value that does not read
/// as a `T`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Parsed<T> {
    Null,
    Valid(T),
    Invalid,
}

/// What a JSON scalar reads as.
pub trait FromScalar: Sized {
    fn from_text(text: &str) -> Option<Self>;
    fn from_integer(number: i64) -> Option<Self>;
}

/// A text field (`event_type`, `user_id`, `session_id`): a JSON string only.
impl FromScalar for String {
    fn from_text(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }

    fn from_integer(_: i64) -> Option<Self> {
        None
    }
}

/// An event id: a UUID in text.
impl FromScalar for Uuid {
    fn from_text(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok()
    }

    fn from_integer(_: i64) -> Option<Self> {
        None
    }
}

/// A timestamp in epoch milliseconds: RFC 3339 text, integer milliseconds,
/// or integer milliseconds in text.
impl FromScalar for i64 {
    fn from_text(text: &str) -> Option<Self> {
        parse_timestamp_text(text)
    }

    fn from_integer(number: i64) -> Option<Self> {
        Some(number)
    }
}

impl<T: FromScalar> Parsed<T> {
    fn of(read: Option<T>) -> Self {
        read.map_or(Parsed::Invalid, Parsed::Valid)
    }
}

/// The same reading as from JSON text (a `Value` is a deserializer too).
impl<T: FromScalar> From<Value> for Parsed<T> {
    fn from(value: Value) -> Self {
        // The visitor accepts every JSON value, so this cannot fail.
        Parsed::deserialize(value).unwrap_or(Parsed::Invalid)
    }
}

impl<'de, T: FromScalar> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParsedVisitor(std::marker::PhantomData))
    }
}

struct ParsedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: FromScalar> Visitor<'de> for ParsedVisitor<T> {
    type Value = Parsed<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Parsed<T>, E> {
        Ok(Parsed::Null)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Parsed<T>, E> {
        Ok(Parsed::of(T::from_text(text)))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Parsed<T>, E> {
        Ok(Parsed::of(T::from_integer(number)))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Parsed<T>, E> {
        Ok(Parsed::of(
            i64::try_from(number).ok().and_then(T::from_integer),
        ))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Parsed<T>, E> {
        Ok(Parsed::Invalid)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Parsed<T>, E> {
        Ok(Parsed::Invalid)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parsed<T>, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Parsed::Invalid)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parsed<T>, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Parsed::Invalid)
    }
}

impl From<Value> for WireEvent {
    fn from(value: Value) -> Self {
        match value {
            Value::Object(mut object) => WireEvent::Object(WireFields {
                id: object.remove("id").map(Parsed::from),
                event_type: object.remove("event_type").map(Parsed::from),
                user_id: object.remove("user_id").map(Parsed::from),
                session_id: object.remove("session_id").map(Parsed::from),
                timestamp: object.remove("timestamp").map(Parsed::from),
                properties: object.remove("properties").map(PropertiesField::from),
            }),
            _ => WireEvent::NotAnObject,
        }
    }
}

/// A top-level key of a wire event.
enum Field {
    Id,
    EventType,
    UserId,
    SessionId,
    Timestamp,
    Properties,
    Other,
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "id" => Field::Id,
                    "event_type" => Field::EventType,
                    "user_id" => Field::UserId,
                    "session_id" => Field::SessionId,
                    "timestamp" => Field::Timestamp,
                    "properties" => Field::Properties,
                    _ => Field::Other,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The `visit_*` methods of a visitor for every JSON scalar (boolean,
/// number, string, null), each giving `$outcome`; with `null: $null`, a
/// null gives `$null` instead.
macro_rules! scalars_are {
    ($outcome:expr) => {
        $crate::model::wire::scalars_are!($outcome, null: $outcome);
    };
    ($outcome:expr, null: $null:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($outcome)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($outcome)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($outcome)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($outcome)
        }

        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($outcome)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($null)
        }
    };
}
pub(crate) use scalars_are;

/// Accepts any JSON value; objects become [`WireEvent::Object`], the rest
/// [`WireEvent::NotAnObject`] (after reading it through).
struct WireEventVisitor;

impl<'de> Visitor<'de> for WireEventVisitor {
    type Value = WireEvent;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireEvent, A::Error> {
        let mut fields = WireFields::default();
        while let Some(field) = map.next_key::<Field>()? {
            let slot = match field {
                Field::EventType => &mut fields.event_type,
                Field::UserId => &mut fields.user_id,
                Field::SessionId => &mut fields.session_id,
                Field::Id => {
                    fields.id = Some(map.next_value()?);
                    continue;
                }
                Field::Timestamp => {
                    fields.timestamp = Some(map.next_value()?);
                    continue;
                }
                Field::Properties => {
                    fields.properties = Some(map.next_value()?);
                    continue;
                }
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(WireEvent::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WireEvent, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(WireEvent::NotAnObject)
    }

    scalars_are!(WireEvent::NotAnObject);
}

impl<'de> Deserialize<'de> for WireEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WireEventVisitor)
    }
}

/// Takes the events of a batch body as [`read_batch`] reads them.
pub trait BatchSink {
    /// The next event of the batch.
    fn event(&mut self, event: WireEvent);
    /// Forget the events so far: a later `events` key replaces them (the
    /// last of repeated keys wins, as everywhere).
    fn restart(&mut self);
}

/// Reads a JSON batch body, an array of events or an object whose `events`
/// is one (its other keys are ignored), and hands each event to `sink` as
/// soon as it is read: checked while its text and fields are still in the
/// cache, and without a vector of every event read first. Returns `false`
/// when the body is neither (the sink may have had events from an `events`
/// key that a later one replaced). Bytes are read as by [`read_json`]; on
/// an error the sink's events are to be dropped.
pub fn read_batch<S: BatchSink>(bytes: &[u8], sink: &mut S) -> serde_json::Result<bool> {
    let seed = BatchSeed {
        sink,
        events_value: false,
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => read_to_end(&mut serde_json::Deserializer::from_str(text), seed),
        Err(_) => read_to_end(&mut serde_json::Deserializer::from_slice(bytes), seed),
    }
}

fn read_to_end<'de, R: serde_json::de::Read<'de>, T: DeserializeSeed<'de>>(
    deserializer: &mut serde_json::Deserializer<R>,
    seed: T,
) -> serde_json::Result<T::Value> {
    let value = seed.deserialize(&mut *deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Reads a batch body, or (`events_value`) the value of its `events` key,
/// where only an array counts; says whether it was a batch.
struct BatchSeed<'s, S> {
    sink: &'s mut S,
    events_value: bool,
}

impl<'de, S: BatchSink> DeserializeSeed<'de> for BatchSeed<'_, S> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, S: BatchSink> Visitor<'de> for BatchSeed<'_, S> {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(event) = seq.next_element::<WireEvent>()? {
            self.sink.event(event);
        }
        Ok(true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        if self.events_value {
            IgnoredAny.visit_map(map)?;
            return Ok(false);
        }
        let mut batch = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "events" {
                self.sink.restart();
                batch = map.next_value_seed(BatchSeed {
                    sink: &mut *self.sink,
                    events_value: true,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(batch)
    }

    scalars_are!(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read from text, an event is what the same text read as a `Value`
    /// gives: the same fields, the last of repeated keys, nulls kept.
    #[test]
    fn reading_an_event_equals_reading_its_value() {
        for text in [
            r#"{"event_type":"a","properties":{"x":1},"extra":[1,{"y":2}],"id":null}"#,
            r#"{"event_type":"a","event_type":"b","user_id":"u","session_id":7}"#,
            r#"{"timestamp":"2026-01-01T00:00:00Z","properties":[],"id":"x"}"#,
            r#"{"event\u005ftype":"escaped key"}"#,
            r#"{"id":"0192f3a4-5b6c-7d8e-9f00-112233445566","timestamp":1759492800000}"#,
            r#"{"id":"0192F3A4-5B6C-7D8E-9F00-112233445566","timestamp":"1759492800000"}"#,
            r#"{"id":5,"timestamp":-5}"#,
            r#"{"id":{"a":1},"timestamp":18446744073709551615}"#,
            r#"{"id":[1],"timestamp":1.5}"#,
            r#"{"id":true,"timestamp":"2025-10-03T12:00:00.123+02:00"}"#,
            r#"{"timestamp":"yesterday","timestamp":null}"#,
            r#"{"timestamp":[1],"id":"x"}"#,
            r#"{"timestamp":{"t":1}}"#,
            r#"{}"#,
            r#"[1,2,{"event_type":"a"}]"#,
            r#""event""#,
            r#"12"#,
            r#"-1.5"#,
            r#"true"#,
            r#"null"#,
        ] {
            let direct: WireEvent = serde_json::from_str(text).unwrap();
            let via_value = WireEvent::from(serde_json::from_str::<Value>(text).unwrap());
            assert_eq!(direct, via_value, "{text}");
        }
        let read: WireEvent =
            serde_json::from_str(r#"{"event_type":"a","event_type":"b"}"#).unwrap();
        let WireEvent::Object(fields) = read else {
            panic!("an object")
        };
        assert_eq!(fields.event_type, Some(Parsed::Valid("b".to_owned())));
    }

    /// The id and the timestamp are read into what they say.
    #[test]
    fn ids_and_timestamps_are_read_into_their_values() {
        let read = |text: &str| match serde_json::from_str::<WireEvent>(text).unwrap() {
            WireEvent::Object(fields) => (fields.id, fields.timestamp),
            WireEvent::NotAnObject => panic!("{text}"),
        };
        let id = Uuid::parse_str("0192f3a4-5b6c-7d8e-9f00-112233445566").unwrap();
        assert_eq!(
            read(r#"{"id":"0192f3a4-5b6c-7d8e-9f00-112233445566","timestamp":1759492800000}"#),
            (
                Some(Parsed::Valid(id)),
                Some(Parsed::Valid(1_759_492_800_000))
            )
        );
        assert_eq!(
            read(r#"{"timestamp":"2025-10-03T14:00:00.5+02:00","id":null}"#),
            (Some(Parsed::Null), Some(Parsed::Valid(1_759_492_800_500)))
        );
        assert_eq!(
            read(r#"{"timestamp":"-7"}"#),
            (None, Some(Parsed::Valid(-7)))
        );
        for text in [
            r#"{"id":"nope","timestamp":1.5}"#,
            r#"{"id":7,"timestamp":18446744073709551615}"#,
            r#"{"id":[],"timestamp":"tomorrow"}"#,
            r#"{"id":{},"timestamp":true}"#,
        ] {
            assert_eq!(
                read(text),
                (Some(Parsed::Invalid), Some(Parsed::Invalid)),
                "{text}"
            );
        }
    }

    /// Reading checked UTF-8 as text gives what reading the bytes gives:
    /// the same events, and for bytes that are not UTF-8 the same outcome
    /// (an error at the same place, or the event when the bad bytes lie in
    /// a value that is skipped).
    #[test]
    fn reading_text_equals_reading_bytes() {
        let cases: [&[u8]; 6] = [
            br#"{"event_type":"a","properties":{"s":"\u00e9\n","n":1.25}}"#,
            "{\"event_type\":\"caf\u{e9}\",\"user_id\":\"\u{1F600}\"}".as_bytes(),
            b"{\"event_type\":\"a\xff\"}",
            b"{\"event_type\":\"a\",\"skipped\":\"\xc3\x28\"}",
            b"{\"event_type\":\"a\",\"properties\":{\"k\xe2\x82\":1}}",
            br#"{"event_type":"a""#,
        ];
        for bytes in cases {
            let text: Result<WireEvent, _> = read_json(bytes);
            let slice: Result<WireEvent, _> = serde_json::from_slice(bytes);
            match (text, slice) {
                (Ok(text), Ok(slice)) => assert_eq!(text, slice, "{bytes:?}"),
                (Err(text), Err(slice)) => {
                    assert_eq!(text.to_string(), slice.to_string(), "{bytes:?}")
                }
                (text, slice) => panic!("{bytes:?}: {text:?} vs {slice:?}"),
            }
        }
        assert!(read_json::<WireEvent>(b"{\"event_type\":\"a\xff\"}").is_err());
        assert!(read_json::<WireEvent>(b"{\"event_type\":\"a\",\"x\":\"\xff\"}").is_ok());
    }

    #[test]
    fn malformed_json_is_still_an_error() {
        for text in [r#"{"event_type":"a""#, r#"{"a":}"#, r#"[1,"#, ""] {
            assert!(serde_json::from_str::<WireEvent>(text).is_err(), "{text}");
            assert!(
                read_batch(text.as_bytes(), &mut Vec::new()).is_err(),
                "{text}"
            );
        }
    }

    impl BatchSink for Vec<WireEvent> {
        fn event(&mut self, event: WireEvent) {
            self.push(event);
        }

        fn restart(&mut self) {
            self.clear();
        }
    }

    #[test]
    fn a_batch_is_an_array_or_an_object_with_an_events_array() {
        let events = |text: &str| {
            let mut events = Vec::new();
            read_batch(text.as_bytes(), &mut events)
                .unwrap()
                .then_some(events.len())
        };
        assert_eq!(events(r#"[{"event_type":"a"},3,{}]"#), Some(3));
        assert_eq!(events(r#"[]"#), Some(0));
        assert_eq!(
            events(r#"{"other":{"events":[1]},"events":[{},{}]}"#),
            Some(2)
        );
        assert_eq!(events(r#"{"events":[{}],"events":[]}"#), Some(0));
        assert_eq!(events(r#"{"events":{"a":[1]}}"#), None);
        assert_eq!(events(r#"{"events":[{}],"events":5}"#), None);
        assert_eq!(events(r#"{"other":[1]}"#), None);
        assert_eq!(events(r#""events""#), None);
        assert_eq!(events(r#"7"#), None);
        assert_eq!(events(r#"null"#), None);
    }
}
