//! The domain: events, custom event definitions and metric names. Plain data
//! and pure functions; no I/O, no HTTP, no SQL.

pub mod custom_event;
pub mod event;
pub mod metric;
pub mod properties;
pub mod wire;

pub use custom_event::{
    CompiledDefinition, CustomEventDefinition, DefinitionError, SchemaViolation,
};
pub use event::{Event, EventError, EventLimits};
pub use properties::Properties;
