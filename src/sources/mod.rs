//! Stream sources: Kafka and NATS JetStream feed the same pipeline as HTTP.
//!
//! Every source does the same four things, shared here:
//! - give each message an id that a redelivery reproduces (the event's own
//!   `id`, else the broker's message id, else [`position_id`]: where the
//!   message sits in the broker and when the broker stored it), so the store
//!   deduplicates redeliveries;
//! - decode the payload into events with the validator every source uses,
//!   or into a [`DeadLetter`] naming what is wrong;
//! - store both durably ([`SourceContext::store`]) before the source
//!   acknowledges anything to its broker;
//! - count what happened in the source's [`SourceStats`].

pub mod dead_letters;
pub mod kafka;
pub mod nats;
pub mod order_updates;

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::model::Event;
use crate::model::event::now_ms;
use crate::model::wire::{WireEvent, read_json};
use crate::pipeline::validate::EventValidator;
use crate::pipeline::{Pipeline, Refused, SubmitError};
use crate::store::{DeadLetter, Store};
use crate::telemetry::sources::SourceStats;

/// Namespace of the UUIDv5 ids derived for messages that carry none.
pub const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b7a_55d1_2f0e_4b8e_9a63_25b2_5a1c_0e01);

/// A UUIDv5 of `name` (a broker's non-UUID message id, an order update's
/// order and kind): the same whenever the name is.
pub fn derived_id(name: &str) -> Uuid {
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, name.as_bytes())
}

/// The id of a message that carries none: a function of its `position` in
/// the broker (`topic/partition/offset`, `stream/sequence`) and the time the
/// broker stored with it (`stored_ms`, epoch ms), both the same on every
/// delivery of the message.
///
/// It is a UUIDv8 laid out like a UUIDv7: the stored time in the first 48
/// bits, then 74 bits of the SHA-1 of the position (what a UUIDv5 of it
/// holds). Ids of messages stored close in time sit close in the store's id
/// index, as HTTP's UUIDv7 ids do; a UUIDv5 alone would land each event on
/// a random page of it, and the store's commit ran at 55 % of its UUIDv7
/// rate with those (BENCHMARKS.md, session 14). A topic deleted and created
/// again reuses offsets but not times, so its new messages are not taken
/// for the old ones. Without a usable time (a broker that stores none) the
/// id is the UUIDv5 of the position.
pub fn position_id(position: &str, stored_ms: Option<i64>) -> Uuid {
    let hash = derived_id(position);
    let Some(millis) = stored_ms
        .and_then(|millis| u64::try_from(millis).ok())
        .filter(|millis| (1..1 << 48).contains(millis))
    else {
        return hash;
    };
    let hash = hash.as_bytes();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    // The hash bytes a UUIDv5 keeps whole (its 6th and 8th carry its
    // version and variant); version 8 and the variant overwrite 6 bits.
    bytes[6..12].copy_from_slice(&hash[..6]);
    bytes[12..16].copy_from_slice(&hash[9..13]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// [`position_id`] of the position `<name>/<number>[/<number>...]`, written
/// on the stack: it is asked for once per message without an id, and a
/// formatted `String` per message was about 2 % of the Kafka source's CPU.
pub fn position_id_of(
    name: &str,
    numbers: &[&dyn std::fmt::Display],
    stored_ms: Option<i64>,
) -> Uuid {
    use std::io::Write as _;
    const ROOM: usize = 320;
    let mut buffer = [0u8; ROOM];
    let mut rest: &mut [u8] = &mut buffer;
    let written = rest.write_all(name.as_bytes()).and_then(|()| {
        numbers
            .iter()
            .try_for_each(|number| write!(rest, "/{number}"))
    });
    let len = ROOM - rest.len();
    match (written, std::str::from_utf8(&buffer[..len])) {
        (Ok(()), Ok(position)) => position_id(position, stored_ms),
        // Longer than the room (a name of hundreds of bytes).
        _ => {
            use std::fmt::Write as _;
            let mut position = name.to_string();
            for number in numbers {
                write!(position, "/{number}").expect("a String takes every write");
            }
            position_id(&position, stored_ms)
        }
    }
}

/// NATS subjects whose messages are order updates of the order-execution
/// service rather than events (see [`order_updates`]).
pub const ORDER_UPDATES_PREFIX: &str = "orders.updates.";

/// What a message's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// An event in the wire form of the SPEC.
    Event,
    /// An order update of the order-execution service.
    OrderUpdate,
}

impl PayloadKind {
    /// The kind of the messages published on `subject`.
    pub fn of_subject(subject: &str) -> PayloadKind {
        if subject.starts_with(ORDER_UPDATES_PREFIX) {
            PayloadKind::OrderUpdate
        } else {
            PayloadKind::Event
        }
    }
}

/// One message as a source received it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Kafka topic or NATS subject.
    pub topic: &'a str,
    /// Kafka partition; -1 for NATS.
    pub partition: i32,
    /// Kafka offset or JetStream stream sequence.
    pub offset: i64,
    pub key: Option<&'a str>,
    pub payload: &'a [u8],
    /// The id of an event that carries none.
    pub default_id: DefaultId<'a>,
    pub kind: PayloadKind,
}

