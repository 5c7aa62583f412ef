//! The wire contract of SPEC §Endpoints: paths, status codes, JSON shapes.

use serde_json::{Value, json};

use crate::helpers::{now_ms, rfc3339, spawn_app};

#[tokio::test]
async fn track_event_answers_201_with_the_id_and_lists_it() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "order.placed", "user_id": "user123", "session_id": "session456",
                    "properties": {"symbol": "BTCUSDT", "side": "BUY", "price": 50000, "quantity": 0.1}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["success"], true);
    let event_id = body["event_id"]
        .as_str()
        .expect("event_id string")
        .to_string();
    uuid::Uuid::parse_str(&event_id).expect("event_id is a UUID");

    let (status, listed) = app.get("/api/v1/events").await;
    assert_eq!(status, 200);
    assert_eq!(listed["count"], 1);
    let event = &listed["events"][0];
    assert_eq!(event["id"], event_id);
    assert_eq!(event["event_type"], "order.placed");
    assert_eq!(event["user_id"], "user123");
    assert_eq!(event["session_id"], "session456");
    assert_eq!(event["properties"]["symbol"], "BTCUSDT");
    assert!(event["timestamp"].is_string() && event["created_at"].is_string());
    assert!(listed["start_time"].is_string() && listed["end_time"].is_string());
}

#[tokio::test]
async fn same_id_twice_is_stored_once_and_reported_duplicate() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let event =
        json!({"id": id, "event_type": "order.filled", "properties": {"price": 10, "quantity": 2}});
    let (first, body) = app.post_json("/api/v1/events", &event).await;
    assert_eq!((first, body["event_id"].as_str()), (201, Some(id.as_str())));
    let (second, body) = app.post_json("/api/v1/events", &event).await;
    assert_eq!(second, 200);
    assert_eq!(body["duplicate"], true);
    assert_eq!(body["event_id"], id);
    let (_, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(stats["total_events"], 1);
    let (_, volume) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "trading.total_volume".into()),
                ("interval", "1d".into()),
            ],
        )
        .await;
    assert_eq!(
        volume["result"]["data_points"][0]["value"], 20.0,
        "{volume}"
    );
}

