//! An event's `properties`: the JSON object as the stores keep it, and its
//! top-level scalars for the rollups and the trading projection.
//!
//! A `serde_json::Map` of the properties cost the service twice: a tree
//! node and a key string for every field while reading, then a
//! serialisation back to text before the insert, then freeing the tree
//! (BENCHMARKS.md, session 11). [`Properties`] writes the compact text while
//! the object is read, keeps each top-level string, number, boolean or null
//! beside it for lookups, and keeps of an array or object only what the
//! limits need (its size and whether it holds a NUL). The text is what
//! [`serde_json::to_string`] gives for the same object, except that the
//! keys stay in the order sent.
//!
//! As with a map, the last of repeated keys wins: an object that repeats a
//! key is rebuilt from a map of its text.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};

use super::event::{EventError, EventLimits};
use super::wire::scalars_are;

/// The properties of an event (see the module documentation).
#[derive(Debug, Clone)]
pub struct Properties {
    /// The object as compact JSON text.
    json: String,
    /// Each key once, in the order sent.
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Text,
    slot: Slot,
}

/// A key or string value: where it lies in the JSON text when it needed no
/// escape there (nearly always), else its own copy.
#[derive(Debug, Clone)]
enum Text {
    InJson(Range<usize>),
    Own(Box<str>),
}

#[derive(Debug, Clone)]
enum Slot {
    Null,
    Bool(bool),
    Number(Number),
    String(Text),
    /// An array or an object: its compact size in bytes, and whether a key
    /// or string inside it holds a NUL.
    Nested {
        size: usize,
        nul: bool,
    },
}

/// A top-level string, number, boolean or null of [`Properties`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(&'a Number),
    String(&'a str),
}

impl<'a> Scalar<'a> {
    /// `value` when it is a string, number, boolean or null.
    pub fn of(value: &'a Value) -> Option<Scalar<'a>> {
        Some(match value {
            Value::Null => Scalar::Null,
            Value::Bool(flag) => Scalar::Bool(*flag),
            Value::Number(number) => Scalar::Number(number),
            Value::String(text) => Scalar::String(text),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// A number, or a string that reads as one (as exchanges send them);
    /// `None` for anything else, and for non-finite values.
    pub fn number(self) -> Option<f64> {
        let number = match self {
            Scalar::Number(number) => number.as_f64()?,
            Scalar::String(text) => text.trim().parse::<f64>().ok()?,
            Scalar::Null | Scalar::Bool(_) => return None,
        };
        number.is_finite().then_some(number)
    }

    /// A non-empty string as it is, or a number as text.
    pub fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::String(text) if !text.is_empty() => Some(Cow::Borrowed(text)),
            Scalar::Number(number) => Some(Cow::Owned(number.to_string())),
            _ => None,
        }
    }

    /// `true`/`false`, `"true"`/`"false"`/`"yes"`/`"no"`/`"1"`/`"0"` (any
    /// case) or a number (non-zero is true).
    pub fn flag(self) -> Option<bool> {
        match self {
            Scalar::Bool(flag) => Some(flag),
            Scalar::String(text) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            },
            Scalar::Number(number) => number.as_f64().map(|number| number != 0.0),
            Scalar::Null => None,
        }
    }
}

impl Default for Properties {
    fn default() -> Self {
        Properties {
            json: "{}".to_owned(),
            entries: Vec::new(),
        }
    }
}

/// Two sets of properties are equal when they hold the same keys and
/// values, whatever the order of the keys.
impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len() && self.to_map() == other.to_map()
    }
}

