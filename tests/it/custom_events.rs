//! Custom event definitions: CRUD, and their schemas enforced on ingest.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

fn order_note() -> serde_json::Value {
    json!({
        "name": "trade.note",
        "display_name": "Trade note",
        "description": "A desk note on a trade",
        "schema": {"type": "object", "required": ["price"],
                   "properties": {"price": {"type": "number"}, "side": {"enum": ["BUY", "SELL"]}}}
    })
}

#[tokio::test]
async fn create_read_list_update_deactivate() {
    let app = spawn_app().await;
    let (status, created) = app.post_json("/api/v1/custom-events", &order_note()).await;
    assert_eq!(status, 201, "{created}");
    for field in [
        "id",
        "name",
        "display_name",
        "description",
        "schema",
        "is_active",
        "created_at",
        "updated_at",
    ] {
        assert!(!created[field].is_null(), "missing {field}");
    }
    assert_eq!(created["is_active"], true);
    let (status, again) = app.post_json("/api/v1/custom-events", &order_note()).await;
    assert_eq!(status, 409, "duplicate name: {again}");
    let (status, read) = app.get("/api/v1/custom-events/trade.note").await;
    assert_eq!((status, &read["id"]), (200, &created["id"]));
    let (status, missing) = app.get("/api/v1/custom-events/nothing").await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("Custom event not found"))
    );
    let (status, list) = app.get("/api/v1/custom-events").await;
    assert_eq!((status, list["count"].as_u64()), (200, Some(1)));

    let updated = app
        .client
        .put(app.url("/api/v1/custom-events/trade.note"))
        .json(
            &json!({"description": "changed", "schema": {"type": "object", "required": ["size"]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let (status, body) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "trade.note", "properties": {"price": 1}}),
        )
        .await;
    assert_eq!(status, 422, "new schema is enforced: {body}");
    let deleted = app
        .client
        .delete(app.url("/api/v1/custom-events/trade.note"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let (_, read) = app.get("/api/v1/custom-events/trade.note").await;
    assert_eq!(read["is_active"], false);
    let (status, _) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "trade.note", "properties": {"price": 1}}),
        )
        .await;
    assert_eq!(status, 201, "an inactive definition is not enforced");
}

#[tokio::test]
async fn invalid_definitions_are_400() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_json(
            "/api/v1/custom-events",
            &json!({"name": "x", "schema": {"type": "no-such-type"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["details"]["field"], "schema");
    assert!(body["details"]["problems"].is_array(), "{body}");
    let (status, body) = app
        .post_json("/api/v1/custom-events", &json!({"display_name": "no name"}))
        .await;
    assert_eq!(
        (status, body["details"]["field"].as_str()),
        (400, Some("name"))
    );
    let (status, _) = app
        .post_json("/api/v1/custom-events", &json!({"name": ""}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post_json(
            "/api/v1/custom-events",
            &json!({"name": "y", "is_active": "yes"}),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn schema_mismatch_is_422_listing_each_path() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_json("/api/v1/custom-events", &order_note())
            .await
            .0,
        201
    );
    let (status, ok) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "trade.note", "properties": {"price": 10.5, "side": "BUY"}}),
        )
        .await;
    assert_eq!(status, 201, "{ok}");
    let (status, body) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "trade.note", "properties": {"price": "ten", "side": "UP"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let paths: Vec<&str> = body["details"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/properties/price") && paths.contains(&"/properties/side"),
        "{paths:?}"
    );
    let (status, batch) = app
        .post_json(
            "/api/v1/events/batch",
            &json!([{"event_type": "trade.note", "properties": {}}, {"event_type": "other"}]),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(batch["accepted"], 1);
    assert_eq!(batch["rejected"][0]["index"], 0);
    assert!(
        batch["rejected"][0]["details"]["violations"].is_array(),
        "{batch}"
    );
}

#[tokio::test]
async fn definitions_survive_a_restart() {
    let mut app = spawn_app().await;
    assert_eq!(
        app.post_json("/api/v1/custom-events", &order_note())
            .await
            .0,
        201
    );
    let database = app
        .directory
        .path()
        .join("analytics.db")
        .display()
        .to_string();
    app.stop().await.unwrap();
    let second = spawn_app_with(&[("ANALYTICS_DATABASE__PATH", database.as_str())]).await;
    let (status, _) = second
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "trade.note", "properties": {}}),
        )
        .await;
    assert_eq!(status, 422, "the stored schema is enforced after a restart");
}
