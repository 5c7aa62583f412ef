//! Bad input gets a clear 4xx JSON error naming what is wrong; never a panic
//! or a 5xx. Overload and store failure answer 503 and acknowledge nothing.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::{now_ms, rfc3339, spawn_app, spawn_app_with};

#[tokio::test]
async fn invalid_events_are_400_naming_the_field() {
    let app = spawn_app().await;
    let now = now_ms();
    let cases = [
        (json!({"user_id": "u"}), "event_type"),
        (json!({"event_type": 42}), "event_type"),
        (json!({"event_type": ""}), "event_type"),
        (json!({"event_type": "x".repeat(200)}), "event_type"),
        (
            json!({"event_type": "a", "properties": "text"}),
            "properties",
        ),
        (json!({"event_type": "a", "user_id": ["list"]}), "user_id"),
        (json!({"event_type": "a", "id": "not-a-uuid"}), "id"),
        (
            json!({"event_type": "a", "timestamp": "03/10/2025"}),
            "timestamp",
        ),
        (
            json!({"event_type": "a", "timestamp": rfc3339(now + 10 * 60_000)}),
            "timestamp",
        ),
        (
            json!({"event_type": "a", "timestamp": rfc3339(now - 91 * 86_400_000)}),
            "timestamp",
        ),
        (
            json!({"event_type": "a", "properties": {"big": "x".repeat(2000)}}),
            "properties.big",
        ),
        (json!([1, 2]), ""),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post_json("/api/v1/events", &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(answer["error"].is_string(), "{answer}");
        if !field.is_empty() {
            assert_eq!(answer["details"]["field"], field, "{body} -> {answer}");
        }
    }
    let too_many: serde_json::Map<String, Value> = (0..51)
        .map(|index| (format!("k{index}"), json!(index)))
        .collect();
    let (status, answer) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "a", "properties": too_many}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("limit of 50"),
        "{answer}"
    );
    let (_, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(stats["total_events"], 0);
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversized_bodies() {
    let app = spawn_app_with(&[
        ("ANALYTICS_ANALYTICS__INGESTION__MAX_BODY_BYTES", "4096"),
        ("ANALYTICS_ANALYTICS__INGESTION__MAX_BATCH_EVENTS", "3"),
    ])
    .await;
    let (status, body) = app
        .post_raw(
            "/api/v1/events",
            Some("application/json"),
            "{\"event_type\": ",
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{body}"
    );
    let (status, body) = app
        .post_raw(
            "/api/v1/events",
            Some("text/plain"),
            "{\"event_type\": \"a\"}",
        )
        .await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = app
        .post_raw(
            "/api/v1/events",
            Some("application/json"),
            format!("{{\"event_type\": \"{}\"}}", "a".repeat(5000)),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("4096"), "{body}");
    let batch =
        json!([{"event_type": "a"}, {"event_type": "a"}, {"event_type": "a"}, {"event_type": "a"}]);
    let (status, body) = app.post_json("/api/v1/events/batch", &batch).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = app.post_json("/api/v1/events/batch", &json!([])).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .post_json("/api/v1/events/batch", &json!({"event_type": "a"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .post_json("/api/v1/events/batch", &json!([{"event_type": 1}]))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 0);
}

#[tokio::test]
async fn bad_query_parameters_are_400() {
    let app = spawn_app().await;
    for limit in ["0", "10001", "abc", "-1"] {
        let (status, body) = app.get(&format!("/api/v1/events?limit={limit}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("Invalid limit parameter")),
            "limit={limit}"
        );
    }
    let (status, body) = app.get("/api/v1/events?start_time=yesterday").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Invalid start_time format"))
    );
    let (status, body) = app.get("/api/v1/events/stats?end_time=2025-13-45").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Invalid end_time format"))
    );
    let (status, body) = app
        .get_query(
            "/api/v1/events/stats",
            &[
                ("start_time", rfc3339(now_ms())),
                ("end_time", rfc3339(now_ms() - 1000)),
            ],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.get("/api/v1/metrics").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("metric_name is required"))
    );
    let (status, body) = app.get("/api/v1/metrics?metric_name=bogus").await;
    assert_eq!(
        (status, body["details"]["field"].as_str()),
        (400, Some("metric_name")),
        "{body}"
    );
    let (status, body) = app
        .get("/api/v1/metrics?metric_name=events.count.a&interval=2h")
        .await;
    assert_eq!(
        (status, body["details"]["field"].as_str()),
        (400, Some("interval")),
        "{body}"
    );
    let (status, body) = app
        .get("/api/v1/metrics?metric_name=events.count.a&aggregation=median")
        .await;
    assert_eq!(
        (status, body["details"]["field"].as_str()),
        (400, Some("aggregation")),
        "{body}"
    );
    let (status, body) = app
        .get("/api/v1/metrics?metric_name=events.count.a&aggregation=p99")
        .await;
    assert_eq!(status, 400, "p99 of a count: {body}");
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/v1/nothing").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let response = app
        .client
        .delete(app.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
}

/// Holds SQLite's write lock from outside the service, so commits wait.
fn lock_database(app: &crate::helpers::TestApp) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(app.directory.path().join("analytics.db")).unwrap();
    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
    connection
}

#[tokio::test]
async fn full_queue_is_503_and_failed_commit_acknowledges_nothing() {
    if crate::helpers::postgres_selected() {
        // It holds SQLite's file lock; PostgreSQL's failure behaviour is
        // covered by the store's own tests.
        eprintln!(
            "SKIPPED under postgres: full_queue_is_503_and_failed_commit_acknowledges_nothing holds a SQLite file lock"
        );
        return;
    }
    let app = spawn_app_with(&[
        ("ANALYTICS_ANALYTICS__INGESTION__BATCH_SIZE", "1"),
        ("ANALYTICS_ANALYTICS__INGESTION__BUFFER_SIZE", "1"),
    ])
    .await;
    let lock = lock_database(&app);
    let pending = {
        let client = app.client.clone();
        let url = app.url("/api/v1/events");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"event_type": "held"}))
                .send()
                .await
        })
    };
    // Wait until the first event holds the only queue slot.
    let mut queued = false;
    for _ in 0..100 {
        if app
            .metrics_text()
            .await
            .contains("analytics_ingest_queue_events 1")
        {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queued, "first event never queued");
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .json(&json!({"event_type": "refused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // The held event's commit times out on the lock (busy_timeout 5 s): 503, nothing stored.
    let held = pending.await.unwrap().unwrap();
    assert_eq!(
        held.status(),
        503,
        "a failed commit must not be acknowledged"
    );
    drop(lock);
    let (_, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(stats["total_events"], 0, "{stats}");
    let (status, _) = app
        .post_json("/api/v1/events", &json!({"event_type": "after"}))
        .await;
    assert_eq!(
        status, 201,
        "the service recovers once the database is writable"
    );
    let (_, ingestion) = app.get("/api/v1/internal/ingestion-metrics").await;
    assert_eq!(ingestion["events_failed"], 1);
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|number| json!(number)),
        any::<f64>().prop_map(|number| json!(number)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("order.placed")),
        Just(json!("2025-10-03T12:00:00Z")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("event_type".to_string()),
                    Just("properties".to_string()),
                    Just("timestamp".to_string()),
                    Just("id".to_string()),
                    Just("user_id".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Random bodies and parameters against the running service: every answer
/// is a 2xx or a 4xx with a JSON error, never a 5xx.
#[test]
fn random_bodies_and_parameters_never_cause_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let config = ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in arbitrary_json(), raw in ".{0,64}", param in ".{0,24}", batch in any::<bool>())| {
        runtime.block_on(async {
            let path = if batch { "/api/v1/events/batch" } else { "/api/v1/events" };
            let (status, answer) = app.post_json(path, &body).await;
            prop_assert!(status < 500, "{body} -> {status} {answer}");
            prop_assert!(status < 300 || answer["error"].is_string(), "{answer}");
            let (status, _) = app.post_raw(path, Some("application/json"), raw.clone()).await;
            prop_assert!(status < 500, "raw {raw:?} -> {status}");
            for (path, key) in [("/api/v1/events", "limit"), ("/api/v1/events", "start_time"), ("/api/v1/events/stats", "end_time"),
                                ("/api/v1/metrics", "metric_name"), ("/api/v1/metrics?metric_name=orders.latency_ms", "interval")] {
                let response = app.client.get(app.url(path)).query(&[(key, param.as_str())]).send().await.unwrap();
                prop_assert!(response.status().as_u16() < 500, "{path} {key}={param:?} -> {}", response.status());
            }
            Ok(())
        })?;
    });
}
