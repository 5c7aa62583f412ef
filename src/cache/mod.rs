//! The query cache: answers of `/api/v1/metrics`, `/api/v1/events/stats` and
//! `/api/v1/dashboard/metrics`, kept for `analytics.query.cache_ttl`, in
//! process ([`memory::MemoryCache`]) or shared through Redis
//! ([`redis::RedisCache`]).
//!
//! Invariant: a cached answer is never wrong for long, whatever the TTL.
//! Every UTC day of event time has a *generation* counter. Each committed
//! batch bumps the generation of every day in its [`TouchedTime`] (the
//! pipeline calls [`CacheInvalidator`] after the commit, before the
//! acknowledgement). A lookup reads the generations of the days its range
//! covers *before* the answer is computed, and those generations are part of
//! the entry's key; so once a day's generation moved, no lookup can find an
//! entry computed before that, and the stale entry merely ages out. An answer
//! computed while a commit landed is stored under the generations read
//! before it began: it is never found again, so it can do no harm.
//!
//! The key is a canonical form of the query: the route, the parameters that
//! change the answer in sorted order with their defaults applied (`interval`
//! `1h` and no `interval` are one query), and the range in normalised epoch
//! milliseconds (`2025-01-01T00:00:00Z` and `1735689600000` are one range).
//! Parameters the endpoint ignores are not part of it.
//!
//! What is not cached: a range that ends at the default "now" (every request
//! resolves it to another millisecond, so its key would never repeat: such
//! lookups bypass the cache and count neither as hit nor miss), a range over
//! more than [`MAX_CACHED_DAYS`] days, and errors. The dashboard, whose
//! windows are relative to now, is keyed by the current second: concurrent
//! screens share one computation and the answer is at most a second behind
//! the sliding windows (commits invalidate it at once like any other).
//!
//! Not covered by invalidation: events removed by a retention run (they are
//! older than every retention period; their answers fall out with the TTL)
//! and events written by another process that has no listener
//! (`analytics import`): the same.
//!
//! A cache that fails (Redis down) is a miss: the answer comes from the
//! store, and the failure is counted where it happened.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use crate::pipeline::{CommitListener, TouchedTime};
use crate::rollup::TimeRange;

/// Milliseconds in a UTC day: the unit of invalidation.
pub const DAY_MS: i64 = 86_400_000;
/// Ranges over more days are answered uncached: reading that many
/// generations would cost more than the answer saves.
pub const MAX_CACHED_DAYS: i64 = 400;
/// Version of the cached answer's format; part of every key, so a new
/// release never reads an old release's entries from a shared Redis.
const FORMAT_VERSION: &str = "v1";

/// An inclusive span of UTC days (days since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaySpan {
    pub first_day: i64,
    pub last_day: i64,
}

impl DaySpan {
    /// The days a half-open range `[start, end)` touches.
    pub fn of_range(range: TimeRange) -> DaySpan {
        let first_day = range.start_ms.div_euclid(DAY_MS);
        let last_day = (range.end_ms.saturating_sub(1))
            .div_euclid(DAY_MS)
            .max(first_day);
        DaySpan {
            first_day,
            last_day,
        }
    }

    /// The days an inclusive event-time span touches.
    pub fn of_touched(touched: TouchedTime) -> DaySpan {
        let first_day = touched.min_timestamp_ms.div_euclid(DAY_MS);
        DaySpan {
            first_day,
            last_day: touched.max_timestamp_ms.div_euclid(DAY_MS).max(first_day),
        }
    }

    /// Number of days in the span.
    pub fn len(self) -> i64 {
        self.last_day - self.first_day + 1
    }

    /// Whether the span has no day (never: spans hold at least one).
    pub fn is_empty(self) -> bool {
        self.len() <= 0
    }

    /// The smallest span holding both.
    pub fn union(self, other: DaySpan) -> DaySpan {
        DaySpan {
            first_day: self.first_day.min(other.first_day),
            last_day: self.last_day.max(other.last_day),
        }
    }

    /// Each day, first to last.
    pub fn days(self) -> impl Iterator<Item = i64> {
        self.first_day..=self.last_day
    }
}

/// Why a cache operation failed (the caller treats it as a miss).
#[derive(Debug, thiserror::Error)]
#[error("query cache unavailable: {0}")]
pub struct CacheError(pub String);

