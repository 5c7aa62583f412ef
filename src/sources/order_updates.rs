//! Order updates of the order-execution service (NATS `orders.updates.>`)
//! as order events.
//!
//! An update is `{"order": {...}, "update_type": "CREATED" | "UPDATED" |
//! "FILLED" | "CANCELED" | "REJECTED", "timestamp": ...}`; its fills are
//! cumulative (`filled_quantity`, `average_price` cover every fill so far).
//! The mapping:
//!
//! | update | events |
//! |---|---|
//! | `CREATED` | `order.placed` (quantity, price of the order) |
//! | `UPDATED` | none: a partial fill is counted when the order ends |
//! | `FILLED` | `order.filled` with the cumulative `filled_quantity` as `quantity` and `average_price` as `price`, `fee` as `commission`, `partial: false` |
//! | `CANCELED` | `order.canceled`; plus, when something was filled, `order.filled` as above with `partial: true` |
//! | `REJECTED` | `order.rejected` |
//!
//! Each event's id is a UUIDv5 of the order id and the event type, so an
//! order yields at most one event of each type however many updates,
//! redeliveries or reorderings arrive: its filled quantity and notional are
//! counted once, from the final cumulative figures. The event time is the
//! update's `timestamp` (else the order's `updated_at`).

use serde_json::{Map, Value, json};

use super::derived_id;
use crate::model::properties::Scalar;

/// The wire events of one order update (possibly none); `Err` names what
/// is wrong with it.
pub fn to_wire_events(update: &Value) -> Result<Vec<Value>, String> {
    let update = update
        .as_object()
        .ok_or("order update must be a JSON object")?;
    let order = update
        .get("order")
        .and_then(Value::as_object)
        .ok_or("order update has no \"order\" object")?;
    let order_id = match order.get("order_id") {
        Some(Value::String(id)) if !id.is_empty() => id.as_str(),
        _ => return Err("order.order_id must be a non-empty string".into()),
    };
    let update_type = update
        .get("update_type")
        .and_then(Value::as_str)
        .ok_or("update_type must be a string")?;
    let timestamp = update
        .get("timestamp")
        .filter(|value| !value.is_null())
        .or_else(|| order.get("updated_at"))
        .cloned()
        .ok_or("order update has no timestamp (nor order.updated_at)")?;
    let filled = order
        .get("filled_quantity")
        .and_then(Scalar::of)
        .and_then(Scalar::number)
        .unwrap_or(0.0);

    let event = |event_type: &str, properties: Map<String, Value>| -> Value {
        let mut event = json!({
            "id": derived_id(&format!("orders.updates/{order_id}/{event_type}")).to_string(),
            "event_type": event_type,
            "timestamp": timestamp,
            "properties": properties,
        });
        if let Some(Value::String(user)) = order.get("user_id")
            && !user.is_empty()
        {
            event["user_id"] = Value::String(user.clone());
        }
        event
    };
    let fill = |partial: bool| -> Value {
        let mut properties = common_properties(order);
        properties.insert("quantity".into(), json!(filled));
        if let Some(price) = order.get("average_price") {
            properties.insert("price".into(), price.clone());
        }
        if let Some(quantity) = order.get("quantity") {
            properties.insert("order_quantity".into(), quantity.clone());
        }
        copy(
            order,
            &mut properties,
            &[("fee", "commission"), ("fee_asset", "fee_asset")],
        );
        properties.insert("partial".into(), Value::Bool(partial));
        event("order.filled", properties)
    };

    match update_type {
        "CREATED" => {
            let mut properties = common_properties(order);
            copy(
                order,
                &mut properties,
                &[("quantity", "quantity"), ("price", "price")],
            );
            Ok(vec![event("order.placed", properties)])
        }
        "UPDATED" => Ok(Vec::new()),
        "FILLED" => Ok(vec![fill(false)]),
        "CANCELED" => {
            let mut properties = common_properties(order);
            copy(
                order,
                &mut properties,
                &[("quantity", "quantity"), ("price", "price")],
            );
            properties.insert("filled_quantity".into(), json!(filled));
            let mut events = vec![event("order.canceled", properties)];
            if filled > 0.0 {
                events.push(fill(true));
            }
            Ok(events)
        }
        "REJECTED" => {
            let mut properties = common_properties(order);
            copy(
                order,
                &mut properties,
                &[
                    ("quantity", "quantity"),
                    ("price", "price"),
                    ("reject_reason", "reason"),
                ],
            );
            Ok(vec![event("order.rejected", properties)])
        }
        other => Err(format!(
            "update_type must be CREATED, UPDATED, FILLED, CANCELED or REJECTED (got {other:?})"
        )),
    }
}