impl From<Map<String, Value>> for Properties {
    fn from(map: Map<String, Value>) -> Self {
        let mut builder = Builder::default();
        for (key, value) in &map {
            builder.push_key(key);
            builder.push_value(value);
        }
        // A map holds each key once.
        builder.finish_unique()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

impl Properties {
    /// Reads stored properties text; an error when it is not a JSON object.
    pub fn from_json(text: &str) -> Result<Properties, serde_json::Error> {
        match serde_json::from_str::<PropertiesField>(text)? {
            PropertiesField::Object(properties) => Ok(properties),
            PropertiesField::Null | PropertiesField::NotAnObject => Err(de::Error::invalid_type(
                de::Unexpected::Other("a JSON value that is not an object"),
                &"a JSON object",
            )),
        }
    }

    /// The object as compact JSON text.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key` when it is a string, number, boolean or null;
    /// `None` when absent, an array or an object.
    pub fn get(&self, key: &str) -> Option<Scalar<'_>> {
        // Lengths first, and bytes: a lookup runs about nine times per
        // event, and most keys it passes differ in length.
        self.entries
            .iter()
            .find(|entry| match &entry.key {
                Text::InJson(range) => {
                    range.len() == key.len()
                        && self.json.as_bytes()[range.clone()] == *key.as_bytes()
                }
                Text::Own(own) => **own == *key,
            })
            .and_then(|entry| self.scalar(&entry.slot))
    }

    /// Every top-level string, number, boolean or null with its key.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, Scalar<'_>)> {
        self.entries.iter().filter_map(|entry| {
            self.scalar(&entry.slot)
                .map(|scalar| (self.text(&entry.key), scalar))
        })
    }

    /// The whole object as a map (read again from the text).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(&self.json).expect("the properties text is a JSON object")
    }

    /// Whether a key occurs twice (the builder writes every key it reads).
    fn repeats_a_key(&self) -> bool {
        let entries = &self.entries;
        // Each key's length, first and last byte pick one of 128 bits; keys
        // that pick different bits differ, so the comparisons below run only
        // when two keys might be equal (they were most of the builder's
        // finishing work).
        let mut seen = 0u128;
        let may_repeat = entries.iter().any(|entry| {
            let key = self.text(&entry.key).as_bytes();
            let (first, last) = (key.first(), key.last());
            let mix = key.len() * 31
                + usize::from(first.copied().unwrap_or(0)) * 7
                + usize::from(last.copied().unwrap_or(0));
            let bit = 1u128 << (mix % 128);
            let seen_before = seen & bit != 0;
            seen |= bit;
            seen_before
        });
        if !may_repeat {
            return false;
        }
        if entries.len() <= 16 {
            return entries.iter().enumerate().any(|(index, entry)| {
                let key = self.text(&entry.key);
                entries[..index]
                    .iter()
                    .any(|seen| self.text(&seen.key) == key)
            });
        }
        let mut keys: Vec<&str> = entries.iter().map(|entry| self.text(&entry.key)).collect();
        keys.sort_unstable();
        keys.windows(2).any(|pair| pair[0] == pair[1])
    }

    fn text<'a>(&'a self, text: &'a Text) -> &'a str {
        match text {
            Text::InJson(range) => &self.json[range.clone()],
            Text::Own(text) => text,
        }
    }

    fn scalar<'a>(&'a self, slot: &'a Slot) -> Option<Scalar<'a>> {
        Some(match slot {
            Slot::Null => Scalar::Null,
            Slot::Bool(flag) => Scalar::Bool(*flag),
            Slot::Number(number) => Scalar::Number(number),
            Slot::String(text) => Scalar::String(self.text(text)),
            Slot::Nested { .. } => return None,
        })
    }

    /// Checks the count of keys, the size of each value (a string's length
    /// plus its quotes, an array's or object's compact text; other scalars
    /// count nothing) and that no key or string holds a NUL. Of several
    /// offending keys, the first in key order is named.
    pub fn check(&self, limits: &EventLimits) -> Result<(), EventError> {
        if self.entries.len() > limits.max_properties {
            return Err(EventError::TooManyProperties {
                count: self.entries.len(),
                limit: limits.max_properties,
            });
        }
        let mut first: Option<(&str, EventError)> = None;
        for entry in &self.entries {
            let (size, nul) = match &entry.slot {
                // Text left in the JSON needed no escape: it holds no NUL.
                Slot::String(Text::InJson(range)) => (range.len() + 2, false),
                Slot::String(Text::Own(text)) => (text.len() + 2, text.contains('\0')),
                Slot::Nested { size, nul } => (*size, *nul),
                Slot::Null | Slot::Bool(_) | Slot::Number(_) => (0, false),
            };
            let key = self.text(&entry.key);
            let nul = nul || matches!(&entry.key, Text::Own(key) if key.contains('\0'));
            if !nul && size <= limits.max_property_size {
                continue;
            }
            if first.as_ref().is_some_and(|(first, _)| *first <= key) {
                continue;
            }
            let error = if nul {
                // Property strings become dimension values (symbol,
                // strategy id), stored as text, which cannot hold NUL.
                EventError::NulInProperty(key.replace('\0', "\\0"))
            } else {
                EventError::PropertyTooLarge {
                    key: key.to_owned(),
                    size,
                    limit: limits.max_property_size,
                }
            };
            first = Some((key, error));
        }
        first.map_or(Ok(()), |(_, error)| Err(error))
    }
}

