//! The Kafka source against librdkafka's mock cluster (a real Kafka-protocol
//! broker on loopback ports, with consumer groups and offset commits): every
//! message stored exactly once, offsets acknowledged only after the store
//! commit, poison messages dead-lettered, a crash between the store commit
//! and the offset commit, a store outage, and two instances sharing a group.
//!
//! Each test makes its own cluster, topic and group; the service (in process
//! or a child process) runs on the store `store_env_for` chooses, so the
//! suite's PostgreSQL pass runs these again on PostgreSQL.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use analytics::sources::position_id;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_counts, now_ms, postgres_selected, spawn_app_with, store_env_for,
    wait_for_total,
};
use crate::postgres_outage::{BIN as POSTGRES_BIN, PrivateServer};

/// A mock cluster with one topic, and a producer to it.
struct Broker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    producer: BaseProducer,
    topic: String,
    partitions: i32,
    /// The timestamp of the `index`th payload of a `produce` call is this
    /// plus `index` (epoch ms).
    produced_at_ms: i64,
}

impl Broker {
    fn new(topic: &str, partitions: i32) -> Broker {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster
            .create_topic(topic, partitions, 1)
            .expect("create topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "1")
            .create()
            .expect("producer");
        Broker {
            cluster,
            producer,
            topic: topic.to_string(),
            partitions,
            produced_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        }
    }

    fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Produces `payloads` round-robin over the partitions and waits until
    /// the broker has them all.
    fn produce(&self, payloads: &[Vec<u8>]) {
        for (index, payload) in payloads.iter().enumerate() {
            let partition = index as i32 % self.partitions;
            let key = index.to_string();
            let mut record = BaseRecord::to(&self.topic)
                .partition(partition)
                .key(&key)
                .payload(payload)
                .timestamp(self.produced_at_ms + index as i64);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((_, returned)) => {
                        record = returned;
                        self.producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        self.producer
            .flush(Duration::from_secs(10))
            .expect("flush the producer");
    }

    /// The high watermark of each partition.
    fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        (0..self.partitions)
            .map(|partition| {
                let (_, high) = self
                    .producer
                    .client()
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(5))
                    .expect("watermarks");
                (partition, high)
            })
            .collect()
    }

    /// The offsets `group` committed, per partition (-1: none), read by a
    /// separate consumer that does not join the group.
    fn committed_offsets(&self, group: &str) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .create()
            .expect("offset reader");
        let mut partitions = TopicPartitionList::new();
        for partition in 0..self.partitions {
            partitions.add_partition(&self.topic, partition);
        }
        let committed = consumer
            .committed_offsets(partitions, Duration::from_secs(5))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|element| {
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => -1,
                };
                (element.partition(), offset)
            })
            .collect()
    }
}

/// The environment that points a service at `broker` as member of `group`.
fn kafka_env(broker: &Broker, group: &str) -> Vec<(String, String)> {
    [
        ("ANALYTICS_KAFKA__BROKERS", broker.bootstrap()),
        ("ANALYTICS_KAFKA__TOPICS", broker.topic.clone()),
        ("ANALYTICS_KAFKA__CONSUMER_GROUP", group.to_string()),
        ("ANALYTICS_KAFKA__SESSION_TIMEOUT", "6s".to_string()),
        ("ANALYTICS_KAFKA__BATCH_SIZE", "40".to_string()),
        ("ANALYTICS_KAFKA__MAX_IN_FLIGHT", "3".to_string()),
    ]
    .map(|(key, value)| (key.to_string(), value))
    .to_vec()
}

async fn spawn_kafka_app(broker: &Broker, group: &str, extra: &[(&str, &str)]) -> TestApp {
    let env = kafka_env(broker, group);
    let mut overrides: Vec<(&str, &str)> = env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    overrides.extend_from_slice(extra);
    spawn_app_with(&overrides).await
}

