//! `analytics loadgen --target kafka`: the event stream of
//! [`super::generator`] produced to a Kafka topic, and the broker for
//! benchmarks without Kafka, `analytics kafka-mock` (librdkafka's mock
//! cluster: the real protocol on loopback ports).
//!
//! What is measured:
//! - the producer side: messages produced per second and the latency from
//!   `send` to the broker's delivery report (the `kafka` summary);
//! - with `--probe-visible`: every `--probe-interval` one probe event with
//!   its own id (`event_type` `loadgen.probe`) is produced and
//!   `GET --url/api/v1/events` is polled until the service returns it: the
//!   produce-to-visible latency (the `kafka-visible` summary). Probes are
//!   one at a time and part of the topic's stream.
//!
//! Invariants: the run is bounded by `--count` or `--duration`; `--rate`
//! paces the stream (events/s), 0 = as fast as the producer accepts; the
//! producer's queue is bounded (a full queue waits, never drops).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, FutureProducer, FutureRecord, Producer,
    ProducerContext, ThreadedProducer,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::generator::EventGenerator;
use super::report::{Summary, Tally};
use super::{LoadgenArgs, Timestamps};
use crate::model::event::now_ms;

/// Options of `analytics kafka-mock`.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaMockArgs {
    /// Brokers in the mock cluster.
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Comma-separated topics to create.
    #[arg(long, value_delimiter = ',', default_value = "trading.events")]
    pub topics: Vec<String>,
}

/// Starts a mock cluster with `args.topics`; returns it (it stops when
/// dropped) and its bootstrap servers.
pub fn start_mock_cluster(
    args: &KafkaMockArgs,
) -> anyhow::Result<(MockCluster<'static, DefaultProducerContext>, String)> {
    if args.brokers < 1 || args.partitions < 1 {
        bail!("--brokers and --partitions must be at least 1");
    }
    let cluster = MockCluster::new(args.brokers).context("starting the mock Kafka cluster")?;
    for topic in &args.topics {
        cluster
            .create_topic(topic, args.partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let bootstrap = cluster.bootstrap_servers();
    Ok((cluster, bootstrap))
}

/// Counts delivery reports and times them (runs on the producer's thread).
struct DeliveryTally {
    tally: Mutex<Tally>,
}

impl ClientContext for DeliveryTally {}

impl ProducerContext for DeliveryTally {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: Box<Instant>) {
        let mut tally = self
            .tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(_) => {
                tally.requests_acknowledged += 1;
                tally.record_latency(sent_at.elapsed());
            }
            Err(_) => tally.requests_failed += 1,
        }
    }
}

fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144");
    config
}

/// Runs `--target kafka`.
pub async fn run_kafka(args: &LoadgenArgs, timestamps: Timestamps) -> anyhow::Result<Summary> {
    let brokers = args
        .brokers
        .clone()
        .context("--target kafka needs --brokers HOST:PORT[,...]")?;
    let producing = CancellationToken::new();
    let probes = args.probe_visible.then(|| {
        tokio::spawn(run_probes(
            brokers.clone(),
            args.topic.clone(),
            args.url.trim_end_matches('/').to_string(),
            args.probe_interval,
            producing.clone(),
        ))
    });
    let produce = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || produce_stream(&args, &brokers, timestamps))
    };
    let summary = produce.await.context("the producer thread failed");
    producing.cancel();
    let summary = summary??;
    if let Some(probes) = probes {
        let visible = probes.await.context("the probe task failed")??;
        eprint!("{}", visible.to_text());
        if args.json {
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, &visible).context("cannot write the summary")?;
            writeln!(stdout).context("cannot write the summary")?;
        }
    }
    Ok(summary)
}

/// The producing loop (blocking: a thread of its own).
fn produce_stream(
    args: &LoadgenArgs,
    brokers: &str,
    timestamps: Timestamps,
) -> anyhow::Result<Summary> {
    let producer: ThreadedProducer<DeliveryTally> = producer_config(brokers)
        .create_with_context(DeliveryTally {
            tally: Mutex::new(Tally::default()),
        })
        .context("creating the Kafka producer")?;
    let mut generator = EventGenerator::new(args.generator_settings(0));
    let started = Instant::now();
    let deadline = args.duration.map(|duration| started + duration);
    let mut payload = Vec::with_capacity(1024);
    let mut sent = 0u64;
    loop {
        if args.count.is_some_and(|count| sent >= count)
            || deadline.is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
            let now = Instant::now();
            // Sleep only when at least a millisecond ahead: short bursts,
            // not one syscall per event.
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let event = generator.next_event(timestamps.at(sent));
        payload.clear();
        serde_json::to_writer(&mut payload, &event).context("cannot serialise an event")?;
        let key = event.user_id.as_deref().unwrap_or("");
        let mut record = BaseRecord::with_opaque_to(&args.topic, Box::new(Instant::now()))
            .key(key)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(error).context("producing to Kafka failed"),
            }
        }
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the Kafka producer")?;
    let elapsed = started.elapsed();
    let context = producer.context();
    let mut tally = context
        .tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tally.requests_sent = sent;
    tally.events_sent = sent;
    Ok(tally.summarise("kafka", elapsed))
}

/// Produces one probe at a time until `producing` stops and measures how
/// long each takes to become visible at `url`.
async fn run_probes(
    brokers: String,
    topic: String,
    url: String,
    interval: Duration,
    producing: CancellationToken,
) -> anyhow::Result<Summary> {
    let producer: FutureProducer = producer_config(&brokers)
        .set("linger.ms", "0")
        .create()
        .context("creating the probe producer")?;
    let client = reqwest::Client::new();
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = producing.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let id = uuid::Uuid::new_v4();
        let timestamp = now_ms();
        let payload =
            json!({"id": id, "event_type": "loadgen.probe", "timestamp": timestamp}).to_string();
        let key = id.to_string();
        let sent_at = Instant::now();
        tally.requests_sent += 1;
        tally.events_sent += 1;
        if let Err((error, _)) = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
        {
            tracing::warn!(%error, "probe not produced");
            tally.requests_failed += 1;
            continue;
        }
        let query = [
            ("event_type", "loadgen.probe".to_string()),
            ("start_time", timestamp.to_string()),
            ("end_time", (timestamp + 1).to_string()),
            ("limit", "100".to_string()),
        ];
        let give_up = sent_at + Duration::from_secs(30);
        loop {
            if visible(&client, &url, &query, &key).await {
                tally.requests_acknowledged += 1;
                tally.record_latency(sent_at.elapsed());
                break;
            }
            if Instant::now() > give_up {
                tally.transport_errors += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(tally.summarise("kafka-visible", started.elapsed()))
}

/// Whether the service at `url` lists the probe `id`.
async fn visible(client: &reqwest::Client, url: &str, query: &[(&str, String)], id: &str) -> bool {
    let Ok(response) = client
        .get(format!("{url}/api/v1/events"))
        .query(query)
        .send()
        .await
    else {
        return false;
    };
    let Ok(body) = response.json::<Value>().await else {
        return false;
    };
    body["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|event| event["id"] == id))
}
