//! `analytics bench-nats-drain` (hidden): drains a JetStream stream the way
//! the NATS source does, but stores nothing: a durable pull consumer with
//! explicit acks, batches of `--batch-size`, every message acknowledged,
//! the last of each batch with a confirmation (`double_ack`).
//!
//! What the NATS source costs beyond taking and acknowledging its messages
//! is the service's own work; what this costs is the floor set by the
//! JetStream server and its client. `scripts/bench.sh` reports this rate
//! against the batch-HTTP baseline of the same run, next to the source's.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, message::AckKind};
use futures_util::StreamExt;
use serde::Serialize;

use crate::sources::nats as nats_source;

/// Longest wait for a message before the drain gives up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `analytics bench-nats-drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The stream to drain (it must exist).
    #[arg(long)]
    pub stream: String,
    /// The durable consumer to create (deleted at the end).
    #[arg(long, default_value = "bench-drain")]
    pub durable: String,
    /// Messages to take and acknowledge.
    #[arg(long)]
    pub count: u64,
    /// Messages per pull and per acknowledged batch (the source's
    /// `nats.batch_size` default).
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,
}

/// What `bench-nats-drain` prints (one JSON object).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrainReport {
    pub stream: String,
    /// Messages taken and acknowledged.
    pub messages: u64,
    /// From the first message received to the last batch's confirmation.
    pub elapsed_seconds: f64,
    /// messages ÷ elapsed_seconds.
    pub events_per_second: f64,
}

/// Takes and acknowledges `args.count` messages of `args.stream`, then
/// deletes the durable it made. A message that does not come within
/// [`IDLE_TIMEOUT`], or an acknowledgement the server does not take, is
/// an error.
pub async fn drain(args: &DrainArgs) -> anyhow::Result<DrainReport> {
    let client = super::nats::connect(&args.nats_url, "analytics-bench-drain").await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(&args.stream)
        .await
        .with_context(|| format!("cannot get stream {}", args.stream))?;
    let batch_size = args.batch_size.max(1);
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(args.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: nats_source::max_ack_pending(batch_size),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create consumer {}", args.durable))?;
    let drained = take_and_ack(&consumer, args.count, batch_size).await;
    let deleted = stream.delete_consumer(&args.durable).await;
    let (messages, elapsed) = match (drained, deleted) {
        (Ok(drained), Ok(_)) => drained,
        (Ok(_), Err(error)) => {
            return Err(error).with_context(|| format!("cannot delete consumer {}", args.durable));
        }
        (Err(error), Ok(_)) => return Err(error),
        (Err(error), Err(also)) => {
            return Err(error.context(format!(
                "(and consumer {} could not be deleted: {also})",
                args.durable
            )));
        }
    };
    client.flush().await.context("NATS flush")?;
    let elapsed_seconds = elapsed.as_secs_f64();
    Ok(DrainReport {
        stream: args.stream.clone(),
        messages,
        elapsed_seconds,
        events_per_second: if elapsed_seconds > 0.0 {
            messages as f64 / elapsed_seconds
        } else {
            0.0
        },
    })
}

/// The messages taken and the time from the first to the last batch's
/// confirmed acknowledgement.
async fn take_and_ack(
    consumer: &PullConsumer,
    count: u64,
    batch_size: usize,
) -> anyhow::Result<(u64, Duration)> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .heartbeat(nats_source::PULL_HEARTBEAT)
        .expires(nats_source::PULL_EXPIRES)
        .messages()
        .await
        .context("cannot start pulling messages")?;
    let mut batch = Vec::with_capacity(batch_size);
    let mut taken = 0u64;
    let mut started = None;
    while taken < count {
        let message = match tokio::time::timeout(IDLE_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => bail!("NATS pull error after {taken} messages: {error}"),
            Ok(None) => bail!("the message stream ended after {taken} messages"),
            Err(_) => bail!("no message for {IDLE_TIMEOUT:?} after {taken} of {count}"),
        };
        started.get_or_insert_with(Instant::now);
        taken += 1;
        batch.push(message);
        if batch.len() == batch_size || taken == count {
            let (last, rest) = batch.split_last().expect("the batch is not empty");
            for message in rest {
                message
                    .ack_with(AckKind::Ack)
                    .await
                    .map_err(|error| anyhow::anyhow!("ack not sent: {error}"))?;
            }
            last.double_ack()
                .await
                .map_err(|error| anyhow::anyhow!("ack not confirmed: {error}"))?;
            batch.clear();
        }
    }
    Ok((taken, started.map_or(Duration::ZERO, |at| at.elapsed())))
}