/// The id of an event of a message that carries none, computed only when
/// asked for: most events carry their own `id`, and deriving an id per
/// message (a formatted position and a SHA-1) is wasted work on them.
#[derive(Clone, Copy)]
pub struct DefaultId<'a>(&'a (dyn Fn() -> Uuid + Sync));

impl<'a> DefaultId<'a> {
    /// `derive` is called each time the id is asked for; it must return the
    /// same id every time.
    pub fn new(derive: &'a (dyn Fn() -> Uuid + Sync)) -> Self {
        DefaultId(derive)
    }

    /// The id.
    pub fn get(&self) -> Uuid {
        (self.0)()
    }
}

impl std::fmt::Debug for DefaultId<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_tuple("DefaultId")
            .field(&self.get())
            .finish()
    }
}

/// What a message became.
#[derive(Debug)]
pub enum Decoded {
    /// Events to store; empty when the message counts for nothing (an
    /// order update that changes no figure).
    Events(Vec<Event>),
    /// The message cannot become events.
    Dead(DeadLetter),
}

/// What every source shares.
#[derive(Clone)]
pub struct SourceContext {
    pub pipeline: Pipeline,
    pub validator: Arc<EventValidator>,
    pub store: Arc<dyn Store>,
    pub stats: Arc<SourceStats>,
    /// Bytes of a payload kept in a dead letter.
    pub dead_letter_payload_bytes: usize,
}

impl SourceContext {
    /// Decodes one message into events or a dead letter.
    pub fn decode(&self, message: &Message<'_>) -> Decoded {
        match decode_events(&self.validator, message) {
            Ok(events) => Decoded::Events(events),
            Err(error) => Decoded::Dead(dead_letter(
                self.stats.name(),
                message,
                error,
                self.dead_letter_payload_bytes,
            )),
        }
    }

    /// Stores `events` through the pipeline and `dead` in the dead-letter
    /// store. `Ok` means both are durable and the messages may be
    /// acknowledged; on `Err` nothing may be (some of it may be stored: a
    /// redelivery is deduplicated).
    pub async fn store(
        &self,
        events: Vec<Event>,
        dead: Vec<DeadLetter>,
    ) -> Result<Stored, SubmitError> {
        match self.try_store(events, dead).await {
            Ok(stored) => Ok(stored),
            Err(NotStored::Full { .. }) => Err(SubmitError::Overloaded),
            Err(NotStored::Failed(error)) => Err(error),
        }
    }

