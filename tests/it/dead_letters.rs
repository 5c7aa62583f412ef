//! Dead letters: listed by the admin API, replayed after a fix under the id
//! they got on arrival (a repeated replay stores nothing twice), by the API
//! and by `analytics dead-letters replay`.

use std::process::Command;

use analytics::sources::derived_id;
use analytics::store::DeadLetter;
use serde_json::{Value, json};

use crate::helpers::{now_ms, rfc3339, spawn_app, store_env_for};

fn letter(source: &str, topic: &str, offset: i64, payload: &str) -> DeadLetter {
    DeadLetter {
        source: source.into(),
        topic: topic.into(),
        partition: if source == "kafka" { 0 } else { -1 },
        offset,
        key: None,
        payload: payload.as_bytes().to_vec(),
        payload_truncated: false,
        event_id: derived_id(&format!("{topic}/0/{offset}")),
        error: "properties do not match the schema of custom event \"page.view\"".into(),
        received_at_ms: now_ms(),
    }
}

async fn count_of(app: &crate::helpers::TestApp, event_type: &str) -> u64 {
    let now = now_ms();
    let (_, stats) = app
        .get_query(
            "/api/v1/events/stats",
            &[
                ("start_time", rfc3339(now - 3_600_000)),
                ("end_time", rfc3339(now + 60_000)),
            ],
        )
        .await;
    stats["by_type"][event_type].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_once() {
    let mut app = spawn_app().await;
    let database = app.directory.path().join("analytics.db");
    let config = analytics::config::load(None, &store_env_for(&database))
        .unwrap()
        .config;
    let store = analytics::open_store(&config).await.unwrap();
    let now = now_ms();
    let order_update = json!({
        "order": {"order_id": "o-1", "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                  "state": "NEW", "quantity": "1", "price": "100", "filled_quantity": "0",
                  "user_id": "u-1", "created_at": rfc3339(now), "updated_at": rfc3339(now)},
        "update_type": "CREATED",
        "timestamp": rfc3339(now),
    });
    let letters = [
        letter(
            "kafka",
            "user.actions",
            7,
            &json!({"event_type": "page.view", "timestamp": now}).to_string(),
        ),
        letter(
            "nats",
            "orders.updates.BTCUSDT",
            3,
            &order_update.to_string(),
        ),
        letter("kafka", "user.actions", 8, "{oops"),
    ];
    assert_eq!(store.insert_dead_letters(&letters).await.unwrap(), 3);

    let (status, listed) = app.get("/api/v1/internal/dead-letters").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["count"], 3, "{listed}");
    let first = &listed["dead_letters"][0];
    assert_eq!(
        (
            first["source"].clone(),
            first["topic"].clone(),
            first["offset"].clone()
        ),
        (json!("kafka"), json!("user.actions"), json!(7)),
        "{listed}"
    );
    assert!(first["payload"].as_str().unwrap().contains("page.view"));
    let (_, nats_only) = app
        .get_query(
            "/api/v1/internal/dead-letters",
            &[("source", "nats".into())],
        )
        .await;
    assert_eq!(nats_only["count"], 1, "{nats_only}");
    let (status, bad) = app
        .get_query("/api/v1/internal/dead-letters", &[("source", "ftp".into())])
        .await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("source"), "{bad}");

    let (status, report) = app
        .post_json("/api/v1/internal/dead-letters/replay", &Value::Null)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            report["examined"].clone(),
            report["replayed"].clone(),
            report["still_failing"].clone()
        ),
        (json!(3), json!(2), json!(1)),
        "{report}"
    );
    assert_eq!(report["events_stored"], 2, "{report}");
    assert_eq!(count_of(&app, "page.view").await, 1);
    assert_eq!(count_of(&app, "order.placed").await, 1);

    // The same message dead-lettered again (a redelivery before the fix)
    // replays to a duplicate: its id is the one it got on arrival.
    assert_eq!(store.insert_dead_letters(&letters[..1]).await.unwrap(), 1);
    let (_, report) = app
        .post_json("/api/v1/internal/dead-letters/replay", &Value::Null)
        .await;
    assert_eq!(
        (
            report["replayed"].clone(),
            report["duplicates"].clone(),
            report["events_stored"].clone()
        ),
        (json!(1), json!(1), json!(0)),
        "{report}"
    );
    assert_eq!(count_of(&app, "page.view").await, 1);
    app.stop().await.unwrap();

    // The command line replays too; the unfixable one stays, its attempts
    // counted.
    let output = Command::new(env!("CARGO_BIN_EXE_analytics"))
        .args(["dead-letters", "replay"])
        .envs(store_env_for(&database))
        .env_remove("ANALYTICS_CONFIG")
        .output()
        .expect("run analytics dead-letters replay");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(
        (report["replayed"].clone(), report["still_failing"].clone()),
        (json!(0), json!(1)),
        "{report}"
    );
    let left = store
        .list_dead_letters(&analytics::store::DeadLetterQuery {
            source: None,
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].attempts, 3);
    assert!(
        left[0]
            .letter
            .error
            .starts_with("payload is not valid JSON"),
        "{:?}",
        left[0]
    );
}