#[tokio::test]
async fn list_is_newest_first_filtered_and_limited() {
    let app = spawn_app().await;
    let now = now_ms();
    for (offset, event_type) in [
        (3000, "page.view"),
        (2000, "user.login"),
        (1000, "page.view"),
    ] {
        let (status, _) = app
            .post_json(
                "/api/v1/events",
                &json!({"event_type": event_type, "timestamp": now - offset}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (_, all) = app.get("/api/v1/events").await;
    let times: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["timestamp"].as_str().unwrap())
        .collect();
    assert_eq!(
        times,
        vec![
            rfc3339(now - 1000),
            rfc3339(now - 2000),
            rfc3339(now - 3000)
        ]
    );
    let (_, views) = app.get("/api/v1/events?event_type=page.view&limit=1").await;
    assert_eq!(views["count"], 1);
    assert_eq!(views["events"][0]["timestamp"], rfc3339(now - 1000));
    // Both ends of the range are inclusive.
    let (_, exact) = app
        .get_query(
            "/api/v1/events",
            &[
                ("start_time", rfc3339(now - 3000)),
                ("end_time", rfc3339(now - 2000)),
            ],
        )
        .await;
    assert_eq!(exact["count"], 2, "{exact}");
}

#[tokio::test]
async fn stats_counts_by_type() {
    let app = spawn_app().await;
    let events: Vec<Value> = ["order.placed", "order.placed", "order.filled", "user.login"]
        .iter()
        .map(|event_type| json!({"event_type": event_type}))
        .collect();
    let (status, body) = app.post_json("/api/v1/events/batch", &json!(events)).await;
    assert_eq!(status, 200, "{body}");
    let (status, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["total_events"], 4);
    assert_eq!(
        stats["by_type"],
        json!({"order.placed": 2, "order.filled": 1, "user.login": 1})
    );
    assert!(stats["start_time"].is_string() && stats["end_time"].is_string());
}

#[tokio::test]
async fn legacy_metric_names_keep_working() {
    let app = spawn_app().await;
    let now = now_ms();
    let minute = now - now.rem_euclid(60_000) - 120_000;
    let events = json!([
        {"event_type": "order.placed", "timestamp": minute + 1},
        {"event_type": "order.placed", "timestamp": minute + 2},
        {"event_type": "order.placed", "timestamp": minute + 3},
        {"event_type": "order.placed", "timestamp": minute + 4},
        {"event_type": "order.filled", "timestamp": minute + 5, "properties": {"price": "100", "quantity": 2, "symbol": "BTCUSDT"}},
        {"event_type": "order.filled", "timestamp": minute + 6, "properties": {"price": 50, "quantity": "1", "symbol": "ETHUSDT"}},
        {"event_type": "order.filled", "timestamp": minute + 7, "properties": {"price": 1, "quantity": 1, "symbol": "ETHUSDT"}},
        {"event_type": "order.canceled", "timestamp": minute + 8},
    ]);
    assert_eq!(app.post_json("/api/v1/events/batch", &events).await.0, 200);
    let query = |name: &str| {
        vec![
            ("metric_name", name.to_string()),
            ("interval", "1m".to_string()),
            ("start_time", rfc3339(minute - 60_000)),
            ("end_time", rfc3339(now)),
        ]
    };
    let (status, counted) = app
        .get_query("/api/v1/metrics", &query("events.count.order.placed"))
        .await;
    assert_eq!(status, 200, "{counted}");
    assert_eq!(counted["cached"], false);
    let result = &counted["result"];
    for field in [
        "metric_name",
        "interval",
        "start_time",
        "end_time",
        "data_points",
        "total_count",
        "aggregation",
    ] {
        assert!(!result[field].is_null(), "missing {field}: {result}");
    }
    assert_eq!(result["data_points"].as_array().unwrap().len(), 1);
    assert_eq!(result["data_points"][0]["value"], 4.0);
    assert_eq!(result["data_points"][0]["timestamp"], rfc3339(minute));

    let (_, fill) = app
        .get_query("/api/v1/metrics", &query("trading.order_fill_rate"))
        .await;
    let point = &fill["result"]["data_points"][0];
    assert_eq!(point["value"], 75.0, "{fill}");
    assert_eq!(
        point["dimensions"],
        json!({"orders_placed": 4, "orders_filled": 3, "orders_canceled": 1})
    );

    let (_, volume) = app
        .get_query("/api/v1/metrics", &query("trading.total_volume"))
        .await;
    let point = &volume["result"]["data_points"][0];
    assert_eq!(point["value"], 251.0, "{volume}");
    assert_eq!(point["dimensions"]["volume"], 251.0);

    let (_, eth) = app
        .get_query("/api/v1/metrics", &query("trading.volume.ETHUSDT"))
        .await;
    assert_eq!(eth["result"]["data_points"][0]["value"], 51.0, "{eth}");
}

#[tokio::test]
async fn latency_percentiles_and_aggregation_parameter() {
    let app = spawn_app().await;
    let now = now_ms();
    let events: Vec<Value> = (1..=100)
        .map(|latency| json!({"event_type": "order.placed", "timestamp": now - 1000, "properties": {"latency_ms": latency}}))
        .collect();
    assert_eq!(
        app.post_json("/api/v1/events/batch", &json!(events))
            .await
            .0,
        200
    );
    let (status, body) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "orders.latency_ms".into()),
                ("interval", "1h".into()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let point = &body["result"]["data_points"][0];
    assert_eq!(point["count"], 100);
    assert_eq!(point["value"], 50.5, "value is the mean: {point}");
    assert_eq!(point["sum"], 5050.0);
    assert_eq!(
        (point["min"].as_f64(), point["max"].as_f64()),
        (Some(1.0), Some(100.0))
    );
    for (field, exact) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
        let estimate = point[field].as_f64().unwrap();
        assert!(
            (estimate - exact).abs() <= exact * 0.02,
            "{field} = {estimate}, exact {exact}"
        );
    }
    let (_, p99) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "orders.latency_ms".into()),
                ("interval", "1h".into()),
                ("aggregation", "p99".into()),
            ],
        )
        .await;
    assert_eq!(p99["result"]["aggregation"], "p99");
    assert_eq!(p99["result"]["data_points"][0]["value"], point["p99"]);
    let (_, price) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "order.placed.latency_ms".into()),
                ("aggregation", "max".into()),
            ],
        )
        .await;
    assert_eq!(price["result"]["data_points"][0]["value"], 100.0, "{price}");
}

/// Waits, if needed, so that the next few seconds stay inside one minute
/// (the dashboard's windows are whole minutes of the server's clock).
async fn away_from_a_minute_boundary() -> i64 {
    let now = now_ms();
    if now.rem_euclid(60_000) > 50_000 {
        tokio::time::sleep(std::time::Duration::from_millis(
            (61_000 - now.rem_euclid(60_000)) as u64,
        ))
        .await;
    }
    now_ms()
}