/// Where cached answers live. Implementations hold opaque bytes under a key
/// and a generation counter per day; the protocol that makes answers
/// correct is in [`CachedQueries`].
#[async_trait::async_trait]
pub trait QueryCache: Send + Sync {
    /// The current generation of each day of `days`, in order (0 for a day
    /// never bumped).
    async fn generations(&self, days: DaySpan) -> Result<Vec<u64>, CacheError>;
    /// The answer stored under `key`, if any and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;
    /// Stores `answer` under `key` for `ttl`.
    async fn put(&self, key: &str, answer: Vec<u8>, ttl: Duration) -> Result<(), CacheError>;
    /// Bumps the generation of every day of `days`. Called by the committer,
    /// so it must not block: slow work goes to a task of its own.
    fn invalidate(&self, days: DaySpan);
    /// For `/health`: `"in_process"`, `"connected"` or `"disconnected"`.
    async fn status(&self) -> &'static str;
}

/// A query in canonical form: what the key is made of.
#[derive(Debug, Clone)]
pub struct CanonicalQuery {
    route: &'static str,
    parameters: BTreeMap<&'static str, String>,
    range: TimeRange,
    /// Shorter lifetime than the configured TTL (not part of the key).
    ttl_cap: Option<Duration>,
}

impl CanonicalQuery {
    /// A query of `route` over the half-open `range`.
    pub fn new(route: &'static str, range: TimeRange) -> Self {
        CanonicalQuery {
            route,
            parameters: BTreeMap::new(),
            range,
            ttl_cap: None,
        }
    }

    /// Keeps the answer at most `ttl` (less than the configured TTL when an
    /// entry is useless sooner, like the dashboard's per-second entries).
    pub fn keep_at_most(mut self, ttl: Duration) -> Self {
        self.ttl_cap = Some(ttl);
        self
    }

    /// Adds a parameter that changes the answer (with its default applied).
    pub fn parameter(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.parameters.insert(name, value.into());
        self
    }

    /// `route?name=value&...&range=start..end`, parameters sorted.
    fn text(&self) -> String {
        let mut text = format!("{}?", self.route);
        for (name, value) in &self.parameters {
            // Values are escaped so `a&b=c` cannot pose as two parameters.
            let _ = write!(
                text,
                "{name}={}&",
                value.replace('%', "%25").replace('&', "%26")
            );
        }
        let _ = write!(text, "range={}..{}", self.range.start_ms, self.range.end_ms);
        text
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A cached answer.
    Hit(Vec<u8>),
    /// Compute the answer, then give it to [`CachedQueries::store`] with
    /// this ticket (which carries the generations read before computing).
    Miss(Ticket),
    /// Not cacheable (or the cache failed): compute and do not store.
    Bypass,
}

/// The key an answer computed after a miss is stored under.
pub struct Ticket {
    key: String,
    ttl_cap: Option<Duration>,
}

/// The cache protocol over any [`QueryCache`]: keys, generations, TTL and
/// the hit/miss counters.
pub struct CachedQueries {
    cache: Arc<dyn QueryCache>,
    ttl: Duration,
    hits: IntCounter,
    misses: IntCounter,
}

impl CachedQueries {
    /// `hits` and `misses` are `analytics_cache_hits_total` and
    /// `analytics_cache_misses_total`.
    pub fn new(
        cache: Arc<dyn QueryCache>,
        ttl: Duration,
        hits: IntCounter,
        misses: IntCounter,
    ) -> Self {
        CachedQueries {
            cache,
            ttl,
            hits,
            misses,
        }
    }

    /// Looks `query` up under the current generations of its days.
    pub async fn lookup(&self, query: &CanonicalQuery) -> Lookup {
        let days = DaySpan::of_range(query.range);
        if days.len() > MAX_CACHED_DAYS {
            return Lookup::Bypass;
        }
        let generations = match self.cache.generations(days).await {
            Ok(generations) => generations,
            Err(_) => {
                // The backend counted and logged it; the store answers.
                self.misses.inc();
                return Lookup::Bypass;
            }
        };
        let key = entry_key(query, days, &generations);
        match self.cache.get(&key).await {
            Ok(Some(answer)) => {
                self.hits.inc();
                Lookup::Hit(answer)
            }
            Ok(None) => {
                self.misses.inc();
                Lookup::Miss(Ticket {
                    key,
                    ttl_cap: query.ttl_cap,
                })
            }
            Err(_) => {
                self.misses.inc();
                Lookup::Bypass
            }
        }
    }

    /// Stores an answer computed after a miss. A failure only costs the
    /// next request a recomputation, so it is not reported to the caller.
    pub async fn store(&self, ticket: Ticket, answer: Vec<u8>) {
        let ttl = ticket.ttl_cap.map_or(self.ttl, |cap| cap.min(self.ttl));
        let _ = self.cache.put(&ticket.key, answer, ttl).await;
    }

