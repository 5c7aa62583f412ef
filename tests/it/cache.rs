//! The query cache, in process (the default): hits are reported and
//! counted, and a commit into a cached range is visible at once even with a
//! long TTL.

use serde_json::{Value, json};

use crate::helpers::{TestApp, now_ms, rfc3339, spawn_app, spawn_app_with};

const DAY: i64 = 86_400_000;

/// The value of an unlabelled Prometheus series.
pub fn series_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// `/metrics` of order placements per hour over [start, end].
pub async fn placed_per_hour(app: &TestApp, start: i64, end: i64) -> Value {
    let (status, body) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "events.count.order.placed".to_string()),
                ("interval", "1h".to_string()),
                ("start_time", rfc3339(start)),
                ("end_time", rfc3339(end)),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub fn total(body: &Value) -> f64 {
    body["result"]["data_points"]
        .as_array()
        .expect("data points")
        .iter()
        .map(|point| point["value"].as_f64().unwrap_or(0.0))
        .sum()
}

#[tokio::test]
async fn second_identical_metrics_call_is_cached_and_counted() {
    let app = spawn_app().await;
    let day_start = (now_ms() - 3 * DAY).div_euclid(DAY) * DAY;
    let events: Vec<Value> = (0..3)
        .map(|index| json!({"event_type": "order.placed", "timestamp": day_start + 3_600_000 + index}))
        .collect();
    assert_eq!(
        app.post_json("/api/v1/events/batch", &json!(events))
            .await
            .0,
        200
    );
    let (start, end) = (day_start, day_start + DAY - 1);
    let before = app.metrics_text().await;
    let first = placed_per_hour(&app, start, end).await;
    assert_eq!(first["cached"], false);
    let second = placed_per_hour(&app, start, end).await;
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(first["result"], second["result"]);
    assert_eq!(total(&second), 3.0);
    let after = app.metrics_text().await;
    let moved = |name: &str| series_value(&after, name) - series_value(&before, name);
    assert_eq!(moved("analytics_cache_hits_total"), 1.0);
    assert_eq!(moved("analytics_cache_misses_total"), 1.0);

    // The same range written another way (epoch milliseconds, parameters in
    // another order) is the same query.
    let (_, third) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("end_time", end.to_string()),
                ("start_time", start.to_string()),
                ("metric_name", "events.count.order.placed".to_string()),
            ],
        )
        .await;
    assert_eq!(third["cached"], true, "{third}");

    // Stats are cached too; the answer is byte for byte the computed one.
    let range = [("start_time", rfc3339(start)), ("end_time", rfc3339(end))];
    let (_, computed) = app.get_query("/api/v1/events/stats", &range).await;
    let hits = series_value(&app.metrics_text().await, "analytics_cache_hits_total");
    let (_, cached) = app.get_query("/api/v1/events/stats", &range).await;
    assert_eq!(computed, cached);
    assert_eq!(cached["total_events"], 3);
    assert_eq!(
        series_value(&app.metrics_text().await, "analytics_cache_hits_total"),
        hits + 1.0
    );
}

#[tokio::test]
async fn late_event_is_visible_in_the_next_call_despite_a_long_ttl() {
    let app = spawn_app_with(&[("ANALYTICS_ANALYTICS__QUERY__CACHE_TTL", "60s")]).await;
    let day_start = (now_ms() - 5 * DAY).div_euclid(DAY) * DAY;
    let (start, end) = (day_start, day_start + 2 * DAY - 1);
    let event =
        |offset: i64| json!({"event_type": "order.placed", "timestamp": day_start + offset});
    assert_eq!(app.post_json("/api/v1/events", &event(1_000)).await.0, 201);
    placed_per_hour(&app, start, end).await;
    let cached = placed_per_hour(&app, start, end).await;
    assert_eq!(cached["cached"], true);
    assert_eq!(total(&cached), 1.0);

    // A late event on the second day of the range.
    assert_eq!(
        app.post_json("/api/v1/events", &event(DAY + 7_200_000))
            .await
            .0,
        201
    );
    let next = placed_per_hour(&app, start, end).await;
    assert_eq!(next["cached"], false, "{next}");
    assert_eq!(total(&next), 2.0, "{next}");

    // An event outside the range leaves the answer cached.
    assert_eq!(
        app.post_json("/api/v1/events", &event(3 * DAY)).await.0,
        201
    );
    let untouched = placed_per_hour(&app, start, end).await;
    assert_eq!(untouched["cached"], true, "{untouched}");
    assert_eq!(total(&untouched), 2.0);
}

#[tokio::test]
async fn defaulted_range_is_never_served_from_the_cache() {
    let app = spawn_app().await;
    for _ in 0..2 {
        let (status, body) = app
            .get_query(
                "/api/v1/metrics",
                &[("metric_name", "events.count.order.placed".to_string())],
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["cached"], false);
    }
    // The dashboard is cached per second but a commit still shows at once.
    let (_, before) = app.get("/api/v1/dashboard/metrics").await;
    let placed = before["orders_placed"].as_f64().unwrap_or(0.0);
    assert_eq!(
        app.post_json("/api/v1/events", &json!({"event_type": "order.placed"}))
            .await
            .0,
        201
    );
    let (_, after) = app.get("/api/v1/dashboard/metrics").await;
    assert_eq!(
        after["orders_placed"].as_f64(),
        Some(placed + 1.0),
        "{after}"
    );
}

#[tokio::test]
async fn health_reports_the_in_process_cache_as_healthy() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["cache"], "in_process");
}
