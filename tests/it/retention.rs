//! Retention: `analytics retention run` removes expired raw events and
//! rollup rows and keeps the rest; coarser rollups outlive raw events.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{now_ms, rfc3339, spawn_app, spawn_app_with};

const DAY: i64 = 86_400_000;

#[tokio::test]
async fn retention_run_removes_expired_events_and_keeps_coarse_rollups() {
    let mut app = spawn_app().await;
    let now = now_ms();
    let events: Vec<Value> = [
        now - 20 * DAY,
        now - 10 * DAY,
        now - 2 * DAY,
        now - 3_600_000,
    ]
    .iter()
    .enumerate()
    .flat_map(|(index, timestamp)| {
        [
            json!({"event_type": "order.placed", "user_id": "u", "timestamp": timestamp,
                   "properties": {"order_id": format!("o{index}"), "symbol": "BTCUSDT", "quantity": 1}}),
            json!({"event_type": "market.data.update", "timestamp": timestamp,
                   "properties": {"symbol": "BTCUSDT", "bid": 99, "ask": 101}}),
        ]
    })
    .collect();
    let (status, _) = app.post_json("/api/v1/events/batch", &json!(events)).await;
    assert_eq!(status, 200);
    let database = app.directory.path().join("analytics.db");
    app.stop().await.unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_analytics"))
        .args(["retention", "run"])
        .envs(crate::helpers::store_env_for(&database))
        .env("ANALYTICS_ANALYTICS__RETENTION__RAW_EVENTS", "7d")
        .env("ANALYTICS_ANALYTICS__RETENTION__MINUTE_AGGREGATES", "7d")
        .env("ANALYTICS_ANALYTICS__RETENTION__HOUR_AGGREGATES", "15d")
        .env("ANALYTICS_ANALYTICS__RETENTION__DAILY_AGGREGATES", "365d")
        .env("ANALYTICS_LOGGING__LEVEL", "warn")
        .env_remove("ANALYTICS_CONFIG")
        .output()
        .expect("run analytics retention run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report on stdout");
    // SQLite deletes the four expired events; PostgreSQL drops their two
    // day partitions whole.
    assert!(
        report["events_deleted"] == 4 || report["partitions_dropped"].as_u64() >= Some(2),
        "{report}"
    );
    // Trading rows of the expired events: two orders, two quotes and two
    // one-minute bars (minute aggregates also keep 7 days).
    assert_eq!(report["trading_rows_deleted"], 6, "{report}");
    assert!(
        report["rollup_rows_deleted"].as_u64().unwrap() > 0,
        "{report}"
    );

    let database_text = database.display().to_string();
    let app = spawn_app_with(&[("ANALYTICS_DATABASE__PATH", database_text.as_str())]).await;
    let (_, listed) = app
        .get_query(
            "/api/v1/events",
            &[
                ("start_time", rfc3339(now - 30 * DAY)),
                ("end_time", rfc3339(now)),
            ],
        )
        .await;
    assert_eq!(
        listed["count"], 4,
        "raw events within 7 days stay: {listed}"
    );
    let (_, orders) = app
        .get_query(
            "/api/v1/trading/orders",
            &[
                ("start_time", rfc3339(now - 30 * DAY)),
                ("end_time", rfc3339(now)),
                ("interval", "1d".to_string()),
            ],
        )
        .await;
    assert_eq!(orders["summary"]["orders_placed"], 2, "{orders}");
    let count_at = |interval: &str| {
        let query = vec![
            ("metric_name", "events.count.order.placed".to_string()),
            ("interval", interval.to_string()),
            ("start_time", rfc3339(now - 30 * DAY)),
            ("end_time", rfc3339(now)),
        ];
        let app = &app;
        async move {
            let (_, body) = app.get_query("/api/v1/metrics", &query).await;
            body["result"]["data_points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|point| point["value"].as_f64().unwrap())
                .sum::<f64>()
        }
    };
    // Daily rollups outlive the raw events: all four still counted per day.
    assert_eq!(count_at("1d").await, 4.0);
    // Hourly rollups keep 15 days: the event 20 days back is gone from them.
    assert_eq!(count_at("1h").await, 3.0);
}
