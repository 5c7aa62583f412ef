//! B25 Analytics: the event-analytics service of the B25 trading platform.
//!
//! [`run`] wires the parts together for one process: the store, the ingest
//! pipeline, the query engine and the HTTP listeners. `main.rs` only parses
//! the command line and calls it; tests call it with listeners bound to
//! port 0.

#![deny(unsafe_code)]

pub mod allocator;
pub mod api;
pub mod cache;
pub mod config;
pub mod import;
pub mod limits;
pub mod loadgen;
pub mod model;
pub mod pipeline;
pub mod query;
pub mod retention;
pub mod rollup;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod trading;

use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::health::Readiness;
use crate::api::security::{Security, cors_layer};
use crate::api::{ApiSettings, AppParts, AppState};
use crate::cache::memory::MemoryCache;
use crate::cache::redis::{RedisCache, RedisLink};
use crate::cache::{CachedQueries, QueryCache};
use crate::config::{Config, LoadedConfig, SqliteSynchronous, StoreDriver};
use crate::limits::server::ConnectionLimits;
use crate::model::{CompiledDefinition, EventLimits};
use crate::pipeline::validate::EventValidator;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::query::QueryEngine;
use crate::rollup::Interval;
use crate::sources::SourceContext;
use crate::store::Store;
use crate::store::postgres::{PostgresSettings, PostgresStore};
use crate::store::sqlite::{SqliteStore, Synchronous};
use crate::telemetry::Telemetry;
use crate::telemetry::sources::SourceStats;

/// Bytes of answers the in-process query cache holds at most.
const IN_PROCESS_CACHE_BYTES: usize = 64 << 20;

/// How often the trading summary refresher looks for marks when it has
/// caught up (see [`trading::summary`]).
const TRADING_REFRESH_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest life of an in-process cached answer when other instances may
/// write the store (see [`cache_ttl`]).
const UNSHARED_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The sockets the service serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    pub api: TcpListener,
    /// `None` when `metrics.enabled` is false.
    pub metrics: Option<TcpListener>,
}

/// The pipeline sizes and switches of `config` (`analytics.ingestion`,
/// `analytics.aggregation`), with `on_commit` told about every commit.
pub fn pipeline_settings(
    config: &Config,
    on_commit: Option<Arc<dyn pipeline::CommitListener>>,
) -> anyhow::Result<PipelineSettings> {
    Ok(PipelineSettings {
        batch_size: config.analytics.ingestion.batch_size,
        commits_in_flight: if config.database.driver.commits_in_parallel() {
            config.analytics.ingestion.workers
        } else {
            1
        },
        buffer_size: config.analytics.ingestion.buffer_size,
        intervals: configured_intervals(config)?,
        trading: config.analytics.aggregation.trading,
        on_commit,
    })
}

