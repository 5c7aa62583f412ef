//! Telemetry: the Prometheus registry with every series the service exports,
//! the ingestion counters of `/api/v1/internal/ingestion-metrics`, and log
//! setup.
//!
//! One observable event has one recording method here, which counts it (and
//! the caller logs it once), so series never drift apart.

pub mod logging;
pub mod sources;

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every metric the service exports.
pub struct Telemetry {
    pub registry: Registry,
    events_ingested: IntCounter,
    events_failed: IntCounter,
    events_duplicate: IntCounter,
    events_rejected: IntCounterVec,
    batches_processed: IntCounter,
    batch_duration: Histogram,
    batch_size: Histogram,
    pub query_duration: HistogramVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub active_connections: IntGauge,
    pub queue_depth: IntGauge,
    /// Marks a trading summary refresh could take up (all but those of the
    /// current minute) at the start of its last pass.
    pub trading_summary_marks: IntGauge,
    /// Trading summary refresh passes run.
    pub trading_summary_passes: IntCounter,
    pub overloaded: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Requests refused by the rate limiter (429).
    pub rate_limited: IntCounter,
    /// Requests refused for their API key, by reason (missing, unknown, scope).
    pub auth_refused: IntCounterVec,
    /// Requests answered 503 because `server.max_concurrent_requests` were
    /// already in flight.
    pub requests_shed: IntCounter,
    /// Failed Redis operations, by use (`limiter`, `cache`, `invalidate`,
    /// `health`); each one fell back as `redis.fail_closed` says.
    pub redis_errors: IntCounterVec,
    last_batch: Mutex<LastBatch>,
    sources: sources::SourceSeries,
}

#[derive(Default, Clone, Copy)]
struct LastBatch {
    size: usize,
    duration: Duration,
    total_latency: Duration,
}

/// Snapshot for `/api/v1/internal/ingestion-metrics`.
#[derive(Debug, serde::Serialize)]
pub struct IngestionMetrics {
    pub events_ingested: u64,
    pub events_failed: u64,
    pub events_duplicate: u64,
    pub batches_processed: u64,
    pub last_batch_size: usize,
    pub last_batch_duration: String,
    pub total_latency: String,
    pub queue_depth: i64,
    /// Trading summaries: `marks` outstanding at the start of the last
    /// refresh pass, and the `passes` run (see `crate::trading::summary`).
    pub trading_summaries: TradingSummaryProgress,
    /// Per source (http, kafka, nats): received, committed, duplicates,
    /// dead-lettered, skipped, lag.
    pub sources: std::collections::BTreeMap<&'static str, sources::SourceSnapshot>,
}

/// Progress of the trading summary refresher.
#[derive(Debug, serde::Serialize)]
pub struct TradingSummaryProgress {
    pub marks: i64,
    pub passes: u64,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: T,
) -> T {
    // Names are static and unique, so registration can only fail on a
    // programming error; that must surface at startup, not be ignored.
    registry
        .register(Box::new(collector.clone()))
        .unwrap_or_else(|error| panic!("metric registration failed: {error}"));
    collector
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid counter"),
    )
}