/// The properties every event of an order carries.
fn common_properties(order: &Map<String, Value>) -> Map<String, Value> {
    let mut properties = Map::new();
    copy(
        order,
        &mut properties,
        &[
            ("order_id", "order_id"),
            ("client_order_id", "client_order_id"),
            ("symbol", "symbol"),
            ("side", "side"),
            ("type", "order_type"),
            ("time_in_force", "time_in_force"),
            ("state", "state"),
            ("strategy_id", "strategy_id"),
        ],
    );
    properties.insert("source".into(), Value::String("orders.updates".into()));
    properties
}

/// Copies the present, non-null `from` fields of `order` to `to` names.
fn copy(order: &Map<String, Value>, properties: &mut Map<String, Value>, names: &[(&str, &str)]) {
    for (from, to) in names {
        if let Some(value) = order.get(*from).filter(|value| !value.is_null()) {
            properties.insert((*to).to_string(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(update_type: &str, state: &str, filled: &str) -> Value {
        json!({
            "order": {
                "order_id": "ord-1", "client_order_id": "c-1", "symbol": "BTCUSDT",
                "side": "BUY", "type": "LIMIT", "state": state, "time_in_force": "GTC",
                "quantity": "0.5", "price": "50000", "filled_quantity": filled,
                "average_price": "49990", "fee": "0.12", "fee_asset": "USDT",
                "user_id": "u-7", "created_at": "2026-11-29T10:00:00Z",
                "updated_at": "2026-11-29T10:00:05Z"
            },
            "update_type": update_type,
            "timestamp": "2026-11-29T10:00:05Z"
        })
    }

    #[test]
    fn created_becomes_one_placed_event_with_the_order_figures() {
        let events = to_wire_events(&update("CREATED", "NEW", "0")).unwrap();
        assert_eq!(events.len(), 1);
        let placed = &events[0];
        assert_eq!(placed["event_type"], "order.placed");
        assert_eq!(placed["user_id"], "u-7");
        assert_eq!(placed["properties"]["quantity"], "0.5");
        assert_eq!(placed["properties"]["order_type"], "LIMIT");
        assert_eq!(placed["timestamp"], "2026-11-29T10:00:05Z");
    }

    #[test]
    fn a_fill_carries_the_cumulative_quantity_and_a_stable_id() {
        let first = to_wire_events(&update("FILLED", "FILLED", "0.5")).unwrap();
        let again = to_wire_events(&update("FILLED", "FILLED", "0.5")).unwrap();
        assert_eq!(first, again);
        let fill = &first[0];
        assert_eq!(fill["event_type"], "order.filled");
        assert_eq!(fill["properties"]["quantity"], json!(0.5));
        assert_eq!(fill["properties"]["price"], "49990");
        assert_eq!(fill["properties"]["commission"], "0.12");
        assert_eq!(fill["properties"]["partial"], false);
        assert_eq!(
            fill["id"],
            derived_id("orders.updates/ord-1/order.filled").to_string()
        );
    }

    #[test]
    fn partial_progress_counts_nothing_until_the_order_ends() {
        assert!(
            to_wire_events(&update("UPDATED", "PARTIALLY_FILLED", "0.2"))
                .unwrap()
                .is_empty()
        );
        let canceled = to_wire_events(&update("CANCELED", "CANCELED", "0.2")).unwrap();
        let types: Vec<_> = canceled.iter().map(|e| e["event_type"].clone()).collect();
        assert_eq!(types, ["order.canceled", "order.filled"]);
        assert_eq!(canceled[1]["properties"]["partial"], true);
        assert_eq!(canceled[1]["properties"]["quantity"], json!(0.2));
        let unfilled = to_wire_events(&update("CANCELED", "CANCELED", "0")).unwrap();
        assert_eq!(unfilled.len(), 1);
    }

    #[test]
    fn malformed_updates_name_the_problem() {
        let cases = [
            (json!([]), "JSON object"),
            (json!({"update_type": "CREATED"}), "\"order\""),
            (
                json!({"order": {"order_id": ""}, "update_type": "CREATED"}),
                "order_id",
            ),
            (
                json!({"order": {"order_id": "x"}, "timestamp": 1}),
                "update_type",
            ),
            (
                json!({"order": {"order_id": "x"}, "update_type": "NEW", "timestamp": 1}),
                "CREATED",
            ),
            (
                json!({"order": {"order_id": "x"}, "update_type": "CREATED"}),
                "timestamp",
            ),
        ];
        for (input, needle) in cases {
            let error = to_wire_events(&input).unwrap_err();
            assert!(error.contains(needle), "{input}: {error}");
        }
    }
}
