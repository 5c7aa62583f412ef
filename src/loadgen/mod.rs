//! `analytics loadgen`: a realistic, deterministic load generator for
//! measuring the service honestly.
//!
//! - [`generator`]: the B25 event stream (orders, fills, positions,
//!   strategies, market data, users), fixed by `--seed`;
//! - [`http`]: workers with one keep-alive connection each, sending single
//!   events, batches or GETs at a global rate or as fast as possible;
//! - [`report`]: per-worker tallies merged into one summary (counts, rates,
//!   latency percentiles);
//! - [`nats`]: the same stream published to NATS JetStream (async publish,
//!   bounded in-flight acknowledgements), optionally timing publish →
//!   visible;
//! - [`baseline`]: the in-process comparison figures of `scripts/bench.sh`
//!   (raw SQLite insert vs the store's batch commit);
//! - [`committed`]: the rate at which a running service commits a source's
//!   events, read over one keep-alive connection (the stream figures).
//!
//! Invariants: every run is bounded by `--count` or `--duration` (a run
//! with neither is refused); the generated content depends only on the seed,
//! the worker count and the timestamps (so backfills with `--start` are
//! reproducible byte for byte); only the given URL is contacted (for
//! `--target nats`: `--nats-url`, and `--probe-url` when given).

pub mod baseline;
pub mod committed;
pub mod generator;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod nats_drain;
pub mod report;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model::event::{now_ms, parse_timestamp_text};
use generator::{EventGenerator, GeneratorSettings, IdMode};
use http::{HttpLoad, HttpRun};
use report::{Summary, Tally};

/// Where the load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `POST /api/v1/events`, one event per request.
    HttpSingle,
    /// `POST /api/v1/events/batch`, `--batch-size` events per request.
    HttpBatch,
    /// Write NDJSON to `--output` (for `analytics import`).
    Ndjson,
    /// `GET --path` repeatedly (baseline and query latency).
    Get,
    /// Produce to `--topic` on `--brokers` (see [`kafka`]).
    Kafka,
    /// Publish to NATS JetStream (`--nats-url`, `--subject`), for the NATS
    /// source.
    Nats,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::HttpSingle => "http-single",
            Target::HttpBatch => "http-batch",
            Target::Ndjson => "ndjson",
            Target::Get => "get",
            Target::Kafka => "kafka",
            Target::Nats => "nats",
        }
    }
}

/// Command-line options of `analytics loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Where the load goes.
    #[arg(long, value_enum, default_value = "http-single")]
    pub target: Target,
    /// Base URL of the service (loopback).
    #[arg(long, default_value = "http://127.0.0.1:9097")]
    pub url: String,
    /// Path (and query) for `--target get`.
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// Output file for `--target ndjson` (`-` = stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Requests per second for the whole run (events/s for http-single,
    /// batches/s for http-batch); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to run, e.g. `30s`, `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How many events to send (requests for `--target get`).
    #[arg(long)]
    pub count: Option<u64>,
    /// Concurrent connections (one worker each).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Events per request for `--target http-batch`.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Seed of the event stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of distinct users.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Comma-separated symbols.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "BTCUSDT,ETHUSDT,SOLUSDT,BNBUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,AVAXUSDT"
    )]
    pub symbols: Vec<String>,
    /// Number of strategies.
    #[arg(long, default_value_t = 12)]
    pub strategies: usize,
    /// Whether events carry an `id` (seeded ids make a re-run send duplicates).
    #[arg(long, value_enum, default_value = "none")]
    pub ids: IdMode,
    /// Backfill: time of the first event (RFC 3339, epoch ms, or `now-3d`).
    /// Needs `--count`; events are spread evenly over `--spread`.
    #[arg(long)]
    pub start: Option<String>,
    /// Backfill: span the events are spread over, e.g. `3d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub spread: Option<Duration>,
    /// Kafka bootstrap servers for `--target kafka`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic for `--target kafka`.
    #[arg(long, default_value = "trading.events")]
    pub topic: String,
    /// `--target kafka` or `nats`: also measure produce-to-visible latency
    /// against the service at `--url` (one probe event per
    /// `--probe-interval`; a second summary, `kafka-visible` or
    /// `nats-visible`).
    #[arg(long)]
    pub probe_visible: bool,
    /// Time between visibility probes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub probe_interval: Duration,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as one JSON object on stdout (with
    /// `--probe-visible`: a second line, the visibility summary).
    #[arg(long)]
    pub json: bool,
    /// NATS server for `--target nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// JetStream stream created (on `--nats-subjects`) when missing; empty =
    /// do not create.
    #[arg(long, default_value = "ANALYTICS")]
    pub nats_stream: String,
    /// Subjects of the stream when it is created (the service's defaults).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "analytics.>,orders.updates.>"
    )]
    pub nats_subjects: Vec<String>,
    /// Subject the events are published on (`--target nats`).
    #[arg(long, default_value = "analytics.events")]
    pub subject: String,
    /// Most publishes awaiting their stream acknowledgement (`--target nats`).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// http-single and http-batch: generate each body just before its
    /// request. By default a run with `--count`, no `--duration` and no
    /// `--rate` generates every body before its clock starts, when they fit
    /// in about 1 GiB, so the generator's work is not measured with the
    /// service's (a paced run keeps live timestamps).
    #[arg(long)]
    pub generate_while_sending: bool,
}