#[tokio::test]
async fn dashboard_computes_every_field_over_whole_minute_windows() {
    let app = spawn_app().await;
    let now = away_from_a_minute_boundary().await;
    let minute = now - now.rem_euclid(60_000);
    let m = 60_000;
    let events = json!([
        {"event_type": "order.placed", "user_id": "a", "timestamp": now, "properties": {"latency_ms": 10}},
        {"event_type": "order.placed", "user_id": "b", "timestamp": minute - 2 * m + 5_000, "properties": {"latency_ms": 30}},
        {"event_type": "order.placed", "user_id": "a", "timestamp": minute - 3 * m},
        {"event_type": "order.placed", "user_id": "d", "timestamp": minute - 6 * m},
        {"event_type": "order.placed", "user_id": "c", "timestamp": minute - 40 * m},
        {"event_type": "order.filled", "timestamp": now, "properties": {"price": 100, "quantity": 3, "latency_ms": 20}},
        {"event_type": "order.rejected", "timestamp": now},
        {"event_type": "strategy.started", "timestamp": minute - m + 1_000, "properties": {"strategy_id": "s1"}},
        {"event_type": "strategy.started", "timestamp": minute - m + 1_000, "properties": {"strategy_id": "s2"}},
        {"event_type": "strategy.stopped", "timestamp": minute - m + 2_000, "properties": {"strategy_id": "s1"}},
        {"event_type": "strategy.started", "timestamp": minute - 10 * m, "properties": {"strategy_id": "s3"}},
        {"event_type": "order.placed", "user_id": "z", "timestamp": minute - 61 * m},
    ]);
    assert_eq!(app.post_json("/api/v1/events/batch", &events).await.0, 200);
    let (status, dashboard) = app.get("/api/v1/dashboard/metrics").await;
    assert_eq!(status, 200);
    // The last 5 minutes are the current minute and the 4 before it.
    assert_eq!(dashboard["active_users"], 2, "a and b: {dashboard}");
    assert_eq!(dashboard["active_strategies"], 2, "s1 and s2: {dashboard}");
    // The last hour is the current minute and the 59 before it.
    assert_eq!(dashboard["orders_placed"], 5, "{dashboard}");
    assert_eq!(dashboard["orders_filled"], 1);
    assert_eq!(dashboard["total_volume"], 300.0);
    assert_eq!(dashboard["average_latency"], 20.0);
    assert_eq!(dashboard["error_rate"], 0.2);
    // Events per second: the last complete minute, which holds the three strategy events.
    assert_eq!(
        dashboard["events_per_second"].as_f64().unwrap(),
        3.0 / 60.0,
        "{dashboard}"
    );
    assert_eq!(dashboard["custom_metrics"]["orders_rejected"], 1);
    assert!(dashboard["last_updated"].is_string());
}

#[tokio::test]
async fn batch_accepts_array_object_and_ndjson_and_reports_per_index() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_json(
            "/api/v1/events/batch",
            &json!({"events": [{"event_type": "a"}, {"event_type": 5}, {"nope": 1}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["duplicates"], 0);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0]["index"].as_u64(), rejected[0]["field"].as_str()),
        (Some(1), Some("event_type"))
    );
    assert_eq!(rejected[1]["index"], 2);

    let id = uuid::Uuid::new_v4();
    let ndjson = format!(
        "{{\"event_type\":\"b\",\"id\":\"{id}\"}}\n\nnot json\n{{\"event_type\":\"b\",\"id\":\"{id}\"}}\n"
    );
    let (status, body) = app
        .post_raw("/api/v1/events/batch", Some("application/x-ndjson"), ndjson)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(
        body["duplicates"], 1,
        "the repeated id in one batch counts once: {body}"
    );
    assert_eq!(body["rejected"][0]["index"], 1);
    let (_, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(stats["total_events"], 2);
}

#[tokio::test]
async fn health_ready_and_ingestion_metrics() {
    let app = spawn_app().await;
    for path in ["/health", "/healthz"] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["service"], "analytics");
        assert_eq!(body["database"], "connected");
        assert!(body["timestamp"].is_string() && body["cache"].is_string());
    }
    let (status, ready) = app.get("/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    app.post_json("/api/v1/events", &json!({"event_type": "x"}))
        .await;
    let (status, ingestion) = app.get("/api/v1/internal/ingestion-metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ingestion["events_ingested"], 1);
    assert_eq!(ingestion["events_failed"], 0);
    assert_eq!(ingestion["batches_processed"], 1);
    assert_eq!(ingestion["last_batch_size"], 1);
    assert!(
        ingestion["last_batch_duration"]
            .as_str()
            .unwrap()
            .ends_with('s')
    );
    assert!(ingestion["total_latency"].is_string());
    // Per source: one event received over HTTP and stored; nothing else
    // configured, so no stream source is listed.
    let http = &ingestion["sources"]["http"];
    assert_eq!(
        (http["received"].clone(), http["committed"].clone()),
        (json!(1), json!(1)),
        "{ingestion}"
    );
    assert_eq!(http["duplicates"], 0, "{ingestion}");
    assert!(ingestion["sources"].get("kafka").is_none(), "{ingestion}");
    let (_, health) = app.get("/health").await;
    assert_eq!(health["sources"], json!({}), "{health}");
}

#[tokio::test]
async fn prometheus_series_exist_and_move() {
    let app = spawn_app().await;
    app.post_json("/api/v1/events", &json!({"event_type": "x"}))
        .await;
    app.get("/api/v1/events/stats").await;
    let text = app.metrics_text().await;
    for series in [
        "analytics_events_ingested_total 1",
        "analytics_events_failed_total 0",
        "analytics_batches_processed_total 1",
        "analytics_batch_duration_seconds_count 1",
        "analytics_query_duration_seconds_count{query=\"stats\"} 1",
        "analytics_cache_hits_total",
        "analytics_cache_misses_total",
        "analytics_active_connections",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let response = app
        .client
        .get(app.url("/api/v1/metrics"))
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!generated.is_empty());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "metric_name is required");
    assert_eq!(body["request_id"], generated);
}
