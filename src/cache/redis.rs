//! Redis: the link every shared feature uses ([`RedisLink`]) and the shared
//! query cache ([`RedisCache`]).
//!
//! Invariants of the link:
//! - Redis is never needed to answer: every operation has a deadline
//!   ([`OPERATION_TIMEOUT`]); a failure is counted in
//!   `analytics_redis_errors_total{use}` and logged at most once per
//!   [`LOG_EVERY`], and the caller falls back (the cache misses, the limiter
//!   fails open or closed as configured);
//! - after a failure, operations fail at once for [`PAUSE_AFTER_FAILURE`]
//!   instead of each request paying a connection timeout; then one tries
//!   again, and the connection manager reconnects by itself;
//! - the service starts while Redis is down (connections are made lazily);
//!   `/health` says `"cache": "disconnected"` until it answers.
//!
//! Keys: `<key_prefix>q:v1:<hex>` answers (expire with the TTL),
//! `<key_prefix>gen:<day>` day generations (expire a day after their last
//! bump, longer than any answer that could have read them), and
//! `<key_prefix>rl:<client>` limiter state (see `limits::redis`).
//!
//! Generation bumps run in a task of their own ([`RedisCache::start`]), so
//! the committer never waits for Redis: the few milliseconds until the bump
//! lands are the only window in which a stale answer can be read. Bumps
//! that fail are merged into the next attempt and retried until they land.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{CacheError, DaySpan, QueryCache};
use crate::config::RedisConfig;

/// Deadline of one Redis operation.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, operations fail at once for this long.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// At most one error log line per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(30);
/// A day generation outlives its last bump by this much: longer than any
/// answer TTL, so a reset generation can never match a live entry.
const GENERATION_LIFETIME: Duration = Duration::from_secs(86_400);
/// Pause between attempts of a generation bump that failed.
const BUMP_RETRY: Duration = Duration::from_millis(200);

/// Connections to one Redis server, with the failure policy above.
pub struct RedisLink {
    connections: Vec<ConnectionManager>,
    next_connection: AtomicUsize,
    key_prefix: String,
    started: Instant,
    /// Milliseconds since `started` before which operations fail at once.
    paused_until_ms: AtomicU64,
    connected: AtomicBool,
    /// Milliseconds since `started` of the last error log line (+1; 0: none).
    last_logged_ms: AtomicU64,
    errors: IntCounterVec,
}

impl RedisLink {
    /// Prepares `pool_size` multiplexed connections to the configured
    /// server; they connect on first use, so this succeeds with Redis down.
    /// Must run inside the Tokio runtime.
    pub fn open(config: &RedisConfig, errors: IntCounterVec) -> anyhow::Result<Arc<RedisLink>> {
        let info = match &config.url {
            Some(url) => url.expose().into_connection_info()?,
            None => {
                let mut redis = RedisConnectionInfo::default()
                    .set_db(i64::from(config.db))
                    // Library name announcement costs a round trip per
                    // connection and tells the server nothing it needs.
                    .set_skip_set_lib_name();
                if !config.password.expose().is_empty() {
                    redis = redis.set_password(config.password.expose());
                }
                ConnectionAddr::Tcp(config.host.clone(), config.port)
                    .into_connection_info()?
                    .set_redis_settings(redis)
            }
        };
        let client = redis::Client::open(info)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OPERATION_TIMEOUT))
            .set_response_timeout(Some(OPERATION_TIMEOUT))
            // Retries inside one operation would outlast its deadline; the
            // next operation after the pause tries again instead.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(100));
        let connections = (0..config.pool_size.max(1))
            .map(|_| {
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
            })
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Arc::new(RedisLink {
            connections,
            next_connection: AtomicUsize::new(0),
            key_prefix: config.key_prefix.clone(),
            started: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
            // Optimistic until the first operation says otherwise.
            connected: AtomicBool::new(true),
            last_logged_ms: AtomicU64::new(0),
            errors,
        }))
    }

    /// `key_prefix` + `suffix`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.key_prefix)
    }

    /// Whether the last operation succeeded.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs one operation on one of the connections (round robin) under the
    /// failure policy; `use_name` labels the error counter.
    pub async fn run<T, F, Fut>(
        &self,
        use_name: &'static str,
        operation: F,
    ) -> Result<T, CacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.elapsed_ms() < self.paused_until_ms.load(Ordering::Relaxed) {
            self.errors.with_label_values(&[use_name]).inc();
            return Err(CacheError(
                "redis unavailable (paused after an error)".into(),
            ));
        }
        let index = self.next_connection.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = self.connections[index].clone();
        let outcome = match tokio::time::timeout(OPERATION_TIMEOUT, operation(connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {OPERATION_TIMEOUT:?}")),
        };
        match outcome {
            Ok(value) => {
                if !self.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis reachable again");
                }
                Ok(value)
            }
            Err(message) => {
                self.connected.store(false, Ordering::Relaxed);
                let now_ms = self.elapsed_ms();
                self.paused_until_ms.store(
                    now_ms + PAUSE_AFTER_FAILURE.as_millis() as u64,
                    Ordering::Relaxed,
                );
                self.errors.with_label_values(&[use_name]).inc();
                let last = self.last_logged_ms.load(Ordering::Relaxed);
                let due = last == 0 || now_ms + 1 >= last + LOG_EVERY.as_millis() as u64;
                if due
                    && self
                        .last_logged_ms
                        .compare_exchange(last, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        error = %message,
                        operation = use_name,
                        "redis operation failed; falling back (logged at most every 30s, counted in analytics_redis_errors_total)"
                    );
                }
                Err(CacheError(message))
            }
        }
    }

    /// Whether Redis answers a PING now (for `/health`).
    pub async fn ping(&self) -> bool {
        self.run("health", |mut connection| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .is_ok()
    }
}