/// How event timestamps are chosen.
#[derive(Debug, Clone, Copy)]
pub enum Timestamps {
    /// The time the event is generated.
    Live,
    /// Event `i` of `count` at `start + spread * i / count`.
    Backfill {
        start_ms: i64,
        spread_ms: i64,
        count: u64,
    },
}

impl Timestamps {
    /// The timestamp of the event with global index `index`.
    pub fn at(&self, index: u64) -> i64 {
        match *self {
            Timestamps::Live => now_ms(),
            Timestamps::Backfill {
                start_ms,
                spread_ms,
                count,
            } => {
                let offset = i128::from(spread_ms) * i128::from(index) / i128::from(count.max(1));
                start_ms.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
            }
        }
    }
}

/// Parses `--start`: RFC 3339, epoch ms, `now`, or `now-<duration>`.
fn parse_start(text: &str, now: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-") {
        let ago = humantime::parse_duration(ago)
            .with_context(|| format!("--start {text:?}: bad duration after now-"))?;
        return Ok(now - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX));
    }
    parse_timestamp_text(text)
        .with_context(|| format!("--start {text:?}: expected RFC 3339, epoch ms or now-<duration>"))
}

impl LoadgenArgs {
    fn generator_settings(&self, stream: u64) -> GeneratorSettings {
        GeneratorSettings {
            seed: self.seed,
            stream,
            users: self.users,
            symbols: self.symbols.clone(),
            strategies: self.strategies,
            ids: self.ids,
        }
    }

