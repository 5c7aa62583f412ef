//! `analytics bench-committed` (hidden): waits until a running service has
//! committed a number of events from one source and reports the rate from
//! the first commit seen to the last, as the stream figures of
//! `scripts/bench.sh` need it.
//!
//! It polls `GET /api/v1/internal/ingestion-metrics` over one keep-alive
//! connection. The scripts used to start a `curl` (and a shell loop) per
//! poll: on a two-core machine that cost about a tenth of the machine during
//! the phase being measured, which the batch-HTTP baseline (timed by the
//! load generator itself) did not pay.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

/// Options of `analytics bench-committed`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommittedArgs {
    /// Base URL of the service, e.g. http://127.0.0.1:9097.
    #[arg(long)]
    pub url: String,
    /// The source whose `committed` count is read (kafka, nats, http, ...).
    #[arg(long)]
    pub source: String,
    /// Events to wait for.
    #[arg(long)]
    pub count: u64,
    /// Time between two polls, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub interval_ms: u64,
    /// Longest wait, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// API key sent as `X-API-Key`, when the service asks for one.
    #[arg(long)]
    pub api_key: Option<String>,
}

/// What `bench-committed` prints (one JSON object).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommittedReport {
    pub source: String,
    /// `committed` at the last poll.
    pub committed: u64,
    /// `committed` at the first poll that saw more than zero.
    pub first_seen: u64,
    /// Seconds from that first poll to the last.
    pub elapsed_seconds: f64,
    /// (committed − first_seen) ÷ elapsed_seconds; 0 when nothing was timed.
    pub events_per_second: f64,
    /// Whether `count` was reached before the timeout.
    pub complete: bool,
}

/// Polls until `args.count` events of `args.source` are committed or the
/// timeout passes. An unreachable service or an unreadable answer is an
/// error; a timeout is a report with `complete: false`.
pub async fn wait_committed(args: &CommittedArgs) -> anyhow::Result<CommittedReport> {
    // No proxy, as the load generator's clients: the service is on loopback.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    let url = format!(
        "{}/api/v1/internal/ingestion-metrics",
        args.url.trim_end_matches('/')
    );
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let mut request = client.get(&url);
        if let Some(key) = &args.api_key {
            request = request.header("X-API-Key", key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("{url} did not answer JSON"))?;
        let committed = committed_of(&body, &args.source)?;
        let now = Instant::now();
        if first.is_none() && committed > 0 {
            first = Some((now, committed));
        }
        let complete = committed >= args.count;
        if complete || now >= deadline {
            return Ok(report(&args.source, committed, first, now, complete));
        }
        tokio::time::sleep(interval).await;
    }
}

/// The `committed` count of `source` in an ingestion-metrics body; 0 while
/// the source has no entry yet.
fn committed_of(body: &serde_json::Value, source: &str) -> anyhow::Result<u64> {
    let Some(sources) = body.get("sources") else {
        bail!("the ingestion metrics have no `sources` object");
    };
    match sources.get(source).and_then(|entry| entry.get("committed")) {
        None => Ok(0),
        Some(value) => value
            .as_u64()
            .with_context(|| format!("sources.{source}.committed is not a count: {value}")),
    }
}

fn report(
    source: &str,
    committed: u64,
    first: Option<(Instant, u64)>,
    now: Instant,
    complete: bool,
) -> CommittedReport {
    let (elapsed, first_seen) = match first {
        Some((at, count)) => (now.duration_since(at).as_secs_f64(), count),
        None => (0.0, 0),
    };
    let events_per_second = if elapsed > 0.0 {
        committed.saturating_sub(first_seen) as f64 / elapsed
    } else {
        0.0
    };
    CommittedReport {
        source: source.to_string(),
        committed,
        first_seen,
        elapsed_seconds: elapsed,
        events_per_second,
        complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_committed_count_of_the_named_source() {
        let body =
            json!({"sources": {"http": {"committed": 5}, "nats": {"committed": 12, "lag": {}}}});
        assert_eq!(committed_of(&body, "nats").unwrap(), 12);
        assert_eq!(committed_of(&body, "kafka").unwrap(), 0);
        assert!(committed_of(&json!({"other": 1}), "nats").is_err());
        assert!(committed_of(&json!({"sources": {"nats": {"committed": "x"}}}), "nats").is_err());
    }

    #[test]
    fn the_rate_counts_from_the_first_commit_seen() {
        let start = Instant::now();
        let later = start + Duration::from_secs(2);
        let timed = report("nats", 1_000, Some((start, 200)), later, true);
        assert_eq!(timed.events_per_second, 400.0);
        assert_eq!((timed.first_seen, timed.elapsed_seconds), (200, 2.0));
        let untimed = report("nats", 0, None, later, false);
        assert_eq!(untimed.events_per_second, 0.0);
        assert!(!untimed.complete);
    }
}
