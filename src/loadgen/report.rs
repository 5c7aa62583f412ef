//! What a load run measured, and how it is shown.
//!
//! Each worker keeps its own [`Tally`] (counters plus an HDR latency
//! histogram, no shared lock on the request path); the tallies are merged
//! once at the end into a [`Summary`], printed as text on stderr and, for
//! scripts, as one JSON object on stdout.
//!
//! Latency is measured per request from the moment it is sent to the moment
//! its whole response body has been read, in microseconds with three
//! significant digits (HDR histogram, 1 µs .. 5 min).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks exactly; larger values are clamped.
const MAX_TRACKED_MICROS: u64 = 300_000_000;

/// Counters and latencies of one worker.
pub struct Tally {
    pub requests_sent: u64,
    pub events_sent: u64,
    /// Requests answered 2xx.
    pub requests_acknowledged: u64,
    /// Events the service reported as newly stored.
    pub events_accepted: u64,
    /// Events the service reported as already stored.
    pub events_duplicate: u64,
    /// Events refused inside an otherwise accepted batch.
    pub events_rejected: u64,
    /// Requests answered 4xx.
    pub requests_rejected: u64,
    /// Requests answered 5xx.
    pub requests_failed: u64,
    /// Requests that got no answer (connect, timeout, reset).
    pub transport_errors: u64,
    latencies: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests_sent: 0,
            events_sent: 0,
            requests_acknowledged: 0,
            events_accepted: 0,
            events_duplicate: 0,
            events_rejected: 0,
            requests_rejected: 0,
            requests_failed: 0,
            transport_errors: 0,
            latencies: new_histogram(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that satisfy hdrhistogram's rules (low >= 1,
    // high >= 2 * low, sigfig <= 5); building cannot fail.
    Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

impl Tally {
    /// Records one request's latency.
    pub fn record_latency(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TRACKED_MICROS);
        // `saturating_record` never fails: out-of-range values are clamped.
        self.latencies.saturating_record(micros);
    }

    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.requests_sent += other.requests_sent;
        self.events_sent += other.events_sent;
        self.requests_acknowledged += other.requests_acknowledged;
        self.events_accepted += other.events_accepted;
        self.events_duplicate += other.events_duplicate;
        self.events_rejected += other.events_rejected;
        self.requests_rejected += other.requests_rejected;
        self.requests_failed += other.requests_failed;
        self.transport_errors += other.transport_errors;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
    }

    /// The summary of a run that took `elapsed`.
    pub fn summarise(&self, target: &str, elapsed: Duration) -> Summary {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let quantile_ms = |q: f64| self.latencies.value_at_quantile(q) as f64 / 1000.0;
        let has_latencies = !self.latencies.is_empty();
        Summary {
            target: target.to_string(),
            elapsed_seconds: round3(elapsed.as_secs_f64()),
            requests_sent: self.requests_sent,
            events_sent: self.events_sent,
            requests_acknowledged: self.requests_acknowledged,
            events_accepted: self.events_accepted,
            events_duplicate: self.events_duplicate,
            events_rejected: self.events_rejected,
            requests_rejected: self.requests_rejected,
            requests_failed: self.requests_failed,
            transport_errors: self.transport_errors,
            requests_per_second: round3(self.requests_sent as f64 / seconds),
            events_per_second: round3(self.events_sent as f64 / seconds),
            acknowledged_requests_per_second: round3(self.requests_acknowledged as f64 / seconds),
            latency_ms: has_latencies.then(|| LatencySummary {
                p50: round3(quantile_ms(0.50)),
                p95: round3(quantile_ms(0.95)),
                p99: round3(quantile_ms(0.99)),
                max: round3(self.latencies.max() as f64 / 1000.0),
                mean: round3(self.latencies.mean() / 1000.0),
            }),
            bodies_generated_before_start: false,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// The result of one load run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub target: String,
    pub elapsed_seconds: f64,
    pub requests_sent: u64,
    pub events_sent: u64,
    pub requests_acknowledged: u64,
    pub events_accepted: u64,
    pub events_duplicate: u64,
    pub events_rejected: u64,
    pub requests_rejected: u64,
    pub requests_failed: u64,
    pub transport_errors: u64,
    pub requests_per_second: f64,
    pub events_per_second: f64,
    pub acknowledged_requests_per_second: f64,
    /// `None` when no request was timed (file targets).
    pub latency_ms: Option<LatencySummary>,
    /// Whether every request body was generated before the clock started
    /// (see `loadgen::http::pregenerate`).
    pub bodies_generated_before_start: bool,
}

impl Summary {
    /// Human-readable summary, several lines.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{target}: {requests} requests, {events} events in {elapsed:.2}s\n  \
             rate: {rps:.1} requests/s, {eps:.1} events/s\n  \
             acknowledged (2xx): {ack} requests; events accepted {accepted}, duplicate {duplicate}, rejected in batch {in_batch}\n  \
             rejected (4xx): {rejected}  failed (5xx): {failed}  transport errors: {transport}\n",
            target = self.target,
            requests = self.requests_sent,
            events = self.events_sent,
            elapsed = self.elapsed_seconds,
            rps = self.requests_per_second,
            eps = self.events_per_second,
            ack = self.requests_acknowledged,
            accepted = self.events_accepted,
            duplicate = self.events_duplicate,
            in_batch = self.events_rejected,
            rejected = self.requests_rejected,
            failed = self.requests_failed,
            transport = self.transport_errors,
        );
        if let Some(latency) = &self.latency_ms {
            text.push_str(&format!(
                "  latency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}\n",
                latency.p50, latency.p95, latency.p99, latency.max, latency.mean
            ));
        }
        if self.bodies_generated_before_start {
            text.push_str("  bodies generated before the clock started\n");
        }
        text
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_tallies_add_up_and_percentiles_order() {
        let mut first = Tally::default();
        let mut second = Tally::default();
        for micros in 1..=1000u64 {
            first.record_latency(Duration::from_micros(micros));
            second.record_latency(Duration::from_micros(micros * 10));
        }
        first.requests_sent = 1000;
        second.requests_sent = 1000;
        first.merge(&second);
        let summary = first.summarise("get", Duration::from_secs(2));
        assert_eq!(summary.requests_sent, 2000);
        assert_eq!(summary.requests_per_second, 1000.0);
        let latency = summary.latency_ms.unwrap();
        assert!(latency.p50 <= latency.p95 && latency.p95 <= latency.p99);
        assert!(latency.p99 <= latency.max);
        assert!((latency.max - 10.0).abs() < 0.05, "{}", latency.max);
    }
}