/// Builds [`Properties`] one key and value at a time, writing the JSON text
/// as it goes.
struct Builder {
    json: String,
    entries: Vec<Entry>,
    /// The key pushed last, waiting for its value.
    key: Option<Text>,
}

impl Default for Builder {
    fn default() -> Self {
        let mut json = String::with_capacity(256);
        json.push('{');
        Builder {
            json,
            entries: Vec::with_capacity(8),
            key: None,
        }
    }
}

impl Builder {
    fn push_key(&mut self, key: &str) {
        if !self.entries.is_empty() {
            self.json.push(',');
        }
        self.key = Some(self.push_text(key));
        self.json.push(':');
    }

    /// Writes `text` as a JSON string; where it lies, when it needed no
    /// escape. Nearly every key and value needs none: those are copied as
    /// they are, without serde_json's escaping writer (a third of the
    /// builder's instructions; BENCHMARKS.md, session 17).
    fn push_text(&mut self, text: &str) -> Text {
        if text.bytes().any(needs_escape) {
            self.json.push_str(&to_json(text));
            return Text::Own(text.into());
        }
        self.json.push('"');
        let start = self.json.len();
        self.json.push_str(text);
        let end = self.json.len();
        self.json.push('"');
        Text::InJson(start..end)
    }

    fn push_slot(&mut self, slot: Slot) {
        let key = self.key.take().expect("a value follows its key");
        self.entries.push(Entry { key, slot });
    }

    /// Writes a number given with its JSON text.
    fn push_number(&mut self, text: &str, number: Number) {
        self.json.push_str(text);
        self.push_slot(Slot::Number(number));
    }

    fn push_value(&mut self, value: &Value) {
        let slot = match value {
            Value::String(text) => Slot::String(self.push_text(text)),
            Value::Number(number) => {
                write!(self.json, "{number}").expect("writing to a String cannot fail");
                Slot::Number(number.clone())
            }
            Value::Null => {
                self.json.push_str("null");
                Slot::Null
            }
            Value::Bool(flag) => {
                self.json.push_str(if *flag { "true" } else { "false" });
                Slot::Bool(*flag)
            }
            Value::Array(_) | Value::Object(_) => {
                let text = to_json(value);
                self.json.push_str(&text);
                Slot::Nested {
                    size: text.len(),
                    nul: contains_nul(value),
                }
            }
        };
        self.push_slot(slot);
    }

    /// The properties, the last of repeated keys winning.
    fn finish(mut self) -> Properties {
        self.json.push('}');
        let properties = self.into_properties();
        if !properties.repeats_a_key() {
            return properties;
        }
        Properties::from(properties.to_map())
    }

    /// The properties, when no key was pushed twice.
    fn finish_unique(mut self) -> Properties {
        self.json.push('}');
        self.into_properties()
    }

    fn into_properties(self) -> Properties {
        Properties {
            json: self.json,
            entries: self.entries,
        }
    }
}

