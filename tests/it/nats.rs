//! The NATS JetStream source (issue 8) against the machine's NATS server
//! (`NATS_URL`, default `nats://127.0.0.1:4222`): each test its own stream
//! and subjects (a random tag), deleted at the end.
//!
//! Without a NATS server these tests say `SKIPPED: NATS unreachable` and
//! pass, except under `CI=true`, where that is a failure.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use analytics::sources::position_id;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use serde_json::{Value, json};

use crate::helpers::{SchemaGuard, TestApp, now_ms, postgres_selected, rfc3339, spawn_app_with};
use crate::postgres_outage::{BIN, PrivateServer};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A client of the shared NATS server; says SKIPPED when there is none
/// (fails under CI).
async fn shared_nats() -> Option<async_nats::Client> {
    let url = nats_url();
    let connected = tokio::time::timeout(
        Duration::from_secs(3),
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str()),
    )
    .await;
    let problem = match connected {
        // A raw account-info request: works whatever the server version.
        Ok(Ok(client)) => match client.request("$JS.API.INFO", "".into()).await {
            Ok(reply) if !String::from_utf8_lossy(&reply.payload).contains("\"error\"") => {
                return Some(client);
            }
            Ok(reply) => format!("JetStream: {}", String::from_utf8_lossy(&reply.payload)),
            Err(error) => format!("JetStream: {error}"),
        },
        Ok(Err(error)) => error.to_string(),
        Err(_) => "connection timed out".to_string(),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "NATS (with JetStream) at {url} is unreachable under CI: {problem}"
    );
    eprintln!("SKIPPED: NATS with JetStream unreachable at {url}: {problem}");
    None
}

/// A stream of one test: `T_<tag>` on `test.<tag>.>` and
/// `orders.updates.<SYMBOL><tag>` for the test's symbols. Deleted on drop.
/// (A stream of `orders.updates.>` on the server, e.g. one a benchmark
/// left, overlaps the latter: JetStream refuses the test stream then.)
struct TestStream {
    js: jetstream::Context,
    url: String,
    /// On a private server: not deleted on drop (the server goes).
    private: bool,
    name: String,
    tag: String,
    subjects: Vec<String>,
}

impl TestStream {
    async fn create(client: &async_nats::Client, symbols: &[&str]) -> TestStream {
        TestStream::create_at(client, &nats_url(), symbols).await
    }

