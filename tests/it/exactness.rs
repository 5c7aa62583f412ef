//! Exactly-once, exact answers: stats and metrics equal a plain count of the
//! raw events for any range, under duplicates and late events.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{TestApp, now_ms, rfc3339, spawn_app};

const TYPES: [&str; 5] = [
    "order.placed",
    "order.filled",
    "order.canceled",
    "page.view",
    "market.data.update",
];

struct RawEvent {
    timestamp_ms: i64,
    event_type: &'static str,
    latency_ms: f64,
}

fn generate(rng: &mut Rng, count: usize, start_ms: i64, span_ms: i64) -> Vec<RawEvent> {
    (0..count)
        .map(|_| RawEvent {
            timestamp_ms: start_ms + rng.random_range(0..span_ms),
            event_type: TYPES[rng.random_range(0..TYPES.len())],
            latency_ms: f64::from(rng.random_range(1..5000u32)) / 10.0,
        })
        .collect()
}

async fn ingest(app: &TestApp, events: &[RawEvent]) {
    for chunk in events.chunks(1000) {
        let body: Vec<Value> = chunk
            .iter()
            .map(|event| {
                json!({"event_type": event.event_type, "timestamp": event.timestamp_ms,
                       "properties": {"latency_ms": event.latency_ms, "price": 100, "quantity": event.latency_ms}})
            })
            .collect();
        let (status, answer) = app.post_json("/api/v1/events/batch", &json!(body)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["accepted"].as_u64(),
            Some(chunk.len() as u64),
            "{answer}"
        );
    }
}

/// SplitMix64: a small deterministic generator, so the data is the same on
/// every run and a failure reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `range` (half-open; the range is small next to 2^64, so
    /// modulo bias is negligible).
    pub(crate) fn random_range<T: TryFrom<u64> + TryInto<u64> + Copy>(
        &mut self,
        range: std::ops::Range<T>,
    ) -> T
    where
        <T as TryFrom<u64>>::Error: std::fmt::Debug,
        <T as TryInto<u64>>::Error: std::fmt::Debug,
    {
        let start: u64 = range.start.try_into().unwrap();
        let end: u64 = range.end.try_into().unwrap();
        T::try_from(start + self.next() % (end - start)).unwrap()
    }
}

fn rng() -> Rng {
    Rng(0x0b25)
}

#[tokio::test]
async fn stats_equal_raw_counts_over_random_unaligned_ranges() {
    let app = spawn_app().await;
    let mut rng = rng();
    let now = now_ms();
    let span = 3 * 86_400_000;
    let events = generate(&mut rng, 3000, now - span, span);
    ingest(&app, &events).await;
    for _ in 0..40 {
        let a = now - span - 3_600_000 + rng.random_range(0..span + 3_600_000);
        let b = a + rng.random_range(0..span);
        let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
        for event in events
            .iter()
            .filter(|event| (a..=b).contains(&event.timestamp_ms))
        {
            *expected.entry(event.event_type).or_default() += 1;
        }
        let (status, stats) = app
            .get_query(
                "/api/v1/events/stats",
                &[("start_time", a.to_string()), ("end_time", rfc3339(b))],
            )
            .await;
        assert_eq!(status, 200);
        let by_type: BTreeMap<String, u64> =
            serde_json::from_value(stats["by_type"].clone()).unwrap();
        let expected: BTreeMap<String, u64> = expected
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect();
        assert_eq!(by_type, expected, "range [{a}, {b}]");
        assert_eq!(
            stats["total_events"].as_u64().unwrap(),
            expected.values().sum::<u64>()
        );
    }
}