/// Whether serde_json escapes this byte in a string: a control character,
/// a quote or a backslash (nothing else; UTF-8 is written as it is).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// `value` as compact JSON text.
fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Strings and JSON values (string keys only) always serialise.
    serde_json::to_string(value).expect("a JSON value always serialises")
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(object) => object
            .iter()
            .any(|(key, item)| key.contains('\0') || contains_nul(item)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The `properties` field of a wire event as read: an object, `null`, or
/// any other JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertiesField {
    Object(Properties),
    Null,
    NotAnObject,
}

impl From<Value> for PropertiesField {
    fn from(value: Value) -> Self {
        match value {
            Value::Object(map) => PropertiesField::Object(Properties::from(map)),
            Value::Null => PropertiesField::Null,
            _ => PropertiesField::NotAnObject,
        }
    }
}

impl<'de> Deserialize<'de> for PropertiesField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PropertiesVisitor)
    }
}

/// Reads the `properties` value: an object into a [`Builder`], key by key
/// and value by value, without a map.
struct PropertiesVisitor;

impl<'de> Visitor<'de> for PropertiesVisitor {
    type Value = PropertiesField;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PropertiesField, A::Error> {
        let mut builder = Builder::default();
        while map.next_key_seed(KeySeed(&mut builder))?.is_some() {
            map.next_value_seed(ValueSeed(&mut builder))?;
        }
        Ok(PropertiesField::Object(builder.finish()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<PropertiesField, A::Error> {
        de::IgnoredAny.visit_seq(seq)?;
        Ok(PropertiesField::NotAnObject)
    }

    scalars_are!(PropertiesField::NotAnObject, null: PropertiesField::Null);
}

/// Reads a key of the properties into the builder.
struct KeySeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        self.0.push_key(key);
        Ok(())
    }
}

/// Reads a value of the properties into the builder: scalars straight in,
/// arrays and objects through a `Value`.
struct ValueSeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push_value(&Value::Null);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<(), E> {
        self.0.push_value(&Value::Bool(flag));
        Ok(())
    }