impl Telemetry {
    /// A fresh registry with every series registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let build_info = register(
            &registry,
            IntGauge::with_opts(
                Opts::new("analytics_build_info", "Build information.")
                    .const_label("version", env!("CARGO_PKG_VERSION")),
            )
            .expect("valid gauge"),
        );
        build_info.set(1);
        Telemetry {
            events_ingested: counter(
                &registry,
                "analytics_events_ingested_total",
                "Events stored (duplicates excluded).",
            ),
            events_failed: counter(
                &registry,
                "analytics_events_failed_total",
                "Events whose commit failed.",
            ),
            events_duplicate: counter(
                &registry,
                "analytics_events_duplicate_total",
                "Events dropped because their id was already stored.",
            ),
            events_rejected: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "analytics_events_rejected_total",
                        "Events refused by validation, by field.",
                    ),
                    &["field"],
                )
                .expect("valid counter"),
            ),
            batches_processed: counter(
                &registry,
                "analytics_batches_processed_total",
                "Batches committed.",
            ),
            batch_duration: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "analytics_batch_duration_seconds",
                        "Time to commit one batch.",
                    )
                    .buckets(latency_buckets.clone()),
                )
                .expect("valid histogram"),
            ),
            batch_size: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "analytics_batch_size_events",
                        "Events per committed batch.",
                    )
                    .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0]),
                )
                .expect("valid histogram"),
            ),
            query_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "analytics_query_duration_seconds",
                        "Time to answer a query, by kind.",
                    )
                    .buckets(latency_buckets.clone()),
                    &["query"],
                )
                .expect("valid histogram"),
            ),
            cache_hits: counter(&registry, "analytics_cache_hits_total", "Query cache hits."),
            cache_misses: counter(
                &registry,
                "analytics_cache_misses_total",
                "Query cache misses.",
            ),
            active_connections: register(
                &registry,
                IntGauge::new(
                    "analytics_active_connections",
                    "Open client connections to the API listener.",
                )
                .expect("valid gauge"),
            ),
            queue_depth: register(
                &registry,
                IntGauge::new(
                    "analytics_ingest_queue_events",
                    "Events waiting for their commit.",
                )
                .expect("valid gauge"),
            ),
            trading_summary_marks: register(
                &registry,
                IntGauge::new(
                    "analytics_trading_summary_marks",
                    "Trading summary marks ready (not of the current minute) at the start of the last refresh pass.",
                )
                .expect("valid gauge"),
            ),
            trading_summary_passes: counter(
                &registry,
                "analytics_trading_summary_passes_total",
                "Trading summary refresh passes run.",
            ),
            overloaded: counter(
                &registry,
                "analytics_ingest_overloaded_total",
                "Submissions refused because the ingest queue was full.",
            ),
            http_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "analytics_http_requests_total",
                        "HTTP requests by route and status.",
                    ),
                    &["route", "status"],
                )
                .expect("valid counter"),
            ),
            http_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "analytics_http_request_duration_seconds",
                        "HTTP request latency by route.",
                    )
                    .buckets(latency_buckets),
                    &["route"],
                )
                .expect("valid histogram"),
            ),
            redis_errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "analytics_redis_errors_total",
                        "Failed Redis operations, by use.",
                    ),
                    &["use"],
                )
                .expect("valid counter"),
            ),
            rate_limited: counter(
                &registry,
                "analytics_rate_limited_requests_total",
                "Requests refused by the rate limiter (429).",
            ),
            auth_refused: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "analytics_auth_refused_total",
                        "Requests refused for their API key, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid counter"),
            ),
            requests_shed: counter(
                &registry,
                "analytics_requests_shed_total",
                "Requests answered 503 because the in-flight cap was reached.",
            ),
            last_batch: Mutex::new(LastBatch::default()),
            sources: sources::SourceSeries::new(&registry),
            registry,
        }
    }

    /// A batch was committed: `inserted` new events, `duplicates` skipped.
    pub fn record_batch_committed(
        &self,
        size: usize,
        inserted: usize,
        duplicates: usize,
        duration: Duration,
    ) {
        self.events_ingested.inc_by(inserted as u64);
        self.events_duplicate.inc_by(duplicates as u64);
        self.batches_processed.inc();
        self.batch_duration.observe(duration.as_secs_f64());
        self.batch_size.observe(size as f64);
        if let Ok(mut last) = self.last_batch.lock() {
            last.size = size;
            last.duration = duration;
            last.total_latency += duration;
        }
    }

    /// A batch failed to commit; its events were not acknowledged.
    pub fn record_batch_failed(&self, size: usize) {
        self.events_failed.inc_by(size as u64);
    }

    /// An event was refused by validation.
    pub fn record_rejected(&self, field: &str) {
        let field = if field.starts_with("properties") {
            "properties"
        } else {
            field
        };
        self.events_rejected.with_label_values(&[field]).inc();
    }

    /// The snapshot served by the ingestion-metrics endpoint.
    pub fn ingestion_metrics(&self) -> IngestionMetrics {
        let last = self.last_batch.lock().map(|last| *last).unwrap_or_default();
        IngestionMetrics {
            events_ingested: self.events_ingested.get(),
            events_failed: self.events_failed.get(),
            events_duplicate: self.events_duplicate.get(),
            batches_processed: self.batches_processed.get(),
            last_batch_size: last.size,
            last_batch_duration: format_duration(last.duration),
            total_latency: format_duration(last.total_latency),
            queue_depth: self.queue_depth.get(),
            trading_summaries: TradingSummaryProgress {
                marks: self.trading_summary_marks.get(),
                passes: self.trading_summary_passes.get(),
            },
            sources: self.sources.snapshot(),
        }
    }

    /// The counters of one source (`http`, `kafka`, `nats`).
    pub fn source(&self, name: &'static str) -> std::sync::Arc<sources::SourceStats> {
        self.sources.source(name)
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|error| format!("# encoding failed: {error}\n"))
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// Formats a duration the way the old service did (`"1.52ms"`, `"3.2s"`).
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else if seconds >= 0.001 {
        format!("{:.2}ms", seconds * 1e3)
    } else {
        format!("{:.2}µs", seconds * 1e6)
    }
}
