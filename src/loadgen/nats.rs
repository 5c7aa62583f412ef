//! NATS load: the generator's event stream published to JetStream, as the
//! rest of B25 would publish it, for the NATS source's benchmarks.
//!
//! - One publisher with at most `--max-in-flight` unacknowledged publishes
//!   (async publish: the stream's acknowledgements are awaited
//!   concurrently, so memory stays bounded). Latency is publish → stream
//!   acknowledgement.
//! - With `--rate`, event `k` is not published before `start + k / rate`
//!   (a steady offered rate); without, as fast as the acknowledgements come.
//! - With `--probe-visible`, a probe publishes every `--probe-interval` one event
//!   of a type of its own on the same subject and reads
//!   `/api/v1/events/stats` of the service until that type shows up: publish
//!   → visible through the whole pipeline (JetStream, the source, the
//!   durable commit, the query). Its percentiles are a second summary,
//!   `nats-visible`.
//! - The stream (`--nats-stream`) is created on `--nats-subjects` (by
//!   default the service's) when missing, so a stream can be pre-loaded before the
//!   service first starts.
//!
//! Measuring the NATS source (release build, NATS with JetStream on
//! 127.0.0.1:4222, a stream of its own so nothing else overlaps):
//!
//! ```text
//! # (a) NATS -> store events/s: pre-load, then start the service on it and
//! #     watch analytics_source_messages_total{outcome="committed",source="nats"}
//! #     on the metrics port until it reaches the count
//! analytics loadgen --target nats --nats-stream BENCH_NATS --nats-subjects 'bench.>' \
//!     --subject bench.events --count 200000 --quiet --json
//! ANALYTICS_NATS__SERVERS=nats://127.0.0.1:4222 ANALYTICS_NATS__STREAM=BENCH_NATS \
//!     ANALYTICS_NATS__SUBJECTS='bench.>' ANALYTICS_NATS__DURABLE=bench analytics serve
//! # (b) publish -> visible at a steady 5 000 events/s, against that service
//! analytics loadgen --target nats --nats-stream BENCH_NATS --nats-subjects 'bench.>' \
//!     --subject bench.events --rate 5000 --duration 30s \
//!     --probe-visible --url http://127.0.0.1:9097 --probe-interval 100ms --quiet --json
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::Value;

use super::generator::EventGenerator;
use super::report::{Summary, Tally};
use super::{LoadgenArgs, Timestamps};
use crate::model::event::{format_timestamp, now_ms};

/// Longest a probe waits for its event to become visible.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the NATS server at `url`, named `name`.
pub(super) async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// Publishes the run's events; returns the publisher's summary and, when
/// probing, the publish → visible summary.
pub async fn run(
    args: &LoadgenArgs,
    timestamps: Timestamps,
) -> anyhow::Result<(Summary, Option<Summary>)> {
    let client = connect(&args.nats_url, "analytics-loadgen").await?;
    let js = jetstream::new(client.clone());
    if !args.nats_stream.is_empty() {
        js.get_or_create_stream(stream::Config {
            name: args.nats_stream.clone(),
            subjects: args.nats_subjects.clone(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create or get stream {}", args.nats_stream))?;
    }
    let started = Instant::now();
    let deadline = args.duration.map(|duration| started + duration);
    let done = tokio_util::sync::CancellationToken::new();
    let probe = args.probe_visible.then(|| args.url.clone()).map(|url| {
        tokio::spawn(probe(
            js.clone(),
            args.subject.clone(),
            url,
            args.probe_interval,
            done.clone(),
        ))
    });

    let mut generator = EventGenerator::new(args.generator_settings(0));
    let mut tally = Tally::default();
    let mut in_flight = FuturesUnordered::new();
    let max_in_flight = args.max_in_flight.max(1);
    let mut index: u64 = 0;
    loop {
        if args.count.is_some_and(|count| index >= count)
            || deadline.is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(index as f64 / args.rate);
            // Acknowledgements are collected while waiting for the slot.
            while Instant::now() < due {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    Some(acknowledged) = in_flight.next(), if !in_flight.is_empty() => {
                        record(&mut tally, acknowledged);
                    }
                }
            }
        }
        while in_flight.len() >= max_in_flight {
            if let Some(acknowledged) = in_flight.next().await {
                record(&mut tally, acknowledged);
            }
        }
        let event = generator.next_event(timestamps.at(index));
        let payload = serde_json::to_vec(&event).context("cannot serialise an event")?;
        let sent = Instant::now();
        tally.requests_sent += 1;
        tally.events_sent += 1;
        match js.publish(args.subject.clone(), payload.into()).await {
            Ok(acknowledgement) => in_flight.push(async move {
                (
                    sent,
                    acknowledgement
                        .await
                        .map(|ack| ack.duplicate)
                        .map_err(|error| error.to_string()),
                )
            }),
            Err(error) => {
                tally.transport_errors += 1;
                tracing::warn!(error = %error, "publish failed");
            }
        }
        index += 1;
    }
    while let Some(acknowledged) = in_flight.next().await {
        record(&mut tally, acknowledged);
    }
    let elapsed = started.elapsed();
    done.cancel();
    let visible = match probe {
        Some(task) => Some(task.await.context("probe task")??),
        None => None,
    };
    client.flush().await.ok();
    Ok((tally.summarise("nats", elapsed), visible))
}

fn record(tally: &mut Tally, (sent, result): (Instant, Result<bool, String>)) {
    match result {
        Ok(duplicate) => {
            tally.record_latency(sent.elapsed());
            tally.requests_acknowledged += 1;
            if duplicate {
                tally.events_duplicate += 1;
            } else {
                tally.events_accepted += 1;
            }
        }
        Err(error) => {
            tally.requests_failed += 1;
            tracing::warn!(error = %error, "publish not acknowledged");
        }
    }
}

/// Every `interval` until `done`: publishes one event of a type of its own
/// and times it until `/api/v1/events/stats` of `url` counts it.
async fn probe(
    js: jetstream::Context,
    subject: String,
    url: String,
    interval: Duration,
    done: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Summary> {
    let http = reqwest::Client::new();
    let stats_url = format!("{}/api/v1/events/stats", url.trim_end_matches('/'));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for number in 0u64.. {
        tokio::select! {
            () = done.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let event_type = format!("bench.visibility.{}.{number}", &run[..8]);
        let timestamp = now_ms();
        let payload = serde_json::json!({"event_type": event_type, "timestamp": timestamp});
        let sent = Instant::now();
        tally.requests_sent += 1;
        tally.events_sent += 1;
        let published = async {
            js.publish(subject.clone(), payload.to_string().into())
                .await?
                .await
        }
        .await;
        if let Err(error) = published {
            tally.transport_errors += 1;
            tracing::warn!(error = %error, "probe publish failed");
            continue;
        }
        let range = [
            ("start_time", format_timestamp(timestamp - 1_000)),
            ("end_time", format_timestamp(timestamp + 60_000)),
        ];
        let mut seen = false;
        while sent.elapsed() < PROBE_TIMEOUT {
            let answer = http.get(&stats_url).query(&range).send().await;
            if let Ok(response) = answer
                && let Ok(body) = response.json::<Value>().await
                && body["by_type"][&event_type].as_u64() == Some(1)
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if seen {
            tally.record_latency(sent.elapsed());
            tally.requests_acknowledged += 1;
            tally.events_accepted += 1;
        } else {
            tally.requests_failed += 1;
        }
    }
    Ok(tally.summarise("nats-visible", started.elapsed()))
}
