//! Several instances as one service (the scale-out proof): three service
//! processes on one PostgreSQL schema, one Redis and one Kafka cluster (the
//! librdkafka mock cluster, a real Kafka-protocol broker on loopback), a
//! mixed load of HTTP batches to each and stream messages, one instance
//! killed (-9) mid-run. Then: every acknowledged event is stored exactly
//! once, rollups equal the raw counts, the rate limit held across the
//! instances as one budget, and the dead instance's partitions moved to the
//! survivors.
//!
//! Runs in the PostgreSQL pass of the suite (`ANALYTICS_TEST_STORE=postgres`,
//! see scripts/test.sh): several processes share one store only there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::helpers::{
    SchemaGuard, ServiceProcess, assert_counts, now_ms, postgres_selected, store_env_for,
};
use crate::redis::{random_prefix, redis_env, shared_redis};

const TOPIC: &str = "trading.events";
const PARTITIONS: i32 = 6;
const TYPES: [&str; 4] = [
    "order.placed",
    "order.filled",
    "page.view",
    "market.data.update",
];

/// A service process, killed when dropped.
struct Instance(ServiceProcess);

impl Instance {
    fn start(env: &[(String, String)]) -> Instance {
        Instance(ServiceProcess::start(env))
    }

    fn url(&self, path: &str) -> String {
        self.0.url(path)
    }

    fn address(&self) -> &str {
        &self.0.address
    }

