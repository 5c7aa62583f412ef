//! HTTP load: workers that each hold one keep-alive connection and send
//! requests until the run's count or deadline is reached.
//!
//! Invariants:
//! - Request numbers are handed out by one atomic counter, so the run sends
//!   exactly `total_requests` requests (when counted) whatever the number of
//!   workers, and request `k`'s events have fixed global indices (which fix
//!   their backfilled timestamps).
//! - With a rate, request `k` is not sent before `start + k / rate`: the
//!   schedule is global, not per worker, so the offered rate is the asked
//!   rate. Latency is timed from the actual send (a slow server lowers the
//!   achieved rate instead of inflating latencies; compare achieved rate to
//!   the asked one).
//! - Every loop is bounded by the count or the deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;

use super::Timestamps;
use super::generator::{EventGenerator, GeneratorSettings};
use super::report::Tally;

/// What one HTTP worker sends.
#[derive(Debug, Clone)]
pub enum HttpLoad {
    /// `POST /api/v1/events`, one event per request.
    Single,
    /// `POST /api/v1/events/batch` with this many events per request.
    Batch { batch_size: usize },
    /// `GET` of this path (and query) on the base URL.
    Get { path: String },
}

/// Shared state of one HTTP run.
pub struct HttpRun {
    pub base_url: String,
    pub load: HttpLoad,
    /// Requests to send in all, when counted.
    pub total_requests: Option<u64>,
    /// Events to send in all, when counted (the last batch may be short).
    pub total_events: Option<u64>,
    pub deadline: Option<Instant>,
    /// Requests per second for the whole run; `None` = as fast as possible.
    pub requests_per_second: Option<f64>,
    pub timestamps: Timestamps,
    pub started: Instant,
    pub next_request: AtomicU64,
    /// Events sent so far (for the progress bar).
    pub events_progress: AtomicU64,
    /// Requests sent so far (for the progress bar).
    pub requests_progress: AtomicU64,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct SingleAnswer {
    #[serde(default)]
    duplicate: bool,
}

/// Runs one worker to completion and returns its tally.
pub async fn run_worker(
    run: Arc<HttpRun>,
    generator_settings: GeneratorSettings,
) -> anyhow::Result<Tally> {
    // One client per worker, at most one idle connection: each worker keeps
    // exactly one keep-alive connection, so `--concurrency` is the number of
    // connections. No proxy: load goes to loopback only.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let mut generator = EventGenerator::new(generator_settings);
    let mut tally = Tally::default();
    let mut body: Vec<u8> = Vec::with_capacity(4096);
    let (url, content_type) = match &run.load {
        HttpLoad::Single => (
            format!("{}/api/v1/events", run.base_url),
            "application/json",
        ),
        HttpLoad::Batch { .. } => (
            format!("{}/api/v1/events/batch", run.base_url),
            "application/json",
        ),
        HttpLoad::Get { path } => (format!("{}{}", run.base_url, path), ""),
    };
    loop {
        let request_number = run.next_request.fetch_add(1, Ordering::Relaxed);
        if run
            .total_requests
            .is_some_and(|total| request_number >= total)
        {
            break;
        }
        if let Some(rate) = run.requests_per_second {
            let due = run.started + Duration::from_secs_f64(request_number as f64 / rate);
            if run.deadline.is_some_and(|deadline| due >= deadline) {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if run
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }
        let events_in_request = fill_body(&run, request_number, &mut generator, &mut body)?;
        let capacity = body.capacity();
        let request = match &run.load {
            HttpLoad::Get { .. } => client.get(&url),
            _ => client
                .post(&url)
                .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
                .body(std::mem::replace(&mut body, Vec::with_capacity(capacity))),
        };
        tally.requests_sent += 1;
        tally.events_sent += events_in_request;
        let sent_at = Instant::now();
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|bytes| (status, bytes))
            }
            Err(error) => Err(error),
        };
        tally.record_latency(sent_at.elapsed());
        run.requests_progress.fetch_add(1, Ordering::Relaxed);
        run.events_progress
            .fetch_add(events_in_request, Ordering::Relaxed);
        match outcome {
            Ok((status, bytes)) if status.is_success() => {
                tally.requests_acknowledged += 1;
                count_acknowledged(&run.load, &bytes, events_in_request, &mut tally);
            }
            Ok((status, _)) if status.is_client_error() => tally.requests_rejected += 1,
            Ok(_) => tally.requests_failed += 1,
            Err(_) => tally.transport_errors += 1,
        }
    }
    Ok(tally)
}

/// Writes request `request_number`'s body; returns how many events it holds.
fn fill_body(
    run: &HttpRun,
    request_number: u64,
    generator: &mut EventGenerator,
    body: &mut Vec<u8>,
) -> anyhow::Result<u64> {
    body.clear();
    match &run.load {
        HttpLoad::Get { .. } => Ok(0),
        HttpLoad::Single => {
            let event = generator.next_event(run.timestamps.at(request_number));
            serde_json::to_writer(&mut *body, &event).context("cannot serialise an event")?;
            Ok(1)
        }
        HttpLoad::Batch { batch_size } => {
            let batch_size = *batch_size as u64;
            let first = request_number * batch_size;
            let last = match run.total_events {
                Some(total) => (first + batch_size).min(total),
                None => first + batch_size,
            };
            body.push(b'[');
            for index in first..last {
                if index > first {
                    body.push(b',');
                }
                let event = generator.next_event(run.timestamps.at(index));
                serde_json::to_writer(&mut *body, &event).context("cannot serialise an event")?;
            }
            body.push(b']');
            Ok(last.saturating_sub(first))
        }
    }
}

fn count_acknowledged(load: &HttpLoad, bytes: &[u8], events: u64, tally: &mut Tally) {
    match load {
        HttpLoad::Get { .. } => {}
        HttpLoad::Single => match serde_json::from_slice::<SingleAnswer>(bytes) {
            Ok(answer) if answer.duplicate => tally.events_duplicate += 1,
            _ => tally.events_accepted += events,
        },
        HttpLoad::Batch { .. } => {
            if let Ok(answer) = serde_json::from_slice::<BatchAnswer>(bytes) {
                tally.events_accepted += answer.accepted;
                tally.events_duplicate += answer.duplicates;
                tally.events_rejected += answer.rejected.len() as u64;
            }
        }
    }
}