#[tokio::test]
async fn metric_series_equal_raw_buckets_for_every_interval() {
    let app = spawn_app().await;
    let mut rng = rng();
    let now = now_ms();
    let span = 2 * 86_400_000;
    let events = generate(&mut rng, 2000, now - span, span);
    ingest(&app, &events).await;
    for (interval, millis) in [
        ("1m", 60_000i64),
        ("5m", 300_000),
        ("15m", 900_000),
        ("30m", 1_800_000),
        ("1h", 3_600_000),
        ("4h", 14_400_000),
        ("1d", 86_400_000),
    ] {
        for _ in 0..3 {
            let a = now - span + rng.random_range(0..span);
            let b = a + rng.random_range(0..span / 2);
            let in_range = || {
                events
                    .iter()
                    .filter(|event| (a..=b).contains(&event.timestamp_ms))
            };
            let mut expected_counts: BTreeMap<i64, u64> = BTreeMap::new();
            let mut expected_latency: BTreeMap<i64, (u64, f64, f64, f64)> = BTreeMap::new();
            for event in in_range() {
                let bucket = event.timestamp_ms.div_euclid(millis) * millis;
                if event.event_type == "page.view" {
                    *expected_counts.entry(bucket).or_default() += 1;
                }
                if event.event_type.starts_with("order.") {
                    let entry =
                        expected_latency
                            .entry(bucket)
                            .or_insert((0, 0.0, f64::MAX, f64::MIN));
                    entry.0 += 1;
                    entry.1 += event.latency_ms;
                    entry.2 = entry.2.min(event.latency_ms);
                    entry.3 = entry.3.max(event.latency_ms);
                }
            }
            let query = |name: &str| {
                vec![
                    ("metric_name", name.to_string()),
                    ("interval", interval.to_string()),
                    ("start_time", rfc3339(a)),
                    ("end_time", rfc3339(b)),
                ]
            };
            let (status, counted) = app
                .get_query("/api/v1/metrics", &query("events.count.page.view"))
                .await;
            assert_eq!(status, 200, "{counted}");
            let actual: BTreeMap<String, u64> = counted["result"]["data_points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|point| {
                    (
                        point["timestamp"].as_str().unwrap().to_string(),
                        point["value"].as_f64().unwrap() as u64,
                    )
                })
                .collect();
            let expected: BTreeMap<String, u64> = expected_counts
                .iter()
                .map(|(bucket, count)| (rfc3339(*bucket), *count))
                .collect();
            assert_eq!(actual, expected, "interval {interval} range [{a}, {b}]");

            let (_, latency) = app
                .get_query("/api/v1/metrics", &query("orders.latency_ms"))
                .await;
            let points = latency["result"]["data_points"].as_array().unwrap();
            assert_eq!(points.len(), expected_latency.len());
            for (point, (bucket, (count, sum, min, max))) in points.iter().zip(&expected_latency) {
                assert_eq!(point["timestamp"], rfc3339(*bucket));
                assert_eq!(point["count"].as_u64(), Some(*count));
                assert!((point["sum"].as_f64().unwrap() - sum).abs() < 1e-6 * sum.max(1.0));
                assert_eq!(point["min"].as_f64(), Some(*min));
                assert_eq!(point["max"].as_f64(), Some(*max));
            }
        }
    }
}