    // Numbers are written by the writers serde_json's own `Number` text
    // uses (itoa, zmij), without a formatter between.

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<(), E> {
        self.0
            .push_number(itoa::Buffer::new().format(number), number.into());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<(), E> {
        self.0
            .push_number(itoa::Buffer::new().format(number), number.into());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<(), E> {
        // As a `Value` reads it: JSON text cannot spell a non-finite number.
        match Number::from_f64(number) {
            Some(json) => self
                .0
                .push_number(zmij::Buffer::new().format_finite(number), json),
            None => self.0.push_value(&Value::Null),
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        let slot = Slot::String(self.0.push_text(text));
        self.0.push_slot(slot);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = Value::deserialize(SeqAccessDeserializer::new(seq))?;
        self.0.push_value(&value);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let value = Value::deserialize(MapAccessDeserializer::new(map))?;
        self.0.push_value(&value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(text: &str) -> PropertiesField {
        serde_json::from_str(text).unwrap()
    }

    fn object(text: &str) -> Properties {
        match read(text) {
            PropertiesField::Object(properties) => properties,
            other => panic!("{text}: {other:?}"),
        }
    }

    /// Whatever was sent, the text is a map's serialisation but for the
    /// order of the keys, and lookups find what the map holds.
    #[test]
    fn reading_properties_equals_reading_a_map() {
        for text in [
            r#"{}"#,
            r#"{"symbol":"BTCUSDT","price":"50000.5","quantity":0.25,"is_maker":true,"x":null}"#,
            r#"{ "b" : 1 , "a" : [1, {"c": "d"}], "e\u0041": {"f": []} }"#,
            r#"{"price":1,"price":2}"#,
            r#"{"a":{"x":1},"b":2,"a":"last"}"#,
            r#"{"big":12345678901234567890,"neg":-7,"exp":1e3,"esc":"q\"\\\/\n\u00e9"}"#,
            r#"{"tab\t":"a\tb\u007f\u001f","uni":"\u00e9€","f":-0.0,"g":1.5e-7,"h":123.456}"#,
            r#"{"strategy_id":1,"position_id":2,"a":3,"b":4,"c":5,"d":6,"e":7,"a":8}"#,
        ] {
            let properties = object(text);
            let map: Map<String, Value> = serde_json::from_str(text).unwrap();
            assert_eq!(properties.to_map(), map, "{text}");
            assert_eq!(properties.len(), map.len(), "{text}");
            let mut sorted: Map<String, Value> =
                serde_json::from_str(properties.as_json()).unwrap();
            sorted.sort_keys();
            assert_eq!(
                serde_json::to_string(&sorted).unwrap(),
                serde_json::to_string(&map).unwrap(),
                "{text}"
            );
            assert!(!properties.as_json().contains(' '), "{text}");
            for (key, value) in &map {
                assert_eq!(properties.get(key), Scalar::of(value), "{text} {key}");
            }
            assert_eq!(
                properties.scalars().count(),
                map.values()
                    .filter(|v| !(v.is_array() || v.is_object()))
                    .count()
            );
            assert_eq!(Properties::from(map.clone()), properties, "{text}");
            assert_eq!(
                Properties::from_json(properties.as_json()).unwrap(),
                properties
            );
        }
        assert_eq!(
            object(r#"{"price":1,"price":2}"#).get("price"),
            Some(Scalar::Number(&2.into()))
        );
    }

    #[test]
    fn anything_but_an_object_is_told_apart() {
        assert_eq!(read("null"), PropertiesField::Null);
        for text in ["[1,{\"a\":2}]", "1", "-1", "1.5", "\"x\"", "true"] {
            assert_eq!(read(text), PropertiesField::NotAnObject, "{text}");
            assert!(Properties::from_json(text).is_err(), "{text}");
        }
        for value in [json!(null), json!([1]), json!("x"), json!({"a": 1})] {
            assert_eq!(
                PropertiesField::from(value.clone()),
                read(&value.to_string()),
                "{value}"
            );
        }
    }

    fn limits() -> EventLimits {
        EventLimits {
            max_properties: 3,
            max_property_size: 16,
            max_future_skew_ms: 0,
            max_age_ms: 0,
        }
    }

    #[test]
    fn limits_count_keys_and_size_values_as_a_map_would() {
        let check = |text: &str| object(text).check(&limits());
        assert_eq!(check(r#"{"a":1,"b":"x","c":[1,2]}"#), Ok(()));
        // A repeated key counts once.
        assert_eq!(check(r#"{"a":1,"a":2,"b":3,"c":4}"#), Ok(()));
        assert_eq!(
            check(r#"{"a":1,"b":2,"c":3,"d":4}"#),
            Err(EventError::TooManyProperties { count: 4, limit: 3 })
        );
        // 14 characters and two quotes fit; one more does not.
        assert_eq!(check(r#"{"s":"12345678901234"}"#), Ok(()));
        assert_eq!(
            check(r#"{"s":"123456789012345"}"#),
            Err(EventError::PropertyTooLarge {
                key: "s".into(),
                size: 17,
                limit: 16
            })
        );
        // Nested values count their compact text, not the whitespace sent.
        assert_eq!(check(r#"{"n": [ 1 , 2 , 3 , 4 , 5 , 6 , 7 ]}"#), Ok(()));
        assert_eq!(
            check(r#"{"n":[1,2,3,4,5,6,7,8]}"#),
            Err(EventError::PropertyTooLarge {
                key: "n".into(),
                size: 17,
                limit: 16
            })
        );
        // Of several offenders, the first key in order is named.
        assert_eq!(
            check(r#"{"z":"\u0000","b":[{"x":"\u0000"}]}"#),
            Err(EventError::NulInProperty("b".into()))
        );
        assert_eq!(
            check(r#"{"k\u0000":1}"#),
            Err(EventError::NulInProperty("k\\0".into()))
        );
    }
}