/// The configured rollup intervals, finest first.
pub fn configured_intervals(config: &Config) -> anyhow::Result<Vec<Interval>> {
    let mut intervals = config
        .analytics
        .aggregation
        .intervals
        .iter()
        .map(|text| {
            Interval::parse(text).with_context(|| {
                format!("analytics.aggregation.intervals: unknown interval {text:?}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    intervals.sort();
    intervals.dedup();
    Ok(intervals)
}

/// Opens the configured store and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let intervals = configured_intervals(config)?;
    match config.database.driver {
        StoreDriver::Sqlite => {
            let path = config.database.path.clone();
            let synchronous = match config.database.sqlite_synchronous {
                SqliteSynchronous::Normal => Synchronous::Normal,
                SqliteSynchronous::Full => Synchronous::Full,
            };
            let store = tokio::task::spawn_blocking(move || {
                SqliteStore::open(&path, synchronous, &intervals)
            })
            .await?
            .with_context(|| {
                format!(
                    "cannot open the SQLite store {}",
                    config.database.path.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        StoreDriver::Postgres => {
            let settings =
                PostgresSettings::from_config(&config.database, config.analytics.query.timeout)
                    .map_err(anyhow::Error::msg)?;
            let store = PostgresStore::open(settings, &intervals)
                .await
                .context("cannot open the PostgreSQL store")?;
            Ok(Arc::new(store))
        }
    }
}

/// Loads the stored custom event definitions into the validator.
pub async fn load_definitions(store: &dyn Store, validator: &EventValidator) -> anyhow::Result<()> {
    for definition in store.list_definitions().await? {
        let name = definition.name.clone();
        match CompiledDefinition::compile(definition) {
            Ok(compiled) => validator.install(compiled),
            // A stored schema that no longer compiles must not stop the
            // service; its events are accepted unchecked and this says so.
            Err(error) => {
                tracing::error!(name = %name, error = %error, "stored custom event schema does not compile; not enforced")
            }
        }
    }
    Ok(())
}

/// Runs the service until `shutdown` is cancelled, then drains: the API
/// stops taking requests, queued events are committed, and it returns.
pub async fn run(
    loaded: LoadedConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = loaded.config;
    if !loaded.unhonoured_keys.is_empty() {
        tracing::warn!(
            keys = %loaded.unhonoured_keys.join(", "),
            "these configuration keys are accepted but have no effect (not implemented yet, or redis.enabled is false)"
        );
    }
    let telemetry = Arc::new(Telemetry::new());
    let readiness = Arc::new(Readiness::default());
    let store = open_store(&config).await?;
    let intervals = configured_intervals(&config)?;
    let validator = event_validator(&config, &*store).await?;
    let retention = tokio::spawn(retention::run_on_schedule(
        Arc::clone(&store),
        config.analytics.retention.clone(),
        intervals.clone(),
        shutdown.clone(),
    ));
    // Redis, when enabled, shares the rate-limit budgets and the query
    // cache between instances; otherwise both live in process.
    let bumps_stop = CancellationToken::new();
    // Cancelled on every way out of `run`, early errors included.
    let _bumps_guard = bumps_stop.clone().drop_guard();
    let redis_link = if config.redis.is_enabled() {
        Some(
            RedisLink::open(&config.redis, telemetry.redis_errors.clone())
                .context("invalid redis configuration")?,
        )
    } else {
        None
    };
    let (query_cache, cache_task): (Arc<dyn QueryCache>, _) = match &redis_link {
        Some(link) => {
            // Stopped after the committer (below), not with `shutdown`: the
            // batches committed during the drain must invalidate too.
            let (cache, task) = RedisCache::start(Arc::clone(link), bumps_stop.clone());
            (Arc::new(cache), Some(task))
        }
        None => (Arc::new(MemoryCache::new(IN_PROCESS_CACHE_BYTES)), None),
    };
    let cache = Arc::new(CachedQueries::new(
        query_cache,
        cache_ttl(&config),
        telemetry.cache_hits.clone(),
        telemetry.cache_misses.clone(),
    ));
    let (pipeline, committer) = Pipeline::start(
        Arc::clone(&store),
        pipeline_settings(&config, Some(cache.invalidator()))?,
        Arc::clone(&telemetry),
    );
    let mut security = Security::new(&config.security, &config.server, &telemetry);
    if let Some(link) = &redis_link {
        security = security.share_limits_through(
            Arc::clone(link),
            &config.security.rate_limit,
            config.redis.fail_closed,
        );
    }
    if config.analytics.aggregation.trading {
        let telemetry = Arc::clone(&telemetry);
        tokio::spawn(trading::summary::run_refresher(
            Arc::clone(&store),
            TRADING_REFRESH_IDLE,
            shutdown.clone(),
            move |marks| {
                telemetry.trading_summary_marks.set(marks as i64);
                telemetry.trading_summary_passes.inc();
            },
        ));
    }
    let (stream_sources, source_tasks) = start_sources(
        &config,
        SourceParts {
            pipeline: pipeline.clone(),
            validator: Arc::clone(&validator),
            store: Arc::clone(&store),
            telemetry: Arc::clone(&telemetry),
        },
        shutdown.clone(),
    );
    let state = AppState::new(AppParts {
        http_source: telemetry.source("http"),
        stream_sources,
        trading_snapshot: Arc::default(),
        pipeline,
        validator,
        query: QueryEngine::new(Arc::clone(&store), &intervals),
        telemetry: Arc::clone(&telemetry),
        readiness: Arc::clone(&readiness),
        settings: Arc::new(ApiSettings {
            max_body_bytes: config.analytics.ingestion.max_body_bytes,
            max_batch_events: config.analytics.ingestion.max_batch_events,
            max_results: config.analytics.query.max_results,
            default_limit: config.analytics.query.default_limit,
            query_timeout: config.analytics.query.timeout,
            custom_events_enabled: config.custom_events.enabled,
            trading_enabled: config.analytics.aggregation.trading,
            raw_retention_ms: duration_ms(config.analytics.retention.raw_events),
        }),
        security: Arc::new(security),
        cache,
    });
    let api_addr = listeners.api.local_addr()?;
    let metrics_addr = match listeners.metrics {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let path = config.metrics.path.clone();
            let telemetry = Arc::clone(&telemetry);
            let app =
                axum::Router::new().route(&path, get(move || async move { telemetry.render() }));
            let token = shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await;
                if let Err(error) = served {
                    tracing::error!(error = %error, "metrics listener failed");
                }
            });
            Some(addr)
        }
        None => None,
    };
    let app = api::router(state, cors_layer(&config.security.cors));
    let signal = {
        let token = shutdown.clone();
        let readiness = Arc::clone(&readiness);
        async move {
            token.cancelled().await;
            readiness.mark_shutting_down();
            tracing::info!("shutdown requested: refusing new requests, draining");
        }
    };
    let mut server = tokio::spawn(limits::server::serve(
        listeners.api,
        app,
        ConnectionLimits {
            read_timeout: config.server.read_timeout,
            write_timeout: config.server.write_timeout,
        },
        telemetry.active_connections.clone(),
        signal,
    ));
    readiness.mark_started();
    tracing::info!(
        api_addr = %api_addr,
        metrics_addr = %metrics_addr.map(|addr| addr.to_string()).unwrap_or_else(|| "disabled".into()),
        database = %config.database.path.display(),
        api_keys = if config.security.api_key_enabled { config.security.api_keys.len() } else { 0 },
        rate_limit = %rate_limit_summary(&config),
        shared_state = if redis_link.is_some() { "redis" } else { "in process" },
        "analytics listening"
    );
    let shutdown_timeout = config.server.shutdown_timeout;
    let deadline = {
        let token = shutdown.clone();
        async move {
            token.cancelled().await;
            tokio::time::sleep(shutdown_timeout).await;
        }
    };
    tokio::select! {
        served = &mut server => served.context("api server task failed")?.context("api server failed")?,
        () = deadline => {
            tracing::warn!(timeout = ?shutdown_timeout, "requests still open at the shutdown deadline; closing them");
            server.abort();
        }
    }
    // The sources stop taking messages, wait for what they submitted and
    // commit their offsets (acknowledge) for it.
    for (name, task) in source_tasks {
        match tokio::time::timeout(shutdown_timeout, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::error!(source = name, error = %format!("{error:#}"), "source failed")
            }
            Ok(Err(error)) => tracing::error!(source = name, error = %error, "source task failed"),
            Err(_) => tracing::warn!(
                source = name,
                "source still draining at the shutdown deadline; its broker redelivers what it did not acknowledge"
            ),
        }
    }
    // The server and the sources (and with them every pipeline handle) are
    // gone: the committer commits what is queued and stops.
    match tokio::time::timeout(shutdown_timeout, committer).await {
        Ok(joined) => joined.context("ingest committer failed")?,
        Err(_) => anyhow::bail!("ingest queue not drained within server.shutdown_timeout"),
    }
    // Nothing commits any more: the rollup deltas still pending become
    // rollup rows now, so the store is complete without this instance
    // (otherwise the next one to open it folds them).
    if let Err(error) = store.fold_pending().await {
        tracing::warn!(%error, "folding the pending rollup deltas at shutdown failed; the next start folds them");
    }
    // The committer is done: no more invalidations; the bump task lands
    // what is pending (one attempt) and stops.
    bumps_stop.cancel();
    if let Some(task) = cache_task
        && tokio::time::timeout(shutdown_timeout, task).await.is_err()
    {
        tracing::warn!("redis generation bumps still running at the shutdown deadline");
    }
    // Retention stops at its next step once shutdown is signalled.
    if tokio::time::timeout(shutdown_timeout, retention)
        .await
        .is_err()
    {
        tracing::warn!(
            "retention run still going at the shutdown deadline; it resumes at the next start"
        );
    }
    tracing::info!("analytics stopped");
    Ok(())
}

/// What the stream sources are built from.
struct SourceParts {
    pipeline: Pipeline,
    validator: Arc<EventValidator>,
    store: Arc<dyn Store>,
    telemetry: Arc<Telemetry>,
}

type SourceTask = (&'static str, tokio::task::JoinHandle<anyhow::Result<()>>);

/// Starts the configured stream sources; each runs until `shutdown`, then
/// acknowledges what it stored and returns.
fn start_sources(
    config: &Config,
    parts: SourceParts,
    shutdown: CancellationToken,
) -> (Vec<Arc<SourceStats>>, Vec<SourceTask>) {
    let context = |name: &'static str| SourceContext {
        pipeline: parts.pipeline.clone(),
        validator: Arc::clone(&parts.validator),
        store: Arc::clone(&parts.store),
        stats: parts.telemetry.source(name),
        dead_letter_payload_bytes: config.analytics.ingestion.dead_letter_payload_bytes,
    };
    let mut stats = Vec::new();
    let mut tasks: Vec<SourceTask> = Vec::new();
    if config.kafka.is_enabled() {
        let context = context("kafka");
        stats.push(Arc::clone(&context.stats));
        let task = tokio::spawn(sources::kafka::run(
            config.kafka.clone(),
            context,
            shutdown.clone(),
        ));
        tasks.push(("kafka", task));
    }
    if config.nats.is_enabled() {
        let context = context("nats");
        stats.push(Arc::clone(&context.stats));
        let task = tokio::spawn(sources::nats::run(
            config.nats.clone(),
            context,
            shutdown.clone(),
        ));
        tasks.push(("nats", task));
    }
    (stats, tasks)
}

/// The query cache TTL. Commits invalidate only the caches they can reach:
/// with PostgreSQL (a store other instances may write) and no Redis, an
/// in-process cache never hears of the other instances' commits, so its
/// answers live at most [`UNSHARED_CACHE_TTL`]: within the contract's "a
/// reader sees a committed event within 1 s".
fn cache_ttl(config: &Config) -> std::time::Duration {
    let configured = config.analytics.query.cache_ttl;
    if config.database.driver == StoreDriver::Postgres && !config.redis.is_enabled() {
        if configured > UNSHARED_CACHE_TTL {
            tracing::info!(
                configured = ?configured,
                used = ?UNSHARED_CACHE_TTL,
                "query cache in process on a shared store: answers kept 1s (enable redis to share the cache)"
            );
        }
        return configured.min(UNSHARED_CACHE_TTL);
    }
    configured
}

/// How the rate limit is set, for the startup log line.
fn rate_limit_summary(config: &Config) -> String {
    let rate = &config.security.rate_limit;
    if !rate.enabled {
        return "disabled".into();
    }
    let exempt = if rate.exempt.is_empty() {
        "none".to_string()
    } else {
        rate.exempt.join(" ")
    };
    format!(
        "{} per minute, burst {}, exempt: {exempt}",
        rate.requests_per_minute, rate.burst
    )
}

/// The validator every source uses: the configured event limits, and the
/// stored custom event schemas when custom events are enabled.
pub async fn event_validator(
    config: &Config,
    store: &dyn Store,
) -> anyhow::Result<Arc<EventValidator>> {
    let validator = Arc::new(EventValidator::new(EventLimits {
        max_properties: config.custom_events.max_properties,
        max_property_size: config.custom_events.max_property_size,
        max_future_skew_ms: duration_ms(config.analytics.ingestion.max_future_skew),
        max_age_ms: duration_ms(config.analytics.retention.raw_events),
    }));
    if config.custom_events.enabled {
        load_definitions(store, &validator).await?;
    }
    Ok(validator)
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