#[tokio::test]
async fn late_event_updates_old_bucket() {
    let app = spawn_app().await;
    let now = now_ms();
    let old_hour = (now - 5 * 3_600_000).div_euclid(3_600_000) * 3_600_000;
    let query = [
        ("metric_name", "events.count.order.placed".to_string()),
        ("interval", "1h".to_string()),
        ("start_time", rfc3339(old_hour)),
        ("end_time", rfc3339(old_hour + 3_599_999)),
    ];
    app.post_json(
        "/api/v1/events",
        &json!({"event_type": "order.placed", "timestamp": old_hour + 10}),
    )
    .await;
    app.post_json("/api/v1/events", &json!({"event_type": "order.placed"}))
        .await;
    let (_, before) = app.get_query("/api/v1/metrics", &query).await;
    assert_eq!(before["result"]["data_points"][0]["value"], 1.0);
    // Arrives now, belongs five hours back.
    let (status, _) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "order.placed", "timestamp": rfc3339(old_hour + 1_800_000)}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, after) = app.get_query("/api/v1/metrics", &query).await;
    assert_eq!(after["result"]["data_points"][0]["value"], 2.0, "{after}");
    assert_eq!(after["result"]["data_points"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn resent_batches_are_not_counted_twice() {
    let app = spawn_app().await;
    let now = now_ms();
    let events: Vec<Value> = (0..500)
        .map(|index| json!({"id": uuid::Uuid::new_v4().to_string(), "event_type": "order.filled", "timestamp": now - index * 1000,
                            "properties": {"price": 2, "quantity": 3}}))
        .collect();
    let (_, first) = app.post_json("/api/v1/events/batch", &json!(events)).await;
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(500), Some(0))
    );
    let (_, second) = app.post_json("/api/v1/events/batch", &json!(events)).await;
    assert_eq!(
        (second["accepted"].as_u64(), second["duplicates"].as_u64()),
        (Some(0), Some(500))
    );
    let (_, stats) = app.get("/api/v1/events/stats").await;
    assert_eq!(stats["total_events"], 500);
    let (_, volume) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "trading.total_volume".into()),
                ("interval", "1d".into()),
            ],
        )
        .await;
    let total: f64 = volume["result"]["data_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["value"].as_f64().unwrap())
        .sum();
    assert_eq!(total, 3000.0);
}

#[tokio::test]
async fn event_stamped_ahead_in_the_current_minute_is_not_counted_early() {
    let app = spawn_app().await;
    let now = now_ms();
    let minute_end = now - now.rem_euclid(60_000) + 60_000;
    // Ahead of "now" but, when there is room, inside the current minute:
    // the current bucket then holds an event outside the queried range.
    let ahead = (now + 20_000).min(minute_end - 1).max(now + 1);
    for (timestamp, event_type) in [(now - 1_000, "order.placed"), (ahead, "order.placed")] {
        let (status, _) = app
            .post_json(
                "/api/v1/events",
                &json!({"event_type": event_type, "timestamp": timestamp}),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (_, stats) = app
        .get_query(
            "/api/v1/events/stats",
            &[
                ("start_time", rfc3339(now - 60_000)),
                ("end_time", rfc3339(now)),
            ],
        )
        .await;
    assert_eq!(stats["total_events"], 1, "{stats}");
    let (_, later) = app
        .get_query(
            "/api/v1/events/stats",
            &[
                ("start_time", rfc3339(now - 60_000)),
                ("end_time", rfc3339(ahead)),
            ],
        )
        .await;
    assert_eq!(later["total_events"], 2, "{later}");
}

#[tokio::test]
async fn series_finer_than_every_stored_interval_are_counted_per_bucket() {
    let app =
        crate::helpers::spawn_app_with(&[("ANALYTICS_ANALYTICS__AGGREGATION__INTERVALS", "[1h]")])
            .await;
    let now = now_ms();
    let minute = now - now.rem_euclid(60_000);
    let events: Vec<Value> = [
        minute - 3 * 60_000 + 5,
        minute - 3 * 60_000 + 9,
        minute - 60_000 + 1,
    ]
    .iter()
    .map(|timestamp| json!({"event_type": "page.view", "timestamp": timestamp}))
    .collect();
    assert_eq!(
        app.post_json("/api/v1/events/batch", &json!(events))
            .await
            .0,
        200
    );
    let (_, body) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", "events.count.page.view".to_string()),
                ("interval", "1m".to_string()),
                ("start_time", rfc3339(minute - 10 * 60_000)),
                ("end_time", rfc3339(now)),
            ],
        )
        .await;
    let points: Vec<(String, f64)> = body["result"]["data_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| {
            (
                point["timestamp"].as_str().unwrap().to_string(),
                point["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        points,
        vec![
            (rfc3339(minute - 3 * 60_000), 2.0),
            (rfc3339(minute - 60_000), 1.0)
        ],
        "{body}"
    );
}