    /// Like [`SourceContext::store`], but when the ingest queue is full the
    /// events and dead letters come back untouched, to offer again once
    /// there is room (no copy of every batch kept for that case).
    pub async fn try_store(
        &self,
        events: Vec<Event>,
        dead: Vec<DeadLetter>,
    ) -> Result<Stored, NotStored> {
        let inserted = match self.pipeline.try_submit(events).await {
            Ok(inserted) => inserted,
            Err(Refused::Full(events)) => return Err(NotStored::Full { events, dead }),
            Err(Refused::Failed(error)) => return Err(NotStored::Failed(error)),
        };
        let committed = inserted.iter().filter(|new| **new).count();
        let duplicates = inserted.len() - committed;
        let dead_lettered = self
            .store
            .insert_dead_letters(&dead)
            .await
            .map_err(|error| NotStored::Failed(SubmitError::CommitFailed(error.to_string())))?;
        self.stats.record_committed(committed, duplicates);
        self.stats.record_dead_lettered(dead_lettered as usize);
        Ok(Stored {
            committed,
            duplicates,
            dead_lettered: dead_lettered as usize,
        })
    }
}

/// Why [`SourceContext::try_store`] stored nothing (or not all).
#[derive(Debug)]
pub enum NotStored {
    /// The ingest queue is full; nothing was stored: offer these again.
    Full {
        events: Vec<Event>,
        dead: Vec<DeadLetter>,
    },
    /// The commit failed (or the pipeline stopped): nothing may be
    /// acknowledged; a redelivery is deduplicated.
    Failed(SubmitError),
}

/// What [`SourceContext::store`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    pub committed: usize,
    pub duplicates: usize,
    /// Dead letters newly stored (a redelivered bad message adds none).
    pub dead_lettered: usize,
}

/// Runs `work` (decoding a batch: milliseconds of CPU) on the blocking
/// pool: on an async worker it would hold up the tasks queued there, the
/// pipeline's committer among them. A panic in `work` goes on here, as it
/// would inline; `None`: the runtime is shutting down.
pub async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Some(done),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => None,
    }
}

/// The events of one message, validated; `Err` names what is wrong.
pub fn decode_events(
    validator: &EventValidator,
    message: &Message<'_>,
) -> Result<Vec<Event>, String> {
    let not_json = |error: serde_json::Error| format!("payload is not valid JSON: {error}");
    let now = now_ms();
    match message.kind {
        PayloadKind::Event => {
            let wire: WireEvent = read_json(message.payload).map_err(not_json)?;
            let event = validator
                .validate(wire, now, || message.default_id.get())
                .map_err(|rejection| rejection.to_string())?;
            Ok(vec![event])
        }
        PayloadKind::OrderUpdate => {
            let value: Value = read_json(message.payload).map_err(not_json)?;
            let wire = order_updates::to_wire_events(&value)?;
            wire.into_iter()
                .map(|event| {
                    validator
                        .validate(event, now, || message.default_id.get())
                        .map_err(|rejection| format!("mapped order event: {rejection}"))
                })
                .collect()
        }
    }
}

