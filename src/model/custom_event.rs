//! Custom event definitions: a named event type with a JSON Schema that the
//! `properties` of its events must satisfy.
//!
//! A definition is compiled once when it is created or loaded; events are
//! checked against the compiled validator on the ingest path, so a schema is
//! never re-parsed per event.

use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::event::{format_timestamp, validate_event_type};
use super::properties::Properties;

/// A stored custom event definition (wire shape of the old service).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomEventDefinition {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub schema: Value,
    pub is_active: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// JSON form of a definition.
#[derive(Debug, Serialize)]
pub struct CustomEventDefinitionOut {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub schema: Value,
    pub is_active: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&CustomEventDefinition> for CustomEventDefinitionOut {
    fn from(definition: &CustomEventDefinition) -> Self {
        CustomEventDefinitionOut {
            id: definition.id,
            name: definition.name.clone(),
            display_name: definition.display_name.clone(),
            description: definition.description.clone(),
            schema: definition.schema.clone(),
            is_active: definition.is_active,
            created_at: format_timestamp(definition.created_at_ms),
            updated_at: format_timestamp(definition.updated_at_ms),
        }
    }
}

/// A definition with its compiled schema.
pub struct CompiledDefinition {
    pub definition: CustomEventDefinition,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledDefinition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CompiledDefinition")
            .field("definition", &self.definition)
            .finish_non_exhaustive()
    }
}

/// One place where `properties` failed the schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaViolation {
    /// JSON pointer into the event, e.g. `/properties/price`.
    pub path: String,
    pub message: String,
}

/// Why a definition was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionError {
    #[error("name: {0}")]
    InvalidName(String),
    #[error("schema is not a valid JSON Schema")]
    InvalidSchema(Vec<String>),
    #[error("{0} must be a string")]
    FieldNotString(&'static str),
    #[error("is_active must be a boolean")]
    ActiveNotBool,
}

impl CompiledDefinition {
    /// Compiles `definition.schema`; refuses schemas that are not valid JSON
    /// Schema documents.
    pub fn compile(definition: CustomEventDefinition) -> Result<Self, DefinitionError> {
        let validator = compile_schema(&definition.schema)?;
        Ok(CompiledDefinition {
            definition,
            validator,
        })
    }

    /// Checks an event's properties; lists every failing path.
    pub fn check(&self, properties: &Properties) -> Result<(), Vec<SchemaViolation>> {
        // The validator works on a Value; properties are validated as the
        // object they are, and paths are reported relative to the event.
        let instance = Value::Object(properties.to_map());
        let violations: Vec<SchemaViolation> = self
            .validator
            .iter_errors(&instance)
            .map(|error| SchemaViolation {
                path: format!("/properties{}", error.instance_path().as_str()),
                message: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// Validates `schema` against the JSON Schema meta-schema and compiles it.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, DefinitionError> {
    if let Err(error) = jsonschema::meta::validate(schema) {
        return Err(DefinitionError::InvalidSchema(vec![format!(
            "{} (at {})",
            error,
            error.instance_path().as_str()
        )]));
    }
    jsonschema::validator_for(schema)
        .map_err(|error| DefinitionError::InvalidSchema(vec![error.to_string()]))
}

/// Validates a definition name: the same rules as an event type.
pub fn validate_definition_name(name: &str) -> Result<(), DefinitionError> {
    validate_event_type(name)
        .map_err(|error| DefinitionError::InvalidName(error.to_string().replace("event_type ", "")))
}

/// Reads an optional string field of a request body.
pub fn optional_string(
    body: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, DefinitionError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(DefinitionError::FieldNotString(field)),
    }
}

/// Reads an optional boolean `is_active`.
pub fn optional_active(body: &Map<String, Value>) -> Result<Option<bool>, DefinitionError> {
    match body.get("is_active") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(active)) => Ok(Some(*active)),
        Some(_) => Err(DefinitionError::ActiveNotBool),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(schema: Value) -> CustomEventDefinition {
        CustomEventDefinition {
            id: Uuid::nil(),
            name: "trade.note".into(),
            display_name: String::new(),
            description: String::new(),
            schema,
            is_active: true,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn reports_each_failing_path() {
        let compiled = CompiledDefinition::compile(definition(json!({
            "type": "object",
            "required": ["price"],
            "properties": {"price": {"type": "number"}, "side": {"enum": ["BUY", "SELL"]}}
        })))
        .unwrap();
        let Value::Object(good) = json!({"price": 1.5, "side": "BUY"}) else {
            unreachable!()
        };
        assert!(compiled.check(&good.into()).is_ok());
        let Value::Object(bad) = json!({"price": "x", "side": "UP"}) else {
            unreachable!()
        };
        let violations = compiled.check(&bad.into()).unwrap_err();
        let paths: Vec<_> = violations
            .iter()
            .map(|violation| violation.path.as_str())
            .collect();
        assert!(paths.contains(&"/properties/price"), "{paths:?}");
        assert!(paths.contains(&"/properties/side"), "{paths:?}");
    }

    #[test]
    fn refuses_invalid_schema() {
        let error =
            CompiledDefinition::compile(definition(json!({"type": "no-such-type"}))).unwrap_err();
        assert!(matches!(error, DefinitionError::InvalidSchema(_)));
    }
}