/// A realistic mix: order events with prices, page views, half with their
/// own id (some produced twice, as a producer retry would), half without.
fn mixed_events(count: usize, tag: &str) -> (Vec<Vec<u8>>, BTreeMap<String, u64>) {
    let now = now_ms();
    let mut payloads = Vec::new();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for index in 0..count {
        let event_type = ["order.placed", "order.filled", "page.view"][index % 3];
        let mut event = json!({
            "event_type": event_type,
            "timestamp": now - (index as i64 % 600) * 1000,
            "user_id": format!("user-{}", index % 7),
            "properties": {"tag": tag, "index": index, "price": 10 + index % 5, "quantity": 1},
        });
        if index % 2 == 0 {
            event["id"] = json!(uuid::Uuid::new_v4().to_string());
        }
        let payload = serde_json::to_vec(&event).unwrap();
        if index % 10 == 0 {
            payloads.push(payload.clone()); // a producer retry: same id
        }
        payloads.push(payload);
        *by_type.entry(event_type.to_string()).or_default() += 1;
    }
    (payloads, by_type)
}

/// Polls until `check` holds for the JSON at `url` or the deadline passes;
/// returns the last answer.
async fn wait_until(client: &reqwest::Client, url: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let body: Value = match client.get(url).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if check(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn every_kafka_event_is_stored_exactly_once_and_acknowledged_after() {
    let broker = Broker::new("trading.events", 3);
    let group = unique("exact");
    let app = spawn_kafka_app(&broker, &group, &[]).await;
    let (payloads, by_type) = mixed_events(600, "exact");
    broker.produce(&payloads);

    let address = app.address.to_string();
    assert_counts(&app.client, &address, &by_type).await;
    // Acknowledged: the group's committed offsets reach the end of every
    // partition (committed after each batch when auto commit is off).
    let high = broker.high_watermarks();
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.committed_offsets(&group) != high && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.committed_offsets(&group), high);

    let metrics = wait_until(
        &app.client,
        &app.url("/api/v1/internal/ingestion-metrics"),
        |body| {
            body["sources"]["kafka"]["partitions"]
                .as_array()
                .map(Vec::len)
                == Some(3)
                && body["sources"]["kafka"]["lag"] == 0
        },
    )
    .await;
    let kafka = &metrics["sources"]["kafka"];
    assert_eq!(kafka["received"], payloads.len(), "{kafka}");
    assert_eq!(kafka["committed"], 600, "{kafka}");
    assert_eq!(kafka["duplicates"], payloads.len() - 600, "{kafka}");
    assert_eq!(kafka["lag"], 0, "{kafka}");
    let (_, health) = app.get("/health").await;
    assert_eq!(health["sources"]["kafka"], "connected", "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_replayed_after_a_schema_fix() {
    let broker = Broker::new("user.actions", 1);
    let group = unique("poison");
    let app = spawn_kafka_app(&broker, &group, &[]).await;
    let (status, created) = app
        .post_json(
            "/api/v1/custom-events",
            &json!({"name": "desk.note", "display_name": "Desk note", "description": "",
                    "schema": {"type": "object", "required": ["price"]}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");

    let good = |index: usize| json!({"event_type": "page.view", "properties": {"i": index}});
    let mut payloads: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&good(0)).unwrap(),
        b"{not json".to_vec(),                 // offset 1
        br#"{"user_id": "no type"}"#.to_vec(), // offset 2
        br#"{"event_type": "desk.note", "properties": {"size": 1}}"#.to_vec(), // offset 3
    ];
    for index in 1..=20 {
        payloads.push(serde_json::to_vec(&good(index)).unwrap());
    }
    broker.produce(&payloads);

    let stats = wait_for_total(&app.client, &app.address.to_string(), 21).await;
    assert_eq!(
        stats["total_events"], 21,
        "the partition kept flowing: {stats}"
    );
    // The dead letters are stored right after the batch's events.
    let listed = wait_until(
        &app.client,
        &app.url("/api/v1/internal/dead-letters?source=kafka"),
        |body| body["count"] == 3,
    )
    .await;
    let letters = listed["dead_letters"].as_array().unwrap();
    let positions: Vec<(String, i64, i64)> = letters
        .iter()
        .map(|letter| {
            (
                letter["topic"].as_str().unwrap().to_string(),
                letter["partition"].as_i64().unwrap(),
                letter["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        positions,
        vec![
            ("user.actions".to_string(), 0, 1),
            ("user.actions".to_string(), 0, 2),
            ("user.actions".to_string(), 0, 3)
        ],
        "{listed}"
    );
    for letter in letters {
        assert!(!letter["error"].as_str().unwrap().is_empty(), "{letter}");
        // The id a replay gives it: where the message sits and when the
        // broker stored it (one partition, so offset = index produced).
        let offset = letter["offset"].as_i64().unwrap();
        assert_eq!(
            letter["event_id"].as_str().unwrap(),
            position_id(
                &format!("user.actions/0/{offset}"),
                Some(broker.produced_at_ms + offset)
            )
            .to_string(),
            "{letter}"
        );
    }
    assert!(letters[0]["error"].as_str().unwrap().contains("JSON"));
    assert!(letters[1]["error"].as_str().unwrap().contains("event_type"));
    // Their offsets advanced with the batch: nothing is left to consume.
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.committed_offsets(&group)[&0] != payloads.len() as i64 && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.committed_offsets(&group)[&0], payloads.len() as i64);

    // Fix the schema; the replay stores the note (the broken JSON stays).
    let updated = app
        .client
        .put(app.url("/api/v1/custom-events/desk.note"))
        .json(&json!({"schema": {"type": "object", "required": ["size"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let (status, report) = app
        .post_json(
            "/api/v1/internal/dead-letters/replay?source=kafka",
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            report["replayed"].as_u64(),
            report["still_failing"].as_u64()
        ),
        (Some(1), Some(2)),
        "{report}"
    );
    let stats = wait_for_total(&app.client, &app.address.to_string(), 22).await;
    assert_eq!(stats["by_type"]["desk.note"], 1, "{stats}");
    assert_eq!(stats["total_events"], 22, "{stats}");
}

/// A batch's events are stored in id order (position ids begin with the
/// broker's time); of two messages with one id, the earlier offset must
/// still be the one stored, and the rest of the batch all of it.
#[tokio::test]
async fn of_two_messages_with_one_id_the_earlier_offset_is_stored() {
    let broker = Broker::new("user.actions", 1);
    let group = unique("first-wins");
    let shared = uuid::Uuid::now_v7().to_string();
    let message = |which: &str| {
        serde_json::to_vec(
            &json!({"id": shared, "event_type": "desk.pick", "properties": {"which": which}}),
        )
        .unwrap()
    };
    // Messages without an id get position ids of about the same time, so
    // in id order they come before and after the pair, which sits early
    // in the partition: the consumer's first batch (what librdkafka has
    // fetched when it starts) holds both.
    let other = |index: usize| {
        serde_json::to_vec(&json!({"event_type": "desk.other", "properties": {"index": index}}))
            .unwrap()
    };
    let mut payloads: Vec<Vec<u8>> = (0..3).map(other).collect();
    payloads.push(message("first"));
    payloads.extend((3..6).map(other));
    payloads.push(message("second"));
    payloads.extend((6..41).map(other));
    broker.produce(&payloads);
    let app = spawn_kafka_app(&broker, &group, &[]).await;

    let stats = wait_for_total(&app.client, &app.address.to_string(), 42).await;
    assert_eq!(stats["by_type"]["desk.other"], 41, "{stats}");
    assert_eq!(stats["by_type"]["desk.pick"], 1, "{stats}");
    let (status, listed) = app.get("/api/v1/events?event_type=desk.pick").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["events"][0]["id"], shared.as_str(), "{listed}");
    assert_eq!(
        listed["events"][0]["properties"]["which"], "first",
        "{listed}"
    );
}

#[tokio::test]
async fn an_overloaded_pipeline_slows_the_consumer_and_loses_nothing() {
    let broker = Broker::new("market.data", 2);
    let group = unique("overload");
    // A queue of 40 events and batches of 40 messages, 3 in flight: every
    // batch beyond the first is refused as overloaded until there is room.
    let app = spawn_kafka_app(
        &broker,
        &group,
        &[
            ("ANALYTICS_ANALYTICS__INGESTION__BATCH_SIZE", "20"),
            ("ANALYTICS_ANALYTICS__INGESTION__BUFFER_SIZE", "40"),
        ],
    )
    .await;
    let (payloads, by_type) = mixed_events(800, "overload");
    broker.produce(&payloads);
    assert_counts(&app.client, &app.address.to_string(), &by_type).await;
    let overloaded: f64 = app
        .metrics_text()
        .await
        .lines()
        .find_map(|line| line.strip_prefix("analytics_ingest_overloaded_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("overload counter");
    assert!(overloaded > 0.0, "the pipeline pushed back");
    let high = broker.high_watermarks();
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.committed_offsets(&group) != high && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.committed_offsets(&group), high);
}

/// A service process on port 0 consuming from a mock cluster; killed when
/// dropped.
struct ServiceProcess(crate::helpers::ServiceProcess);

impl std::ops::Deref for ServiceProcess {
    type Target = crate::helpers::ServiceProcess;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ServiceProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl ServiceProcess {
    fn start(database: &std::path::Path, env: &[(String, String)]) -> ServiceProcess {
        let mut all = store_env_for(database);
        all.extend(env.iter().cloned());
        ServiceProcess(crate::helpers::ServiceProcess::start(&all))
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        self.child.wait().expect("wait for the service")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

#[tokio::test]
async fn crash_between_store_commit_and_offset_commit_redelivers_without_double_counting() {
    let broker = Broker::new("order.events", 2);
    let group = unique("crash");
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("analytics.db");
    let _schema = crate::helpers::SchemaGuard::for_path(&database);
    let mut env = kafka_env(&broker, &group);
    // Offsets are stored but would be committed only in an hour.
    env.push(("ANALYTICS_KAFKA__ENABLE_AUTO_COMMIT".into(), "true".into()));
    env.push(("ANALYTICS_KAFKA__COMMIT_INTERVAL".into(), "1h".into()));
    let client = reqwest::Client::new();

    let mut first = ServiceProcess::start(&database, &env);
    let (payloads, by_type) = mixed_events(300, "crash");
    broker.produce(&payloads);
    assert_counts(&client, &first.address, &by_type).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    // The crash came before any offset commit: the group acknowledged nothing.
    assert!(
        broker
            .committed_offsets(&group)
            .values()
            .all(|offset| *offset < 0),
        "{:?}",
        broker.committed_offsets(&group)
    );

    let restarted = ServiceProcess::start(&database, &env);
    // Everything is read again; the store recognises every event.
    let metrics = wait_until(
        &client,
        &restarted.url("/api/v1/internal/ingestion-metrics"),
        |body| body["sources"]["kafka"]["received"].as_u64() == Some(payloads.len() as u64),
    )
    .await;
    let kafka = &metrics["sources"]["kafka"];
    assert_eq!(kafka["received"], payloads.len(), "{kafka}");
    let after = wait_until(
        &client,
        &restarted.url("/api/v1/internal/ingestion-metrics"),
        |body| body["sources"]["kafka"]["duplicates"].as_u64() == Some(payloads.len() as u64),
    )
    .await;
    assert_eq!(
        (
            &after["sources"]["kafka"]["committed"],
            &after["sources"]["kafka"]["duplicates"]
        ),
        (&json!(0), &json!(payloads.len())),
        "{after}"
    );
    assert_counts(&client, &restarted.address, &by_type).await;
}

#[tokio::test]
async fn two_instances_share_the_group_and_survive_a_rebalance() {
    if !postgres_selected() {
        eprintln!(
            "SKIPPED (SQLite pass): two instances need a shared store; this test runs in the PostgreSQL pass"
        );
        return;
    }
    let broker = Broker::new("market.data", 4);
    let group = unique("shared");
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("analytics.db");
    let _schema = crate::helpers::SchemaGuard::for_path(&database);
    let env = kafka_env(&broker, &group);
    let client = reqwest::Client::new();
    let mut first = ServiceProcess::start(&database, &env);
    let second = ServiceProcess::start(&database, &env);

    // One message per partition, then both must hold disjoint partitions
    // that together are all four.
    let (warmup, mut by_type) = mixed_events(4, "warmup");
    broker.produce(&warmup[1..]); // the first payload is a retry copy
    let partitions_of = |body: &Value| -> Vec<i64> {
        body["sources"]["kafka"]["partitions"]
            .as_array()
            .map(|partitions| {
                partitions
                    .iter()
                    .filter_map(|partition| partition["partition"].as_i64())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut mine, mut theirs);
    loop {
        let read = |url: String| {
            let client = client.clone();
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()
            }
        };
        mine = partitions_of(
            &read(first.url("/api/v1/internal/ingestion-metrics"))
                .await
                .unwrap_or_default(),
        );
        theirs = partitions_of(
            &read(second.url("/api/v1/internal/ingestion-metrics"))
                .await
                .unwrap_or_default(),
        );
        let mut all: Vec<i64> = mine.iter().chain(theirs.iter()).copied().collect();
        all.sort();
        if (all == vec![0, 1, 2, 3] && !mine.is_empty() && !theirs.is_empty())
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !mine.is_empty() && !theirs.is_empty(),
        "both members hold partitions: {mine:?} {theirs:?}"
    );

    // Load, and the first member leaves mid-run.
    let (payloads, counted) = mixed_events(800, "shared");
    for (event_type, count) in counted {
        *by_type.entry(event_type).or_default() += count;
    }
    let (early, late) = payloads.split_at(payloads.len() / 2);
    broker.produce(early);
    let stats = wait_for_total(&client, &second.address, 50).await;
    assert!(stats["total_events"].as_u64().unwrap() >= 50);
    let status = first.terminate();
    assert!(status.success(), "the leaving member drains and exits 0");
    broker.produce(late);

    assert_counts(&client, &second.address, &by_type).await;
    let metrics = wait_until(
        &client,
        &second.url("/api/v1/internal/ingestion-metrics"),
        |body| partitions_of(body).len() == 4,
    )
    .await;
    assert_eq!(partitions_of(&metrics).len(), 4, "{metrics}");
    let high = broker.high_watermarks();
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.committed_offsets(&group) != high && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.committed_offsets(&group), high);
}

#[tokio::test]
async fn nothing_is_acknowledged_while_the_store_is_down_and_nothing_is_lost() {
    if !postgres_selected() {
        eprintln!(
            "SKIPPED (SQLite pass): the Kafka store-outage test stops a private PostgreSQL; it runs in the PostgreSQL pass"
        );
        return;
    }
    let Some(server) = PrivateServer::create() else {
        panic!("PostgreSQL server binaries not found under {POSTGRES_BIN}");
    };
    let broker = Broker::new("trading.events", 1);
    let group = unique("outage");
    let port = server.port.to_string();
    let app = spawn_kafka_app(
        &broker,
        &group,
        &[
            ("ANALYTICS_DATABASE__HOST", "127.0.0.1"),
            ("ANALYTICS_DATABASE__PORT", port.as_str()),
            ("ANALYTICS_DATABASE__DATABASE", "postgres"),
            ("ANALYTICS_DATABASE__SCHEMA", "kafka_outage"),
            ("ANALYTICS_ANALYTICS__QUERY__TIMEOUT", "2s"),
        ],
    )
    .await;
    let address = app.address.to_string();
    let (before, mut by_type) = mixed_events(20, "before");
    broker.produce(&before);
    let stored_before = before.len() as i64;
    assert_counts(&app.client, &address, &by_type).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.committed_offsets(&group)[&0] != stored_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.committed_offsets(&group)[&0], stored_before);

    server.stop();
    let (during, counted) = mixed_events(30, "during");
    for (event_type, count) in counted {
        *by_type.entry(event_type).or_default() += count;
    }
    broker.produce(&during);
    // The batch was read and its commit failed (at least once) ...
    let metrics = wait_until(
        &app.client,
        &app.url("/api/v1/internal/ingestion-metrics"),
        |body| {
            body["sources"]["kafka"]["received"].as_i64() >= Some(stored_before + 30)
                && body["events_failed"].as_u64() > Some(0)
        },
    )
    .await;
    assert!(metrics["events_failed"].as_u64() > Some(0), "{metrics}");
    // ... so nothing of it is acknowledged.
    assert_eq!(
        broker.committed_offsets(&group)[&0],
        stored_before,
        "offsets of unstored events were committed"
    );
    let (_, health) = app.get("/health").await;
    assert_eq!(health["database"], "disconnected", "{health}");

    server.start();
    assert_counts(&app.client, &address, &by_type).await;
    let everything = (before.len() + during.len()) as i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.committed_offsets(&group)[&0] != everything && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.committed_offsets(&group)[&0], everything);
}
