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
//! - A counted run without a deadline or a rate may have its bodies
//!   generated before the clock starts ([`pregenerate`]): worker `w` of `c`
//!   then sends requests `w`, `w + c`, … in order, each with the events its
//!   own generator would have made for them, so the run measures the
//!   service and not the generator (which took about a tenth of a two-core
//!   machine during batch ingest when it generated as it sent).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
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

/// A request whose body was generated before the run started.
pub struct ReadyRequest {
    request_number: u64,
    body: Bytes,
    events: u64,
}

/// Estimated bytes of one generated event in a body, for [`fits_in_memory`].
const BODY_BYTES_PER_EVENT: u64 = 512;

/// Most bytes of bodies generated before a run starts.
const PREGENERATED_MAX_BYTES: u64 = 1 << 30;

/// Whether the bodies of `events` events may all be generated before the
/// run starts (at most about 1 GiB of them).
pub fn fits_in_memory(events: u64) -> bool {
    events.saturating_mul(BODY_BYTES_PER_EVENT) <= PREGENERATED_MAX_BYTES
}

/// The bodies of every request of counted `run` (`total_requests` of them),
/// before it starts: for each of `workers` workers, requests `w`,
/// `w + workers`, … generated in that order by the worker's own generator
/// (`settings(w)`).
pub fn pregenerate(
    run: &HttpRun,
    total_requests: u64,
    workers: usize,
    settings: impl Fn(u64) -> GeneratorSettings,
) -> anyhow::Result<Vec<Vec<ReadyRequest>>> {
    let workers = workers.max(1) as u64;
    (0..workers)
        .map(|worker| {
            let mut generator = EventGenerator::new(settings(worker));
            (worker..total_requests)
                .step_by(workers as usize)
                .map(|request_number| {
                    let mut body = Vec::new();
                    let events = fill_body(run, request_number, &mut generator, &mut body)?;
                    Ok(ReadyRequest {
                        request_number,
                        body: Bytes::from(body),
                        events,
                    })
                })
                .collect()
        })
        .collect()
}

/// Runs one worker to completion and returns its tally. With `ready`
/// bodies (see [`pregenerate`]) it sends exactly those, in order; else it
/// takes the next request number of the run and generates its body.
pub async fn run_worker(
    run: Arc<HttpRun>,
    generator_settings: GeneratorSettings,
    ready: Option<Vec<ReadyRequest>>,
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
    let mut ready = ready.map(Vec::into_iter);
    loop {
        let (request_number, prepared) = match &mut ready {
            Some(requests) => match requests.next() {
                Some(request) => (request.request_number, Some(request)),
                None => break,
            },
            None => {
                let request_number = run.next_request.fetch_add(1, Ordering::Relaxed);
                if run
                    .total_requests
                    .is_some_and(|total| request_number >= total)
                {
                    break;
                }
                (request_number, None)
            }
        };
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
        let (request_body, events_in_request) = match prepared {
            Some(request) => (request.body, request.events),
            None => {
                let events = fill_body(&run, request_number, &mut generator, &mut body)?;
                let capacity = body.capacity();
                let filled = std::mem::replace(&mut body, Vec::with_capacity(capacity));
                (Bytes::from(filled), events)
            }
        };
        let request = match &run.load {
            HttpLoad::Get { .. } => client.get(&url),
            _ => client
                .post(&url)
                .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
                .body(request_body),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(stream: u64) -> GeneratorSettings {
        GeneratorSettings {
            seed: 5,
            stream,
            ..GeneratorSettings::default()
        }
    }

    /// Worker `w` of `c` gets requests `w`, `w + c`, …, each holding the
    /// events its own generator makes for them in that order, as when it
    /// generates while sending; the last batch is short.
    #[test]
    fn pregenerated_requests_are_dealt_round_robin_with_each_workers_own_events() {
        let run = HttpRun {
            base_url: "http://127.0.0.1:1".into(),
            load: HttpLoad::Batch { batch_size: 3 },
            total_requests: Some(4),
            total_events: Some(10),
            deadline: None,
            requests_per_second: None,
            timestamps: Timestamps::Backfill {
                start_ms: 1_759_492_800_000,
                spread_ms: 60_000,
                count: 10,
            },
            started: Instant::now(),
            next_request: AtomicU64::new(0),
            events_progress: AtomicU64::new(0),
            requests_progress: AtomicU64::new(0),
        };
        let workers = pregenerate(&run, 4, 3, settings).unwrap();
        let numbers: Vec<Vec<u64>> = workers
            .iter()
            .map(|requests| requests.iter().map(|r| r.request_number).collect())
            .collect();
        assert_eq!(numbers, vec![vec![0, 3], vec![1], vec![2]]);
        let events: Vec<u64> = workers.iter().flatten().map(|r| r.events).collect();
        assert_eq!(events, vec![3, 1, 3, 3]);
        for (worker, requests) in workers.iter().enumerate() {
            let mut generator = EventGenerator::new(settings(worker as u64));
            for request in requests {
                let mut expected = Vec::new();
                fill_body(&run, request.request_number, &mut generator, &mut expected).unwrap();
                assert_eq!(request.body.as_ref(), expected.as_slice());
                let parsed: Vec<serde_json::Value> = serde_json::from_slice(&request.body).unwrap();
                assert_eq!(parsed.len() as u64, request.events);
            }
        }
    }

    #[test]
    fn only_runs_that_fit_in_about_a_gibibyte_are_pregenerated() {
        assert!(fits_in_memory(500_000));
        assert!(fits_in_memory(2_000_000));
        assert!(!fits_in_memory(10_000_000));
    }
}