/// A dead letter for `message`, its payload cut to `max_payload` bytes.
pub fn dead_letter(
    source: &str,
    message: &Message<'_>,
    error: String,
    max_payload: usize,
) -> DeadLetter {
    let truncated = message.payload.len() > max_payload;
    DeadLetter {
        source: source.to_string(),
        topic: message.topic.to_string(),
        partition: message.partition,
        offset: message.offset,
        key: message.key.map(str::to_string),
        payload: message.payload[..message.payload.len().min(max_payload)].to_vec(),
        payload_truncated: truncated,
        event_id: message.default_id.get(),
        error,
        received_at_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventLimits;

    fn validator() -> EventValidator {
        EventValidator::new(EventLimits {
            max_properties: 100,
            max_property_size: 10_000,
            max_future_skew_ms: 300_000,
            max_age_ms: 90 * 86_400_000,
        })
    }

    fn message(payload: &[u8]) -> Message<'_> {
        Message {
            topic: "trading.events",
            partition: 2,
            offset: 41,
            key: Some("k"),
            payload,
            default_id: DefaultId::new(&|| derived_id("trading.events/2/41")),
            kind: PayloadKind::Event,
        }
    }

    #[test]
    fn derived_ids_repeat_for_the_same_name_only() {
        assert_eq!(derived_id("t/0/1"), derived_id("t/0/1"));
        assert_ne!(derived_id("t/0/1"), derived_id("t/0/2"));
        assert_eq!(derived_id("t/0/1").get_version_num(), 5);
    }

    #[test]
    fn position_ids_repeat_for_the_same_message_only() {
        let at = 1_764_500_000_123;
        let id = position_id("t/0/1", Some(at));
        assert_eq!(id, position_id("t/0/1", Some(at)));
        assert_ne!(id, position_id("t/0/2", Some(at)));
        // the same offset of a topic created again, later
        assert_ne!(id, position_id("t/0/1", Some(at + 1)));
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id.as_bytes()[..6], at.to_be_bytes()[2..]);
    }

    #[test]
    fn position_ids_sort_by_the_time_the_broker_stored_them() {
        let mut ids: Vec<(Uuid, usize)> = (0..1000)
            .map(|offset| {
                let position = format!("t/{}/{offset}", offset % 7);
                (
                    position_id(&position, Some(1_764_500_000_000 + offset as i64)),
                    offset,
                )
            })
            .collect();
        ids.sort();
        assert!(ids.iter().map(|(_, offset)| *offset).eq(0..1000));
    }

    #[test]
    fn position_ids_of_parts_are_those_of_the_formatted_position() {
        let at = Some(1_764_500_000_123);
        assert_eq!(
            position_id_of("trading.events", &[&7, &41_i64], at),
            position_id("trading.events/7/41", at)
        );
        assert_eq!(
            position_id_of("S", &[&u64::MAX], None),
            position_id(&format!("S/{}", u64::MAX), None)
        );
        assert_eq!(
            position_id_of("t", &[&-1, &0], at),
            position_id("t/-1/0", at)
        );
        // past the stack buffer, and right at its edge
        for length in [300, 310, 318, 319, 320, 400] {
            let name = "x".repeat(length);
            assert_eq!(
                position_id_of(&name, &[&3, &12_345], at),
                position_id(&format!("{name}/3/12345"), at),
                "a name of {length} bytes"
            );
        }
    }

    #[test]
    fn without_a_usable_time_the_position_id_is_the_uuidv5() {
        for stored in [None, Some(0), Some(-1), Some(1 << 48)] {
            assert_eq!(position_id("t/0/1", stored), derived_id("t/0/1"));
        }
    }

    #[test]
    fn an_event_without_id_gets_the_derived_one() {
        let events = decode_events(&validator(), &message(br#"{"event_type": "a"}"#)).unwrap();
        assert_eq!(events[0].id, derived_id("trading.events/2/41"));
        let own = r#"{"event_type": "a", "id": "0190b4a1-0000-7000-8000-000000000001"}"#;
        let events = decode_events(&validator(), &message(own.as_bytes())).unwrap();
        assert_eq!(
            events[0].id.to_string(),
            "0190b4a1-0000-7000-8000-000000000001"
        );
    }

    #[test]
    fn bad_payloads_name_what_is_wrong() {
        let not_json = decode_events(&validator(), &message(b"{oops")).unwrap_err();
        assert!(
            not_json.starts_with("payload is not valid JSON"),
            "{not_json}"
        );
        let no_type = decode_events(&validator(), &message(br#"{"user_id": "u"}"#)).unwrap_err();
        assert!(no_type.contains("event_type"), "{no_type}");
    }

    #[test]
    fn dead_letters_keep_a_bounded_payload() {
        let payload = vec![b'x'; 100];
        let letter = dead_letter("kafka", &message(&payload), "bad".into(), 64);
        assert_eq!(letter.payload.len(), 64);
        assert!(letter.payload_truncated);
        assert_eq!((letter.partition, letter.offset), (2, 41));
        assert_eq!(letter.event_id, derived_id("trading.events/2/41"));
    }

    #[test]
    fn order_update_subjects_are_recognised() {
        assert_eq!(
            PayloadKind::of_subject("orders.updates.BTCUSDT"),
            PayloadKind::OrderUpdate
        );
        assert_eq!(
            PayloadKind::of_subject("analytics.events"),
            PayloadKind::Event
        );
    }
}