    /// The stream on the server at `url` (that `client` is connected to).
    async fn create_at(client: &async_nats::Client, url: &str, symbols: &[&str]) -> TestStream {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase();
        let name = format!("T_{tag}");
        let mut subjects = vec![format!("test.{tag}.>")];
        subjects.extend(
            symbols
                .iter()
                .map(|symbol| format!("orders.updates.{symbol}{tag}")),
        );
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: subjects.clone(),
            duplicate_window: Duration::from_secs(1),
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|error| {
            panic!("create the test stream on {subjects:?} (does another stream overlap?): {error}")
        });
        TestStream {
            js,
            url: url.to_string(),
            private: false,
            name,
            tag,
            subjects,
        }
    }

    fn events_subject(&self) -> String {
        format!("test.{}.events", self.tag)
    }

    /// The symbol of this test for `base` (`BTC` -> `BTC<tag>`).
    fn symbol(&self, base: &str) -> String {
        format!("{base}{}", self.tag)
    }

    /// The service's NATS settings for this stream and `durable`.
    fn env(&self, durable: &str) -> Vec<(String, String)> {
        [
            ("ANALYTICS_NATS__SERVERS", self.url.clone()),
            ("ANALYTICS_NATS__STREAM", self.name.clone()),
            ("ANALYTICS_NATS__SUBJECTS", self.subjects.join(",")),
            ("ANALYTICS_NATS__DURABLE", durable.to_string()),
            ("ANALYTICS_NATS__BATCH_SIZE", "200".to_string()),
            ("ANALYTICS_NATS__ACK_WAIT", "2s".to_string()),
            ("ANALYTICS_NATS__NAK_DELAY", "200ms".to_string()),
        ]
        .map(|(key, value)| (key.to_string(), value))
        .into()
    }

    /// Publishes and waits for the stream's acknowledgement; returns the
    /// stream sequence.
    async fn publish(&self, subject: &str, payload: Vec<u8>, message_id: Option<&str>) -> u64 {
        let mut publish = PublishMessage::build().payload(payload.into());
        if let Some(id) = message_id {
            publish = publish.message_id(id);
        }
        self.js
            .send_publish(subject.to_string(), publish)
            .await
            .expect("publish")
            .await
            .expect("publish acknowledged")
            .sequence
    }

    /// Publishes `count` events of `event_type` (`properties.index` 0, 1,
    /// ...) concurrently, then waits for every acknowledgement, so the
    /// stream holds them all before a service starts taking them.
    async fn publish_indexed(&self, subject: &str, event_type: &str, count: u64) {
        let mut acks = Vec::new();
        for index in 0..count {
            let payload = json!({"event_type": event_type, "properties": {"index": index}});
            acks.push(
                self.js
                    .publish(subject.to_string(), payload.to_string().into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("publish acknowledged");
        }
    }

    async fn publish_json(&self, subject: &str, value: &Value) -> u64 {
        self.publish(subject, value.to_string().into_bytes(), None)
            .await
    }

    /// The consumer's info, waiting (a few seconds at most) for the
    /// service to create it.
    async fn consumer_info(&self, durable: &str) -> jetstream::consumer::Info {
        let stream = self.js.get_stream(&self.name).await.expect("stream");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match stream.consumer_info(durable).await {
                Ok(info) => return info,
                Err(error) if Instant::now() > deadline => {
                    panic!("consumer {durable} of {}: {error}", self.name)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until `durable` has nothing pending nor unacknowledged.
    async fn wait_drained(&self, durable: &str, within: Duration) -> jetstream::consumer::Info {
        let deadline = Instant::now() + within;
        loop {
            let info = self.consumer_info(durable).await;
            if (info.num_pending == 0 && info.num_ack_pending == 0) || Instant::now() > deadline {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestStream {
    /// Deletes the stream over a connection of its own: the test's client
    /// lives on the test's runtime, which this blocks.
    fn drop(&mut self) {
        if self.private {
            return;
        }
        let name = self.name.clone();
        let url = self.url.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let client = async_nats::connect(url).await.ok()?;
                jetstream::new(client).delete_stream(&name).await.ok()
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(_))) {
            eprintln!("warning: could not delete test stream {}", self.name);
        }
    }
}

async fn spawn_with(env: &[(String, String)], more: &[(&str, &str)]) -> TestApp {
    let mut overrides: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    overrides.extend_from_slice(more);
    spawn_app_with(&overrides).await
}

/// `GET /api/v1/events/stats` over the last day and the next hour.
async fn stats_at(client: &reqwest::Client, base: &str) -> Value {
    let response = client
        .get(format!("{base}/api/v1/events/stats"))
        .query(&[
            ("start_time", rfc3339(now_ms() - 86_400_000)),
            ("end_time", rfc3339(now_ms() + 3_600_000)),
        ])
        .send()
        .await
        .expect("stats");
    assert_eq!(response.status(), 200);
    response.json().await.expect("stats body")
}

async fn stats(app: &TestApp) -> Value {
    stats_at(&app.client, &format!("http://{}", app.address)).await
}

/// Polls the stats until `total_events` is at least `expected` (or time
/// runs out) and returns the last answer.
async fn wait_total_at(
    client: &reqwest::Client,
    base: &str,
    expected: u64,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let stats = stats_at(client, base).await;
        if stats["total_events"].as_u64().unwrap_or(0) >= expected || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_total(app: &TestApp, expected: u64, within: Duration) -> Value {
    wait_total_at(
        &app.client,
        &format!("http://{}", app.address),
        expected,
        within,
    )
    .await
}

/// The sum of a metric over the last day (and the next hour), by day.
async fn metric_sum(app: &TestApp, metric: &str) -> f64 {
    let (status, body) = app
        .get_query(
            "/api/v1/metrics",
            &[
                ("metric_name", metric.to_string()),
                ("interval", "1d".to_string()),
                ("start_time", rfc3339(now_ms() - 86_400_000)),
                ("end_time", rfc3339(now_ms() + 3_600_000)),
            ],
        )
        .await;
    assert_eq!(status, 200, "{metric}: {body}");
    body["result"]["data_points"]
        .as_array()
        .expect("data points")
        .iter()
        .map(|point| point["value"].as_f64().unwrap_or(0.0))
        .sum()
}

/// `analytics_source_messages_total{source="nats",outcome=...}`.
fn source_counter(metrics: &str, outcome: &str) -> u64 {
    let prefix =
        format!("analytics_source_messages_total{{outcome=\"{outcome}\",source=\"nats\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

const TYPES: [&str; 4] = [
    "order.placed",
    "page.view",
    "market.data.update",
    "user.login",
];

#[tokio::test]
async fn every_published_event_is_stored_exactly_once() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &[]).await;
    let subject = stream.events_subject();
    let mut expected_by_type = std::collections::BTreeMap::<&str, u64>::new();
    let mut own_ids = Vec::new();
    let mut header_ids = Vec::new();
    for index in 0..400usize {
        let event_type = TYPES[index % TYPES.len()];
        *expected_by_type.entry(event_type).or_default() += 1;
        let mut event = json!({"event_type": event_type, "user_id": format!("u{}", index % 7),
                               "properties": {"index": index, "price": 10, "quantity": 1}});
        match index % 4 {
            // No id at all: the stream position names it.
            0 => {
                stream.publish_json(&subject, &event).await;
            }
            // Its own id.
            1 => {
                let id = uuid::Uuid::new_v4().to_string();
                event["id"] = json!(id);
                own_ids.push(event.clone());
                stream.publish_json(&subject, &event).await;
            }
            // A Nats-Msg-Id that is a UUID, or any other string.
            _ => {
                let id = if index % 4 == 2 {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    format!("msg-{}-{index}", stream.tag)
                };
                stream
                    .publish(&subject, event.to_string().into_bytes(), Some(&id))
                    .await;
                header_ids.push((id, event));
            }
        }
    }
    let app = spawn_with(&stream.env("analytics"), &[]).await;
    // Published again (new stream messages) once JetStream's 1 s duplicate
    // window has passed: only the ids make them duplicates.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for event in own_ids.iter().take(30) {
        stream.publish_json(&subject, event).await;
    }
    for (id, event) in header_ids.iter().take(30) {
        stream
            .publish(&subject, event.to_string().into_bytes(), Some(id))
            .await;
    }
    let info = stream
        .wait_drained("analytics", Duration::from_secs(15))
        .await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "every message acknowledged: {info:?}"
    );
    let answer = wait_total(&app, 400, Duration::from_secs(5)).await;
    // A late duplicate would show after a moment: look again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer_again = stats(&app).await;
    assert_eq!(answer["total_events"], 400, "{answer}");
    assert_eq!(answer_again["total_events"], 400, "{answer_again}");
    for (event_type, count) in &expected_by_type {
        assert_eq!(
            answer["by_type"][*event_type].as_u64(),
            Some(*count),
            "{event_type}: {answer}"
        );
        assert_eq!(
            metric_sum(&app, &format!("events.count.{event_type}")).await,
            *count as f64,
            "rollup of {event_type}"
        );
    }
    let metrics = app.metrics_text().await;
    assert_eq!(source_counter(&metrics, "received"), 460, "{metrics}");
    assert_eq!(source_counter(&metrics, "committed"), 400);
    assert_eq!(source_counter(&metrics, "duplicate"), 60);
    let (_, health) = app.get("/health").await;
    assert_eq!(health["sources"]["nats"], "connected", "{health}");
    assert!(
        metrics.contains(&format!(
            "analytics_consumer_lag{{partition=\"-1\",source=\"nats\",topic=\"{}\"}} 0",
            stream.name
        )),
        "lag reported for the stream: {metrics}"
    );
}

/// An order update of the order-execution service.
fn order_update(
    order_id: &str,
    symbol: &str,
    update_type: &str,
    state: &str,
    (quantity, price): (&str, &str),
    (filled, average): (&str, &str),
) -> Value {
    let now = rfc3339(now_ms());
    json!({
        "order": {
            "order_id": order_id, "client_order_id": format!("c-{order_id}"), "symbol": symbol,
            "side": "BUY", "type": "LIMIT", "state": state, "time_in_force": "GTC",
            "quantity": quantity, "price": price, "filled_quantity": filled,
            "average_price": average, "fee": "0.01", "fee_asset": "USDT", "user_id": "trader-1",
            "created_at": now, "updated_at": now
        },
        "update_type": update_type,
        "timestamp": now
    })
}

#[tokio::test]
async fn order_updates_count_each_order_once() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &["BTC", "ETH"]).await;
    let btc = stream.symbol("BTC");
    let eth = stream.symbol("ETH");
    let tag = stream.tag.clone();
    let id = |n: u32| format!("{tag}-o{n}");
    let (o1, o2, o3, o4, o5, o6) = (id(1), id(2), id(3), id(4), id(5), id(6));
    let updates = [
        // o1: placed, partly filled, filled at 1 @ 101 (the update twice).
        order_update(&o1, &btc, "CREATED", "NEW", ("1", "100"), ("0", "0")),
        order_update(
            &o1,
            &btc,
            "UPDATED",
            "PARTIALLY_FILLED",
            ("1", "100"),
            ("0.4", "100"),
        ),
        order_update(&o1, &btc, "FILLED", "FILLED", ("1", "100"), ("1", "101")),
        order_update(&o1, &btc, "FILLED", "FILLED", ("1", "100"), ("1", "101")),
        // o2: 0.5 @ 50 filled, then canceled.
        order_update(&o2, &btc, "CREATED", "NEW", ("2", "50"), ("0", "0")),
        order_update(
            &o2,
            &btc,
            "UPDATED",
            "PARTIALLY_FILLED",
            ("2", "50"),
            ("0.5", "50"),
        ),
        order_update(
            &o2,
            &btc,
            "CANCELED",
            "CANCELED",
            ("2", "50"),
            ("0.5", "50"),
        ),
        // o3: canceled unfilled; o4: rejected.
        order_update(&o3, &btc, "CREATED", "NEW", ("1", "90"), ("0", "0")),
        order_update(&o3, &btc, "CANCELED", "CANCELED", ("1", "90"), ("0", "0")),
        order_update(&o4, &eth, "CREATED", "NEW", ("5", "20"), ("0", "0")),
        order_update(&o4, &eth, "REJECTED", "REJECTED", ("5", "20"), ("0", "0")),
        // o5: out of order (filled before created), filled twice, created twice.
        order_update(&o5, &eth, "FILLED", "FILLED", ("3", "10"), ("3", "10")),
        order_update(
            &o5,
            &eth,
            "UPDATED",
            "PARTIALLY_FILLED",
            ("3", "10"),
            ("1", "10"),
        ),
        order_update(&o5, &eth, "CREATED", "NEW", ("3", "10"), ("0", "0")),
        order_update(&o5, &eth, "FILLED", "FILLED", ("3", "10"), ("3", "10")),
        order_update(&o5, &eth, "CREATED", "NEW", ("3", "10"), ("0", "0")),
        // o6: only progress, which counts for nothing yet.
        order_update(
            &o6,
            &eth,
            "UPDATED",
            "PARTIALLY_FILLED",
            ("1", "10"),
            ("0.5", "10"),
        ),
    ];
    for update in &updates {
        let symbol = update["order"]["symbol"].as_str().unwrap();
        stream
            .publish_json(&format!("orders.updates.{symbol}"), update)
            .await;
    }
    let app = spawn_with(&stream.env("analytics"), &[]).await;
    // A redelivery of the whole history must change nothing either.
    for update in updates.iter().take(4) {
        let symbol = update["order"]["symbol"].as_str().unwrap();
        stream
            .publish_json(&format!("orders.updates.{symbol}"), update)
            .await;
    }
    let info = stream
        .wait_drained("analytics", Duration::from_secs(15))
        .await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    // placed 5 (o1..o5), filled 3 (o1, o2 partial, o5), canceled 2, rejected 1.
    let answer = wait_total(&app, 11, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = stats(&app).await;
    assert_eq!(
        (&answer["total_events"], &answer["by_type"]),
        (&again["total_events"], &again["by_type"]),
        "nothing more arrives"
    );
    assert_eq!(answer["total_events"], 11, "{answer}");
    for (event_type, count) in [
        ("order.placed", 5),
        ("order.filled", 3),
        ("order.canceled", 2),
        ("order.rejected", 1),
    ] {
        assert_eq!(
            answer["by_type"][event_type].as_u64(),
            Some(count),
            "{event_type}: {answer}"
        );
        assert_eq!(
            metric_sum(&app, &format!("events.count.{event_type}")).await,
            count as f64,
            "rollup of {event_type}"
        );
    }
    // Filled notional: o1 1 × 101, o2 0.5 × 50, o5 3 × 10.
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let total = metric_sum(&app, "trading.total_volume").await;
    assert!(close(total, 156.0), "total volume {total}");
    let by_btc = metric_sum(&app, &format!("trading.volume.{btc}")).await;
    assert!(close(by_btc, 126.0), "{btc} volume {by_btc}");
    let by_eth = metric_sum(&app, &format!("trading.volume.{eth}")).await;
    assert!(close(by_eth, 30.0), "{eth} volume {by_eth}");
    let metrics = app.metrics_text().await;
    // The UPDATED messages (o1, o2, o5, o6 and o1's again).
    assert_eq!(source_counter(&metrics, "skipped"), 5, "{metrics}");
    assert_eq!(source_counter(&metrics, "dead_lettered"), 0, "{metrics}");
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_once_and_the_stream_flows_on() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &["BTC"]).await;
    let subject = stream.events_subject();
    let orders = format!("orders.updates.{}", stream.symbol("BTC"));
    let good = json!({"event_type": "page.view"});
    let mut poison = Vec::new();
    for index in 0..30 {
        stream.publish_json(&subject, &good).await;
        if index % 10 == 5 {
            poison.push((
                subject.clone(),
                stream.publish(&subject, b"{oops".to_vec(), None).await,
                "not valid JSON",
            ));
            poison.push((
                subject.clone(),
                stream
                    .publish_json(&subject, &json!({"user_id": "u"}))
                    .await,
                "event_type",
            ));
            poison.push((
                orders.clone(),
                stream
                    .publish_json(
                        &orders,
                        &json!({"order": {"order_id": "x"}, "update_type": "NEW", "timestamp": 1}),
                    )
                    .await,
                "update_type",
            ));
        }
    }
    let app = spawn_with(&stream.env("analytics"), &[]).await;
    let info = stream
        .wait_drained("analytics", Duration::from_secs(15))
        .await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    // Past ack_wait (2 s): a terminated message is not redelivered.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = stream.consumer_info("analytics").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0),
        "{info:?}"
    );
    let answer = wait_total(&app, 30, Duration::from_secs(5)).await;
    assert_eq!(answer["total_events"], 30, "{answer}");
    let (status, listed) = app
        .get_query(
            "/api/v1/internal/dead-letters",
            &[("source", "nats".to_string()), ("limit", "100".to_string())],
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    let letters = listed["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), poison.len(), "{listed}");
    for (subject, sequence, needle) in &poison {
        let letter = letters
            .iter()
            .find(|letter| letter["offset"].as_u64() == Some(*sequence))
            .unwrap_or_else(|| panic!("no dead letter for sequence {sequence}: {listed}"));
        assert_eq!(letter["topic"], subject.as_str(), "{letter}");
        assert_eq!(letter["partition"], -1, "{letter}");
        assert_eq!(letter["source"], "nats", "{letter}");
        assert!(
            letter["error"].as_str().unwrap_or("").contains(needle),
            "{needle}: {letter}"
        );
        // The id a replay gives it: its place in the stream and the time
        // the stream stored it.
        let stored = stream
            .js
            .get_stream(&stream.name)
            .await
            .expect("the test stream")
            .get_raw_message(*sequence)
            .await
            .expect("the stored message");
        let stored_ms = i64::try_from(stored.time.unix_timestamp_nanos() / 1_000_000).unwrap();
        assert_eq!(
            letter["event_id"].as_str().unwrap_or(""),
            position_id(&format!("{}/{sequence}", stream.name), Some(stored_ms)).to_string(),
            "{letter}"
        );
    }
    let metrics = app.metrics_text().await;
    assert_eq!(source_counter(&metrics, "dead_lettered"), 9, "{metrics}");
}

/// A service process (the real binary) on port 0 consuming `stream`;
/// killed when dropped.
struct ServiceProcess(crate::helpers::ServiceProcess);

impl ServiceProcess {
    fn start(database: &Path, nats: &[(String, String)]) -> ServiceProcess {
        let mut env = crate::helpers::store_env_for(database);
        env.extend(nats.iter().cloned());
        ServiceProcess(crate::helpers::ServiceProcess::start(&env))
    }

    fn kill(mut self) {
        self.0.child.kill().expect("kill -9");
        self.0.child.wait().expect("reaped");
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

#[tokio::test]
async fn a_crash_between_commit_and_ack_loses_and_duplicates_nothing() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &[]).await;
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("analytics.db");
    let _schema = SchemaGuard::for_path(&database);
    let subject = stream.events_subject();
    const COUNT: u64 = 3000;
    // Published concurrently (acks awaited at the end), so that the stream
    // is full before the service starts taking it.
    stream
        .publish_indexed(&subject, "order.placed", COUNT)
        .await;
    let http = reqwest::Client::new();
    let env = stream.env("analytics");
    let first = ServiceProcess::start(&database, &env);
    // Killed as soon as the first events are visible: batches committed but
    // not yet acknowledged die with it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut visible = 0;
    while visible == 0 && Instant::now() < deadline {
        visible = stats_at(&http, &first.0.base_url()).await["total_events"]
            .as_u64()
            .unwrap_or(0);
    }
    first.kill();
    assert!(visible > 0, "nothing became visible before the kill");
    // The server may still be reading acknowledgements the process sent
    // before it died: the figures are taken once they stay put.
    let mut at_kill = stream.consumer_info("analytics").await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stream.consumer_info("analytics").await;
        if (now.delivered.consumer_sequence, now.num_ack_pending)
            == (at_kill.delivered.consumer_sequence, at_kill.num_ack_pending)
        {
            break;
        }
        at_kill = now;
    }
    let acknowledged = at_kill.delivered.consumer_sequence - at_kill.num_ack_pending as u64;
    eprintln!(
        "killed with {visible} visible, {acknowledged} acknowledged, {} unacknowledged",
        at_kill.num_ack_pending
    );

    let second = ServiceProcess::start(&database, &env);
    let info = stream
        .wait_drained("analytics", Duration::from_secs(20))
        .await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    let answer = wait_total_at(&http, &second.0.base_url(), COUNT, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = stats_at(&http, &second.0.base_url()).await;
    assert_eq!(answer["total_events"], COUNT, "{answer}");
    assert_eq!(again["total_events"], COUNT, "{again}");
    let metrics = http
        .get(second.0.metrics_url())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let duplicates = source_counter(&metrics, "duplicate");
    eprintln!("after the restart: {duplicates} redelivered events deduplicated");
    // What was stored but not acknowledged came back and was recognised.
    assert!(
        duplicates >= visible.saturating_sub(acknowledged),
        "{duplicates} duplicates, {visible} visible, {acknowledged} acknowledged at the kill"
    );
    assert_eq!(
        source_counter(&metrics, "committed") + duplicates,
        source_counter(&metrics, "received")
    );
}

#[tokio::test]
async fn a_failed_commit_naks_and_nothing_is_lost_when_the_store_is_back() {
    if !postgres_selected() {
        eprintln!("SKIPPED (SQLite pass): the NATS store-outage test runs in the PostgreSQL pass");
        return;
    }
    let Some(client) = shared_nats().await else {
        return;
    };
    let Some(server) = PrivateServer::create() else {
        panic!("PostgreSQL server binaries not found under {BIN}");
    };
    let stream = TestStream::create(&client, &[]).await;
    let subject = stream.events_subject();
    let port = server.port.to_string();
    let app = spawn_with(
        &stream.env("analytics"),
        &[
            ("ANALYTICS_DATABASE__HOST", "127.0.0.1"),
            ("ANALYTICS_DATABASE__PORT", port.as_str()),
            ("ANALYTICS_DATABASE__DATABASE", "postgres"),
            ("ANALYTICS_DATABASE__SCHEMA", "natsoutage"),
            ("ANALYTICS_ANALYTICS__QUERY__TIMEOUT", "2s"),
        ],
    )
    .await;
    for index in 0..50 {
        stream
            .publish_json(
                &subject,
                &json!({"event_type": "page.view", "properties": {"i": index}}),
            )
            .await;
    }
    let answer = wait_total(&app, 50, Duration::from_secs(10)).await;
    assert_eq!(answer["total_events"], 50, "{answer}");

    server.stop();
    for index in 50..150 {
        stream
            .publish_json(
                &subject,
                &json!({"event_type": "page.view", "properties": {"i": index}}),
            )
            .await;
    }
    // Several nak rounds (nak_delay 200 ms) while the store is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = stream.consumer_info("analytics").await;
    assert!(
        info.ack_floor.stream_sequence <= 50,
        "nothing acknowledged while the store is down: {info:?}"
    );
    server.start();
    let info = stream
        .wait_drained("analytics", Duration::from_secs(20))
        .await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    let answer = wait_total(&app, 150, Duration::from_secs(5)).await;
    assert_eq!(answer["total_events"], 150, "{answer}");
    let metrics = app.metrics_text().await;
    let received = source_counter(&metrics, "received");
    assert!(
        received > 150,
        "the batches that failed were delivered again: {received} deliveries"
    );
    assert_eq!(
        source_counter(&metrics, "committed") + source_counter(&metrics, "duplicate"),
        150,
        "{metrics}"
    );
}

#[tokio::test]
async fn two_instances_sharing_the_durable_store_every_event_once() {
    if !postgres_selected() {
        eprintln!("SKIPPED (SQLite pass): two instances share a store only in the PostgreSQL pass");
        return;
    }
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &[]).await;
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("shared.db");
    let _schema = SchemaGuard::for_path(&database);
    let path = database.display().to_string();
    let env = stream.env("shared");
    let first = spawn_with(&env, &[("ANALYTICS_DATABASE__PATH", path.as_str())]).await;
    let second = spawn_with(&env, &[("ANALYTICS_DATABASE__PATH", path.as_str())]).await;
    // Both bind before the messages arrive, so both have pulls waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    const COUNT: u64 = 2000;
    let subject = stream.events_subject();
    stream.publish_indexed(&subject, "page.view", COUNT).await;
    let info = stream.wait_drained("shared", Duration::from_secs(20)).await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    let answer = wait_total(&first, COUNT, Duration::from_secs(5)).await;
    assert_eq!(answer["total_events"], COUNT, "{answer}");
    let received = [
        source_counter(&first.metrics_text().await, "committed"),
        source_counter(&second.metrics_text().await, "committed"),
    ];
    assert_eq!(received[0] + received[1], COUNT, "{received:?}");
    assert!(
        received[0] > 0 && received[1] > 0,
        "both instances took a share: {received:?}"
    );
}

#[tokio::test]
async fn a_graceful_shutdown_acknowledges_everything_it_stored() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &[]).await;
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("analytics.db");
    let _schema = SchemaGuard::for_path(&database);
    let path = database.display().to_string();
    let subject = stream.events_subject();
    const COUNT: u64 = 3000;
    stream.publish_indexed(&subject, "page.view", COUNT).await;
    let env = stream.env("analytics");
    let mut first = spawn_with(&env, &[("ANALYTICS_DATABASE__PATH", path.as_str())]).await;
    let visible = wait_total(&first, 1, Duration::from_secs(10)).await;
    assert!(visible["total_events"].as_u64() > Some(0), "{visible}");
    first.stop().await.expect("clean stop");
    // What it stored it acknowledged before returning; what it had only
    // prefetched stays unacknowledged until ack_wait (2 s) redelivers it.
    let info = stream.consumer_info("analytics").await;
    let acknowledged = info.delivered.consumer_sequence - info.num_ack_pending as u64;
    eprintln!(
        "stopped after acknowledging {acknowledged} of {COUNT} ({} prefetched, unacknowledged)",
        info.num_ack_pending
    );

    let second = spawn_with(&env, &[("ANALYTICS_DATABASE__PATH", path.as_str())]).await;
    let info = stream
        .wait_drained("analytics", Duration::from_secs(20))
        .await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    let answer = wait_total(&second, COUNT, Duration::from_secs(5)).await;
    assert_eq!(answer["total_events"], COUNT, "{answer}");
    let metrics = second.metrics_text().await;
    assert_eq!(
        source_counter(&metrics, "duplicate"),
        0,
        "nothing stored before the stop came again: {metrics}"
    );
    assert_eq!(
        source_counter(&metrics, "committed"),
        COUNT - acknowledged,
        "{metrics}"
    );
}

/// A private `nats-server` with JetStream on a free port, killed and
/// started again on the same port and store.
struct PrivateNats {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// Further `nats-server` arguments (authentication).
    extra: Vec<String>,
}

const NATS_SERVER: &str = "/usr/sbin/nats-server";

impl PrivateNats {
    fn start() -> Option<PrivateNats> {
        PrivateNats::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Option<PrivateNats> {
        if !Path::new(NATS_SERVER).exists() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PrivateNats {
            child: None,
            port,
            store: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|arg| arg.to_string()).collect(),
        };
        server.run();
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn nats_health(app: &TestApp) -> Value {
    let (_, health) = app.get("/health").await;
    health["sources"]["nats"].clone()
}

async fn wait_health(app: &TestApp, wanted: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let state = nats_health(app).await;
        if state == wanted || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `analytics bench-nats-drain`, the benchmarks' floor for the NATS source,
/// acknowledges every message it takes, the last partial batch too: on a
/// work-queue stream an acknowledged message is removed, so the stream is
/// empty afterwards only if every ack reached the server.
#[tokio::test]
async fn the_drain_benchmark_acknowledges_every_message_it_takes() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase();
    let (name, subject) = (format!("T_DRAIN_{tag}"), format!("test.{tag}.events"));
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("test.{tag}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        max_age: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .expect("create the work-queue stream");
    let mut acks = Vec::new();
    for index in 0..250 {
        let payload = json!({"event_type": "drained", "properties": {"index": index}});
        acks.push(
            js.publish(subject.clone(), payload.to_string().into())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("publish acknowledged");
    }

    let output = Command::new(env!("CARGO_BIN_EXE_analytics"))
        .args([
            "bench-nats-drain",
            "--nats-url",
            &nats_url(),
            "--stream",
            &name,
        ])
        .args([
            "--durable",
            "drain",
            "--count",
            "250",
            "--batch-size",
            "100",
        ])
        .output();
    let mut stream = js.get_stream(&name).await.expect("stream");
    let left = stream.info().await.expect("stream info").state.messages;
    let consumers = stream
        .info()
        .await
        .expect("stream info")
        .state
        .consumer_count;
    js.delete_stream(&name).await.expect("delete the stream");

    let output = output.expect("run bench-nats-drain");
    assert!(
        output.status.success(),
        "bench-nats-drain failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["messages"], 250, "{report}");
    assert!(
        report["events_per_second"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert_eq!(left, 0, "messages left unacknowledged in the work queue");
    assert_eq!(consumers, 0, "the drain's durable was not deleted");
}

#[tokio::test]
async fn the_source_reconnects_when_nats_restarts() {
    let Some(mut server) = PrivateNats::start() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{NATS_SERVER} missing under CI"
        );
        eprintln!("SKIPPED: no {NATS_SERVER} to restart");
        return;
    };
    let client = async_nats::connect(server.url()).await.expect("connect");
    let stream = TestStream::create_at(&client, &server.url(), &[]).await;
    let subject = stream.events_subject();
    let app = spawn_with(&stream.env("analytics"), &[]).await;
    for index in 0..50 {
        stream
            .publish_json(
                &subject,
                &json!({"event_type": "page.view", "properties": {"i": index}}),
            )
            .await;
    }
    assert_eq!(
        wait_total(&app, 50, Duration::from_secs(10)).await["total_events"],
        50
    );
    assert_eq!(
        wait_health(&app, "connected", Duration::from_secs(3)).await,
        "connected"
    );

    server.kill();
    assert_eq!(
        wait_health(&app, "disconnected", Duration::from_secs(5)).await,
        "disconnected"
    );
    let (status, health) = app.get("/health").await;
    assert_eq!(health["status"], "degraded", "{status} {health}");

    server.run();
    assert_eq!(
        wait_health(&app, "connected", Duration::from_secs(15)).await,
        "connected",
        "the source reconnected by itself"
    );
    // A client of its own: the first one may still be reconnecting.
    let client = async_nats::connect(server.url()).await.expect("reconnect");
    let js = jetstream::new(client);
    for index in 50..100 {
        let payload = json!({"event_type": "page.view", "properties": {"i": index}});
        js.publish(subject.clone(), payload.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("publish acknowledged");
    }
    let answer = wait_total(&app, 100, Duration::from_secs(15)).await;
    assert_eq!(answer["total_events"], 100, "{answer}");
}

/// Connects the service to a private server requiring `auth` (server
/// arguments) with `credentials` (service settings); returns whether the
/// service stored an event published there.
async fn stores_through(
    server_auth: &[&str],
    client: async_nats::ConnectOptions,
    credentials: &[(&str, &str)],
) -> Option<bool> {
    let server = PrivateNats::start_with(server_auth)?;
    let client = client
        .connect(server.url())
        .await
        .expect("test client connects");
    let mut stream = TestStream::create_at(&client, &server.url(), &[]).await;
    // The server and its store go with the test.
    stream.private = true;
    let app = spawn_with(&stream.env("analytics"), credentials).await;
    stream
        .publish_json(
            &stream.events_subject(),
            &json!({"event_type": "page.view"}),
        )
        .await;
    let stored = wait_total(&app, 1, Duration::from_secs(5)).await["total_events"] == 1;
    let connected = nats_health(&app).await == "connected";
    assert_eq!(
        stored, connected,
        "health says connected exactly when it works"
    );
    Some(stored)
}

#[tokio::test]
async fn the_source_authenticates_with_user_and_password_or_token() {
    let user = ["--user", "analytics", "--pass", "s3cret"];
    let Some(stored) = stores_through(
        &user,
        async_nats::ConnectOptions::with_user_and_password("analytics".into(), "s3cret".into()),
        &[
            ("ANALYTICS_NATS__USER", "analytics"),
            ("ANALYTICS_NATS__PASSWORD", "s3cret"),
        ],
    )
    .await
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{NATS_SERVER} missing under CI"
        );
        eprintln!("SKIPPED: no {NATS_SERVER} for a private server");
        return;
    };
    assert!(stored, "user and password");
    let wrong = stores_through(
        &user,
        async_nats::ConnectOptions::with_user_and_password("analytics".into(), "s3cret".into()),
        &[
            ("ANALYTICS_NATS__USER", "analytics"),
            ("ANALYTICS_NATS__PASSWORD", "wrong"),
        ],
    )
    .await;
    assert_eq!(wrong, Some(false), "a wrong password stores nothing");
    let token = stores_through(
        &["--auth", "t0ken"],
        async_nats::ConnectOptions::with_token("t0ken".into()),
        &[("ANALYTICS_NATS__TOKEN", "t0ken")],
    )
    .await;
    assert_eq!(token, Some(true), "token");
}

/// base64url without padding: how NATS JWTs encode their parts.
fn base64url(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// A NATS (v2) JWT as the nats-io/jwt library encodes one: the header
/// `{"typ":"JWT","alg":"ed25519-nkey"}`, the claims (`jti` a unique id, as
/// there the base32 of the SHA-512/256 of the standard claims) with `nats`
/// the claim's own part, and `signer`'s ed25519 signature of
/// `header.payload`, all base64url without padding. `issuer` (`iss`) is
/// normally `signer`'s public key.
fn nats_jwt(
    subject: &str,
    name: &str,
    issuer: &str,
    signer: &nkeys::KeyPair,
    nats: Value,
) -> String {
    use sha2::Digest as _;
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"iat": issued_at, "iss": issuer, "name": name, "sub": subject});
    let hash = sha2::Sha512_256::digest(claims.to_string().as_bytes());
    claims["jti"] = json!(data_encoding::BASE32_NOPAD.encode(&hash));
    claims["nats"] = nats;
    let signed = format!(
        "{}.{}",
        base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let signature = signer.sign(signed.as_bytes()).expect("sign the JWT");
    format!("{signed}.{}", base64url(&signature))
}

/// The JWT of `user`, a user of the account `account` (`iss`), signed by
/// `signer` (the account itself, unless a forgery): no permissions (it may
/// publish and subscribe to everything) and no limits.
fn user_jwt(user: &nkeys::KeyPair, account: &nkeys::KeyPair, signer: &nkeys::KeyPair) -> String {
    nats_jwt(
        &user.public_key(),
        "analytics",
        &account.public_key(),
        signer,
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
               "type": "user", "version": 2}),
    )
}

/// Decentralized (operator mode) authentication, as `nsc` sets it up: a
/// server configuration trusting an operator and knowing one account of
/// it (a memory resolver), with JetStream enabled; its users log in with a
/// `.creds` file (their JWT, signed by the account, and their NKey seed).
struct OperatorTrust {
    directory: tempfile::TempDir,
    /// `-c` of the server.
    config: String,
    account: nkeys::KeyPair,
    /// A `.creds` file of a user of the account, for the test's client.
    creds: String,
}

impl OperatorTrust {
    fn new() -> OperatorTrust {
        let directory = tempfile::tempdir().unwrap();
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        // The system account: without one, 2.9 will not start JetStream
        // ("system account not setup").
        let system = nkeys::KeyPair::new_account();
        let operator_jwt = nats_jwt(
            &operator.public_key(),
            "test-operator",
            &operator.public_key(),
            &operator,
            json!({"system_account": system.public_key(), "type": "operator", "version": 2}),
        );
        let account_jwt = |account: &nkeys::KeyPair, name: &str, jetstream: bool| {
            // The account limits of nats-io/jwt's NewAccountClaims
            // (unlimited), JetStream unlimited too when enabled.
            let mut limits = json!({
                "subs": -1, "data": -1, "payload": -1,
                "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
            });
            if jetstream {
                for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
                    limits[key] = json!(-1);
                }
            }
            nats_jwt(
                &account.public_key(),
                name,
                &operator.public_key(),
                &operator,
                json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                       "type": "account", "version": 2}),
            )
        };
        let operator_file = directory.path().join("operator.jwt");
        std::fs::write(&operator_file, &operator_jwt).unwrap();
        let config = directory.path().join("server.conf");
        std::fs::write(
            &config,
            format!(
                "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
                operator_file.display(),
                system.public_key(),
                system.public_key(),
                account_jwt(&system, "SYS", false),
                account.public_key(),
                account_jwt(&account, "analytics", true),
            ),
        )
        .unwrap();
        let mut trust = OperatorTrust {
            config: config.display().to_string(),
            directory,
            account,
            creds: String::new(),
        };
        let user = nkeys::KeyPair::new_user();
        trust.creds = trust.write_creds(
            "client",
            &user_jwt(&user, &trust.account, &trust.account),
            &user,
        );
        trust
    }

    /// Writes `<name>.creds`, in the format `nsc` writes: the user JWT
    /// `jwt` and the NKey seed of `seed_of`; returns its path.
    fn write_creds(&self, name: &str, jwt: &str, seed_of: &nkeys::KeyPair) -> String {
        let seed = seed_of.seed().expect("seed");
        let path = self.directory.path().join(format!("{name}.creds"));
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
                 *************************************************************\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    }

    fn log_path(&self, name: &str) -> String {
        self.directory
            .path()
            .join(format!("{name}.log"))
            .display()
            .to_string()
    }

    /// The log of the server `stores_with(name, ..)` ran.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// [`stores_through`] a server of this trust (logging to
    /// `<name>.log`), the test's client with its own `.creds`, the
    /// service with `service_creds`.
    async fn stores_with(&self, name: &str, service_creds: &str) -> Option<bool> {
        let client = async_nats::ConnectOptions::with_credentials_file(&self.creds)
            .await
            .expect("read the client's .creds");
        stores_through(
            &["-c", &self.config, "-l", &self.log_path(name)],
            client,
            &[("ANALYTICS_NATS__CREDENTIALS_FILE", service_creds)],
        )
        .await
    }
}