    fn kill(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn event(id: Option<String>, index: usize, timestamp: i64) -> Value {
    let mut event = json!({
        "event_type": TYPES[index % TYPES.len()],
        "user_id": format!("user-{}", index % 17),
        "timestamp": timestamp,
        "properties": {"symbol": "BTCUSDT", "price": 100 + index % 7, "quantity": 1},
    });
    if let Some(id) = id {
        event["id"] = json!(id);
    }
    event
}

async fn produce(
    producer: &FutureProducer,
    events: &[Value],
    expected: &mut BTreeMap<String, u64>,
) {
    for (index, event) in events.iter().enumerate() {
        let payload = event.to_string();
        let key = format!("k{index}");
        producer
            .send(
                FutureRecord::to(TOPIC).payload(&payload).key(&key),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("produce to the mock cluster");
        *expected
            .entry(event["event_type"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
}

/// Posts `batches` batches of `per_batch` events (explicit ids) round robin
/// to `instances`, as client `client`; counts what was acknowledged.
async fn post_batches(
    client: &reqwest::Client,
    instances: &[&Instance],
    batches: usize,
    per_batch: usize,
    first_index: usize,
    expected: &mut BTreeMap<String, u64>,
) {
    let now = now_ms();
    for batch in 0..batches {
        let events: Vec<Value> = (0..per_batch)
            .map(|offset| {
                let index = first_index + batch * per_batch + offset;
                event(
                    Some(uuid::Uuid::now_v7().to_string()),
                    index,
                    now - (index as i64 % 600_000),
                )
            })
            .collect();
        let instance = instances[batch % instances.len()];
        let response = client
            .post(instance.url("/api/v1/events/batch"))
            .header("X-Forwarded-For", "10.0.0.1")
            .json(&events)
            .send()
            .await
            .expect("post a batch");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            200,
            "batch {batch} to {}: {body}",
            instance.address()
        );
        assert_eq!(body["accepted"], per_batch, "{body}");
        for event in &events {
            *expected
                .entry(event["event_type"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behave_as_one_service() {
    if !postgres_selected() {
        eprintln!(
            "scale-out proof: runs in the PostgreSQL pass (ANALYTICS_TEST_STORE=postgres), where several processes can share one store"
        );
        return;
    }
    let Some((redis_host, redis_port)) = shared_redis() else {
        return;
    };
    let cluster = MockCluster::new(1).expect("start the Kafka mock cluster");
    cluster
        .create_topic(TOPIC, PARTITIONS, 1)
        .expect("create the topic");
    let brokers = cluster.bootstrap_servers();
    let directory = tempfile::tempdir().unwrap();
    let database = directory.path().join("scale.db");
    let _schema = SchemaGuard::for_path(&database);
    let mut env = store_env_for(&database);
    env.extend(redis_env(&redis_host, redis_port, &random_prefix()));
    let group = format!("scale-{}", uuid::Uuid::new_v4().simple());
    for (key, value) in [
        ("ANALYTICS_KAFKA__BROKERS", brokers.as_str()),
        ("ANALYTICS_KAFKA__TOPICS", TOPIC),
        ("ANALYTICS_KAFKA__CONSUMER_GROUP", group.as_str()),
        ("ANALYTICS_KAFKA__SESSION_TIMEOUT", "6s"),
        ("ANALYTICS_KAFKA__BATCH_SIZE", "200"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__REQUESTS_PER_MINUTE", "600"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__BURST", "40"),
        ("ANALYTICS_SECURITY__RATE_LIMIT__EXEMPT", "[]"),
        ("ANALYTICS_SECURITY__TRUSTED_PROXIES", "[127.0.0.1]"),
        ("ANALYTICS_DATABASE__MAX_CONNECTIONS", "4"),
        ("ANALYTICS_DATABASE__MAX_IDLE_CONNECTIONS", "4"),
    ] {
        env.push((key.to_string(), value.to_string()));
    }
    // The first applies the migrations; the others find them applied.
    let first = Instance::start(&env);
    let mut instances = [first, Instance::start(&env), Instance::start(&env)];
    let client = reqwest::Client::new();
    let now = now_ms();

    // 1. One rate-limit budget across the three: a client sends 90 requests
    // round robin as fast as it can; a shared budget (burst 40, 10/s)
    // admits about 40 of them, three separate ones would admit all 90.
    let started = Instant::now();
    let mut admitted = 0;
    for request in 0..90 {
        let status = client
            .get(instances[request % 3].url("/api/v1/events/stats"))
            .header("X-Forwarded-For", "10.9.9.9")
            .send()
            .await
            .expect("probe")
            .status()
            .as_u16();
        assert!(status == 200 || status == 429, "probe answered {status}");
        admitted += usize::from(status == 200);
    }
    let refill = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (38..=40 + refill + 1).contains(&admitted),
        "one budget of burst 40 (+{refill} refilled) across three instances admitted {admitted} of 90"
    );

    // 2. Mixed load: stream messages (with and without ids) and HTTP
    // batches to every instance.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let stream_events = |from: usize, count: usize| -> Vec<Value> {
        (from..from + count)
            .map(|index| {
                let id = (index % 2 == 0).then(|| uuid::Uuid::now_v7().to_string());
                event(id, index, now - (index as i64 % 600_000))
            })
            .collect()
    };
    produce(&producer, &stream_events(0, 1500), &mut expected).await;
    {
        let all: Vec<&Instance> = instances.iter().collect();
        post_batches(&client, &all, 12, 100, 100_000, &mut expected).await;
    }
    assert_counts(&client, instances[0].address(), &expected).await;

    // 3. One instance dies; its partitions must move to the survivors.
    instances[2].kill();
    produce(&producer, &stream_events(1500, 1500), &mut expected).await;
    {
        let survivors: Vec<&Instance> = instances[..2].iter().collect();
        post_batches(&client, &survivors, 12, 100, 200_000, &mut expected).await;
    }

    // 4. Exactly once, by type, on every survivor; rollups equal raw counts.
    for instance in &instances[..2] {
        assert_counts(&client, instance.address(), &expected).await;
    }

    // 5. The survivors hold every partition between them (as reported by
    // their consumers' statistics, refreshed every second).
    let everything: BTreeSet<i64> = (0..i64::from(PARTITIONS)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut partitions, mut reports) = (BTreeSet::new(), Vec::new());
    while Instant::now() < deadline {
        partitions.clear();
        reports.clear();
        for instance in &instances[..2] {
            let metrics: Value = client
                .get(instance.url("/api/v1/internal/ingestion-metrics"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for partition in metrics["sources"]["kafka"]["partitions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                partitions.insert(partition["partition"].as_i64().unwrap());
            }
            reports.push(metrics["sources"]["kafka"].clone());
        }
        if partitions == everything {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        partitions, everything,
        "partitions held by the two survivors: {reports:?}"
    );
}