/// Day generations not yet bumped in Redis, merged into one span.
#[derive(Default)]
struct PendingBumps {
    span: std::sync::Mutex<Option<DaySpan>>,
    notify: Notify,
}

impl PendingBumps {
    fn add(&self, days: DaySpan) {
        if let Ok(mut span) = self.span.lock() {
            *span = Some(span.map_or(days, |pending| pending.union(days)));
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Option<DaySpan> {
        self.span.lock().ok().and_then(|mut span| span.take())
    }
}

/// The shared query cache in Redis.
pub struct RedisCache {
    link: Arc<RedisLink>,
    pending: Arc<PendingBumps>,
}

impl RedisCache {
    /// The cache and its generation-bump task, which stops when `shutdown`
    /// is cancelled (after one last attempt to land pending bumps).
    pub fn start(
        link: Arc<RedisLink>,
        shutdown: CancellationToken,
    ) -> (RedisCache, JoinHandle<()>) {
        let pending = Arc::new(PendingBumps::default());
        let task = tokio::spawn(run_bumps(Arc::clone(&link), Arc::clone(&pending), shutdown));
        (RedisCache { link, pending }, task)
    }
}

/// Lands generation bumps: one pipeline of `INCR` + `PEXPIRE` per day.
async fn run_bumps(link: Arc<RedisLink>, pending: Arc<PendingBumps>, shutdown: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = pending.notify.notified() => false,
        };
        if let Some(days) = pending.take() {
            let lifetime_ms = GENERATION_LIFETIME.as_millis() as u64;
            let keys: Vec<String> = days
                .days()
                .map(|day| link.key(&format!("gen:{day}")))
                .collect();
            let bumped = link
                .run("invalidate", |mut connection| async move {
                    let mut pipeline = redis::pipe();
                    for key in &keys {
                        pipeline.incr(key, 1).ignore();
                        pipeline.pexpire(key, lifetime_ms as i64).ignore();
                    }
                    pipeline.query_async::<()>(&mut connection).await
                })
                .await;
            if bumped.is_err() && !stopping {
                // Keep them for the next attempt; answers read meanwhile
                // come from the store anyway while Redis fails.
                pending.add(days);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(BUMP_RETRY) => {}
                }
                continue;
            }
        }
        if stopping {
            break;
        }
    }
    tracing::debug!("redis generation bumps stopped");
}

#[async_trait::async_trait]
impl QueryCache for RedisCache {
    async fn generations(&self, days: DaySpan) -> Result<Vec<u64>, CacheError> {
        let keys: Vec<String> = days
            .days()
            .map(|day| self.link.key(&format!("gen:{day}")))
            .collect();
        let values: Vec<Option<u64>> = self
            .link
            .run("cache", |mut connection| async move {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(values.into_iter().map(|value| value.unwrap_or(0)).collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let key = self.link.key(key);
        self.link
            .run("cache", |mut connection| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
            })
            .await
    }

    async fn put(&self, key: &str, answer: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let key = self.link.key(key);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.link
            .run("cache", |mut connection| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(answer)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
    }

    fn invalidate(&self, days: DaySpan) {
        self.pending.add(days);
    }

    async fn status(&self) -> &'static str {
        if self.link.ping().await {
            "connected"
        } else {
            "disconnected"
        }
    }
}