#[tokio::test]
async fn the_source_authenticates_with_a_creds_file() {
    let trust = OperatorTrust::new();
    let user = nkeys::KeyPair::new_user();
    let creds = trust.write_creds(
        "analytics",
        &user_jwt(&user, &trust.account, &trust.account),
        &user,
    );
    let Some(stored) = trust.stores_with("valid", &creds).await else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{NATS_SERVER} missing under CI"
        );
        eprintln!("SKIPPED: no {NATS_SERVER} for a private server");
        return;
    };
    assert!(
        stored,
        "the .creds file of a user of the account; server log:\n{}",
        trust.log("valid")
    );

    // Refused by the server (its log names the service's connection, the
    // test's own client logging in with a good file): a user whose account
    // the server does not know, a user JWT naming the account but signed
    // by another, a seed that does not sign for the JWT's user.
    let stranger = nkeys::KeyPair::new_account();
    let unknown_account = trust.write_creds(
        "unknown-account",
        &user_jwt(&user, &stranger, &stranger),
        &user,
    );
    let forged = trust.write_creds("forged", &user_jwt(&user, &trust.account, &stranger), &user);
    let wrong_seed = trust.write_creds(
        "wrong-seed",
        &user_jwt(&user, &trust.account, &trust.account),
        &nkeys::KeyPair::new_user(),
    );
    // (A file that cannot be read stops the start: config.rs's tests.)
    let (unknown_account, forged, wrong_seed) = tokio::join!(
        trust.stores_with("unknown-account", &unknown_account),
        trust.stores_with("forged", &forged),
        trust.stores_with("wrong-seed", &wrong_seed),
    );
    for (name, stored, what) in [
        (
            "unknown-account",
            unknown_account,
            "a user of an account the server does not know",
        ),
        ("forged", forged, "a user JWT not signed by its account"),
        ("wrong-seed", wrong_seed, "a seed that is not the user's"),
    ] {
        let log = trust.log(name);
        assert_eq!(
            stored,
            Some(false),
            "{what} stores nothing; server log:\n{log}"
        );
        assert!(
            log.contains("analytics\" - authentication error"),
            "{what}: refused by the server; server log:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_full_ingest_queue_is_waited_out_and_nothing_is_lost() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &[]).await;
    let subject = stream.events_subject();
    const COUNT: u64 = 2000;
    stream.publish_indexed(&subject, "page.view", COUNT).await;
    // A queue of 20 events: two batches of 200 at once cannot both have it.
    let app = spawn_with(
        &stream.env("analytics"),
        &[
            ("ANALYTICS_ANALYTICS__INGESTION__BATCH_SIZE", "10"),
            ("ANALYTICS_ANALYTICS__INGESTION__BUFFER_SIZE", "20"),
        ],
    )
    .await;
    let info = stream
        .wait_drained("analytics", Duration::from_secs(30))
        .await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    let answer = wait_total(&app, COUNT, Duration::from_secs(5)).await;
    assert_eq!(answer["total_events"], COUNT, "{answer}");
    let metrics = app.metrics_text().await;
    let overloaded = crate::cache::series_value(&metrics, "analytics_ingest_overloaded_total");
    assert!(
        overloaded > 0.0,
        "the queue was full at times: {overloaded}"
    );
    assert_eq!(source_counter(&metrics, "committed"), COUNT, "{metrics}");
    assert_eq!(
        source_counter(&metrics, "received"),
        COUNT,
        "nothing naked, nothing redelivered"
    );
}

#[tokio::test]
async fn an_existing_durable_takes_the_configured_ack_wait() {
    let Some(client) = shared_nats().await else {
        return;
    };
    let stream = TestStream::create(&client, &[]).await;
    // Made earlier, by hand or by an older configuration: ack_wait 60 s.
    stream
        .js
        .get_stream(&stream.name)
        .await
        .expect("stream")
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("old".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await
        .expect("create the old durable");
    let app = spawn_with(&stream.env("old"), &[]).await;
    stream
        .publish_json(
            &stream.events_subject(),
            &json!({"event_type": "page.view"}),
        )
        .await;
    wait_total(&app, 1, Duration::from_secs(10)).await;
    let info = stream.consumer_info("old").await;
    // The configuration says 2 s (TestStream::env) and batches of 200:
    // room for 7 batches (see nats::bind), 1 400.
    assert_eq!(info.config.ack_wait, Duration::from_secs(2));
    assert_eq!(info.config.max_ack_pending, 1_400);
}