    /// For `/health`.
    pub async fn status(&self) -> &'static str {
        self.cache.status().await
    }

    /// The commit listener that invalidates this cache.
    pub fn invalidator(&self) -> Arc<dyn CommitListener> {
        Arc::new(CacheInvalidator {
            cache: Arc::clone(&self.cache),
        })
    }
}

/// `FORMAT_VERSION:sha256(query text, days, generations)`, hex: fixed
/// length whatever the query, and nothing of the query readable in Redis.
fn entry_key(query: &CanonicalQuery, days: DaySpan, generations: &[u64]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(query.text().as_bytes());
    hasher.update(days.first_day.to_le_bytes());
    for generation in generations {
        hasher.update(generation.to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut key = format!("q:{FORMAT_VERSION}:");
    for byte in &digest[..20] {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// Bumps the generations of the days each committed batch touched.
struct CacheInvalidator {
    cache: Arc<dyn QueryCache>,
}

impl CommitListener for CacheInvalidator {
    fn committed(&self, touched: TouchedTime) {
        self.cache.invalidate(DaySpan::of_touched(touched));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_spans_follow_utc_days() {
        let range = TimeRange {
            start_ms: DAY_MS - 1,
            end_ms: 2 * DAY_MS,
        };
        // `end` is exclusive: the range stops on the last millisecond of day 1.
        assert_eq!(
            DaySpan::of_range(range),
            DaySpan {
                first_day: 0,
                last_day: 1
            }
        );
        let touched = TouchedTime {
            min_timestamp_ms: -1,
            max_timestamp_ms: 0,
        };
        assert_eq!(
            DaySpan::of_touched(touched),
            DaySpan {
                first_day: -1,
                last_day: 0
            }
        );
    }

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("hits", "hits").expect("counter"),
            IntCounter::new("misses", "misses").expect("counter"),
        )
    }

    #[tokio::test]
    async fn answer_computed_across_a_commit_is_never_served() {
        let (hits, misses) = counters();
        let memory: Arc<dyn QueryCache> = Arc::new(memory::MemoryCache::new(1 << 20));
        let cache = CachedQueries::new(
            memory,
            Duration::from_secs(60),
            hits.clone(),
            misses.clone(),
        );
        let range = TimeRange {
            start_ms: 3 * DAY_MS,
            end_ms: 5 * DAY_MS,
        };
        let query = CanonicalQuery::new("metrics", range);
        let Lookup::Miss(ticket) = cache.lookup(&query).await else {
            panic!("empty cache must miss");
        };
        // A batch touching day 4 commits while the answer is computed.
        cache.invalidator().committed(TouchedTime {
            min_timestamp_ms: 4 * DAY_MS + 5,
            max_timestamp_ms: 4 * DAY_MS + 9,
        });
        cache.store(ticket, b"before the commit".to_vec()).await;
        let Lookup::Miss(ticket) = cache.lookup(&query).await else {
            panic!("an answer older than a commit into its range was served");
        };
        cache.store(ticket, b"after".to_vec()).await;
        assert!(matches!(cache.lookup(&query).await, Lookup::Hit(answer) if answer == b"after"));
        // A commit outside the range leaves the entry alone.
        cache.invalidator().committed(TouchedTime {
            min_timestamp_ms: 9 * DAY_MS,
            max_timestamp_ms: 9 * DAY_MS,
        });
        assert!(matches!(cache.lookup(&query).await, Lookup::Hit(_)));
        assert_eq!((hits.get(), misses.get()), (2, 2));
    }

    #[test]
    fn canonical_keys_ignore_parameter_order_and_follow_generations() {
        let range = TimeRange {
            start_ms: 0,
            end_ms: 10,
        };
        let days = DaySpan::of_range(range);
        let one = CanonicalQuery::new("metrics", range)
            .parameter("metric_name", "a")
            .parameter("interval", "1h");
        let two = CanonicalQuery::new("metrics", range)
            .parameter("interval", "1h")
            .parameter("metric_name", "a");
        assert_eq!(entry_key(&one, days, &[0]), entry_key(&two, days, &[0]));
        assert_ne!(entry_key(&one, days, &[0]), entry_key(&one, days, &[1]));
        let tricky =
            CanonicalQuery::new("metrics", range).parameter("metric_name", "a&interval=1h");
        assert_ne!(one.text(), tricky.text());
    }
}
