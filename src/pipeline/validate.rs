//! Validation shared by every source: the wire checks of
//! [`crate::model::event`] plus the JSON Schema of an active custom event
//! definition for the event's type.
//!
//! The registry of compiled definitions lives here, in memory, so the ingest
//! path checks schemas without touching the store; the custom-events API
//! keeps it in step with the stored definitions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use crate::model::event::parse_event;
use crate::model::wire::WireEvent;
use crate::model::{CompiledDefinition, Event, EventError, EventLimits, SchemaViolation};

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error("properties do not match the schema of custom event {event_type:?}")]
    Schema {
        event_type: String,
        violations: Vec<SchemaViolation>,
    },
}

impl Rejection {
    /// The field the rejection is about (for metrics and error bodies).
    pub fn field(&self) -> String {
        match self {
            Rejection::Invalid(error) => error.field(),
            Rejection::Schema { .. } => "properties".into(),
        }
    }
}

/// Validates wire events for every source.
pub struct EventValidator {
    limits: EventLimits,
    definitions: RwLock<HashMap<String, Arc<CompiledDefinition>>>,
}

impl EventValidator {
    pub fn new(limits: EventLimits) -> Self {
        EventValidator {
            limits,
            definitions: RwLock::new(HashMap::new()),
        }
    }

    /// Parses one wire event and checks it against its custom definition.
    pub fn validate(
        &self,
        wire: impl Into<WireEvent>,
        now_ms: i64,
        default_id: impl FnOnce() -> Uuid,
    ) -> Result<Event, Rejection> {
        let event = parse_event(wire, &self.limits, now_ms, default_id)?;
        if let Some(definition) = self.active_definition(&event.event_type)
            && let Err(violations) = definition.check(&event.properties)
        {
            return Err(Rejection::Schema {
                event_type: event.event_type,
                violations,
            });
        }
        Ok(event)
    }

    fn active_definition(&self, event_type: &str) -> Option<Arc<CompiledDefinition>> {
        let definitions = self
            .definitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        definitions
            .get(event_type)
            .filter(|compiled| compiled.definition.is_active)
            .cloned()
    }

    /// Installs (or replaces) a compiled definition.
    pub fn install(&self, compiled: CompiledDefinition) {
        let mut definitions = self
            .definitions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        definitions.insert(compiled.definition.name.clone(), Arc::new(compiled));
    }
}