    fn timestamps(&self) -> anyhow::Result<Timestamps> {
        match (&self.start, self.count) {
            (None, _) => {
                if self.spread.is_some() {
                    bail!("--spread needs --start");
                }
                Ok(Timestamps::Live)
            }
            (Some(_), None) => bail!("--start (backfill) needs --count"),
            (Some(start), Some(count)) => Ok(Timestamps::Backfill {
                start_ms: parse_start(start, now_ms())?,
                spread_ms: self
                    .spread
                    .map(|spread| i64::try_from(spread.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0),
                count,
            }),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.count.is_none() && self.duration.is_none() {
            bail!("give --count or --duration: every run is bounded");
        }
        if self.concurrency == 0 || self.concurrency > 4096 {
            bail!("--concurrency must be between 1 and 4096");
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        if self.probe_visible && !matches!(self.target, Target::Kafka | Target::Nats) {
            bail!("--probe-visible is for --target kafka or nats");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be a number >= 0");
        }
        if self.target == Target::Kafka && self.brokers.is_none() {
            bail!("--target kafka needs --brokers");
        }
        if self.probe_interval.is_zero() {
            bail!("--probe-interval must be above zero");
        }
        if self.target == Target::Get && !self.path.starts_with('/') {
            bail!("--path must start with /");
        }
        Ok(())
    }
}

/// Runs the load described by `args` and returns its summary (also printed
/// on stderr, and on stdout as JSON with `--json`).
pub async fn run(args: LoadgenArgs) -> anyhow::Result<Summary> {
    args.check()?;
    let timestamps = args.timestamps()?;
    let (summary, visible) = match args.target {
        Target::Ndjson => (write_ndjson(&args, timestamps)?, None),
        Target::Kafka => (kafka::run_kafka(&args, timestamps).await?, None),
        Target::HttpSingle | Target::HttpBatch | Target::Get => {
            (run_http(&args, timestamps).await?, None)
        }
        Target::Nats => nats::run(&args, timestamps).await?,
    };
    for summary in std::iter::once(&summary).chain(&visible) {
        eprint!("{}", summary.to_text());
        if args.json {
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, summary).context("cannot write the summary")?;
            writeln!(stdout).context("cannot write the summary")?;
        }
    }
    Ok(summary)
}

fn progress_bar(args: &LoadgenArgs, length: Option<u64>, unit: &str) -> ProgressBar {
    if args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = match length {
        Some(_) => format!(
            "{{elapsed_precise}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
        ),
        None => {
            format!("{{elapsed_precise}} {{spinner}} {{human_pos}} {unit} ({{per_sec}}) {{msg}}")
        }
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn run_http(args: &LoadgenArgs, timestamps: Timestamps) -> anyhow::Result<Summary> {
    let load = match args.target {
        Target::HttpSingle => HttpLoad::Single,
        Target::HttpBatch => HttpLoad::Batch {
            batch_size: args.batch_size,
        },
        _ => HttpLoad::Get {
            path: args.path.clone(),
        },
    };
    let total_requests = args.count.map(|count| match args.target {
        Target::HttpBatch => count.div_ceil(args.batch_size as u64),
        _ => count,
    });
    let mut run = HttpRun {
        base_url: args.url.trim_end_matches('/').to_string(),
        load,
        total_requests,
        total_events: args.count.filter(|_| args.target != Target::Get),
        deadline: None,
        requests_per_second: (args.rate > 0.0).then_some(args.rate),
        timestamps,
        started: Instant::now(),
        next_request: AtomicU64::new(0),
        events_progress: AtomicU64::new(0),
        requests_progress: AtomicU64::new(0),
    };
    // Bodies generated now are not timed: the run measures the service.
    let ready: Vec<Option<Vec<http::ReadyRequest>>> = match (&run.load, total_requests) {
        (HttpLoad::Single | HttpLoad::Batch { .. }, Some(requests))
            if !args.generate_while_sending
                && args.duration.is_none()
                && args.rate == 0.0
                && args.count.is_some_and(http::fits_in_memory) =>
        {
            let settings = args.clone();
            let (returned, ready) = tokio::task::spawn_blocking(move || {
                let ready = http::pregenerate(&run, requests, settings.concurrency, |w| {
                    settings.generator_settings(w)
                });
                (run, ready)
            })
            .await
            .context("generating the bodies failed")?;
            run = returned;
            ready?.into_iter().map(Some).collect()
        }
        _ => (0..args.concurrency).map(|_| None).collect(),
    };
    let pregenerated = ready.iter().any(Option::is_some);
    run.started = Instant::now();
    run.deadline = args.duration.map(|duration| run.started + duration);
    let run = Arc::new(run);
    let counts_events = args.target != Target::Get;
    let bar = progress_bar(
        args,
        if counts_events {
            args.count
        } else {
            total_requests
        },
        if counts_events { "events" } else { "requests" },
    );
    let workers: Vec<_> = ready
        .into_iter()
        .enumerate()
        .map(|(worker, ready)| {
            tokio::spawn(http::run_worker(
                Arc::clone(&run),
                args.generator_settings(worker as u64),
                ready,
            ))
        })
        .collect();
    let ticker = {
        let run = Arc::clone(&run);
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(200));
            loop {
                interval.tick().await;
                let position = if counts_events {
                    run.events_progress.load(Ordering::Relaxed)
                } else {
                    run.requests_progress.load(Ordering::Relaxed)
                };
                bar.set_position(position);
            }
        })
    };
    let mut tally = Tally::default();
    let mut first_error = None;
    for worker in workers {
        match worker.await {
            Ok(Ok(worker_tally)) => tally.merge(&worker_tally),
            Ok(Err(error)) => first_error = first_error.or(Some(error)),
            Err(error) => {
                first_error = first_error.or(Some(anyhow::anyhow!("worker failed: {error}")))
            }
        }
    }
    let elapsed = run.started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    if let Some(error) = first_error {
        return Err(error);
    }
    let mut summary = tally.summarise(args.target.name(), elapsed);
    summary.bodies_generated_before_start = pregenerated;
    Ok(summary)
}

fn write_ndjson(args: &LoadgenArgs, timestamps: Timestamps) -> anyhow::Result<Summary> {
    let Some(count) = args.count else {
        bail!("--target ndjson needs --count");
    };
    let output = args
        .output
        .as_ref()
        .context("--target ndjson needs --output FILE (or - for stdout)")?;
    if output.as_os_str() == "-" && args.json {
        bail!("--json and --output - would both write to stdout");
    }
    let started = Instant::now();
    let sink: Box<dyn Write> = if output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(output)
                .with_context(|| format!("cannot create {}", output.display()))?,
        )
    };
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, sink);
    // One stream: a file is one ordered log, whatever --concurrency says.
    let mut generator = EventGenerator::new(args.generator_settings(0));
    let bar = progress_bar(args, Some(count), "events");
    let mut tally = Tally::default();
    for index in 0..count {
        let event = generator.next_event(timestamps.at(index));
        serde_json::to_writer(&mut writer, &event).context("cannot serialise an event")?;
        writer
            .write_all(b"\n")
            .with_context(|| format!("cannot write {}", output.display()))?;
        if index % 4096 == 0 {
            bar.set_position(index);
        }
        tally.events_sent += 1;
    }
    writer
        .flush()
        .with_context(|| format!("cannot write {}", output.display()))?;
    bar.finish_and_clear();
    Ok(tally.summarise(Target::Ndjson.name(), started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_spreads_evenly_and_start_parses() {
        let timestamps = Timestamps::Backfill {
            start_ms: 1_000,
            spread_ms: 10_000,
            count: 10,
        };
        assert_eq!(timestamps.at(0), 1_000);
        assert_eq!(timestamps.at(5), 6_000);
        assert_eq!(
            parse_start("now-1h", 10_000_000).unwrap(),
            10_000_000 - 3_600_000
        );
        assert_eq!(
            parse_start("2025-10-03T12:00:00Z", 0).unwrap(),
            1_759_492_800_000
        );
        assert!(parse_start("yesterday", 0).is_err());
    }
}
