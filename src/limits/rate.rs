//! Per-client rate limiting with GCRA (the generic cell rate algorithm).
//!
//! GCRA is a token bucket stored as one timestamp per key, the *theoretical
//! arrival time* (TAT): the time at which the client's budget would be full
//! again. With emission interval `T = 60 s / requests_per_minute` and
//! capacity `burst`, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= burst × T`, and then moves TAT to
//! `max(TAT, now) + T`. So:
//! - a fresh client may send `burst` requests at once;
//! - afterwards it gets one request every `T` (the sustained rate);
//! - a client that stays at or under the rate is never limited, because its
//!   TAT never runs ahead of `now` by more than the burst (the old service's
//!   limiter, which reset a key's expiry on every request, never released a
//!   steady client, and ignored `burst`).
//!
//! Why not the `governor` crate: it does per-key GCRA, but its keyed store
//! exposes no "remaining" count, and its `retain_recent` sweep is the only
//! bound on memory. Our version is about forty lines of arithmetic and gives
//! `remaining` and `retry_after` directly.
//!
//! Memory is bounded: a key whose TAT is in the past is in exactly the state
//! of a key never seen, so it can be dropped; shards are swept when they
//! reach their share of `max_keys` and at least once a minute. If a shard is
//! still full of active keys, the key closest to idle is evicted (the only
//! inexact case, reached only with more than `max_keys` clients active
//! within one burst window).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The most requests a client may send at once (`burst`).
    pub limit: u64,
    /// Requests the client could still send right now.
    pub remaining: u64,
    /// When refused: how long until one more request would be allowed.
    pub retry_after: Duration,
}

/// A per-key rate limiter. Implementations share state however they like
/// (in process, Redis); callers only ask about one key at a time.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one request for `key` and says whether it may proceed.
    async fn check(&self, key: &str) -> Decision;
}

/// Number of independently locked shards: requests of different clients
/// rarely contend for one lock.
const SHARDS: usize = 16;
/// An idle-key sweep runs at least this often per shard.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// In-process GCRA limiter, sharded, with a bounded number of keys.
pub struct GcraLimiter {
    emission_interval: Duration,
    burst: u64,
    /// `burst × emission_interval`: how far TAT may run ahead of now.
    tolerance: Duration,
    max_keys_per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

struct Shard {
    /// Key → theoretical arrival time.
    arrivals: HashMap<String, Instant>,
    last_sweep: Instant,
}

impl GcraLimiter {
    /// `requests_per_minute` and `burst` are at least 1 (the configuration
    /// validates them); `max_keys` bounds memory.
    pub fn new(requests_per_minute: u64, burst: u64, max_keys: usize) -> Self {
        let requests_per_minute = requests_per_minute.max(1);
        let burst = burst.max(1);
        let emission_interval =
            Duration::from_secs(60) / u32::try_from(requests_per_minute).unwrap_or(u32::MAX);
        let tolerance = emission_interval.saturating_mul(u32::try_from(burst).unwrap_or(u32::MAX));
        let now = Instant::now();
        GcraLimiter {
            emission_interval,
            burst,
            tolerance,
            max_keys_per_shard: (max_keys / SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        arrivals: HashMap::new(),
                        last_sweep: now,
                    })
                })
                .collect(),
        }
    }

    /// The GCRA step at an explicit time (tests drive the clock).
    pub fn check_at(&self, key: &str, now: Instant) -> Decision {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let Ok(mut shard) = self.shards[index].lock() else {
            // A poisoned lock means a panic elsewhere; refusing everyone
            // would turn it into an outage, so let the request through.
            return self.decision(true, 0, Duration::ZERO);
        };
        let tat = shard.arrivals.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.emission_interval;
        let ahead = new_tat - now;
        if ahead > self.tolerance {
            let retry_after = ahead - self.tolerance;
            return self.decision(false, 0, retry_after);
        }
        let remaining =
            ((self.tolerance - ahead).as_nanos() / self.emission_interval.as_nanos().max(1)) as u64;
        if !shard.arrivals.contains_key(key) {
            shard.make_room(now, self.max_keys_per_shard);
        }
        shard.arrivals.insert(key.to_string(), new_tat);
        self.decision(true, remaining, Duration::ZERO)
    }

    fn decision(&self, allowed: bool, remaining: u64, retry_after: Duration) -> Decision {
        Decision {
            allowed,
            limit: self.burst,
            remaining,
            retry_after,
        }
    }

    /// Keys currently tracked (for tests and diagnostics).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|shard| shard.lock().ok().map(|shard| shard.arrivals.len()))
            .sum()
    }
}

impl Shard {
    /// Drops idle keys when due or when full; evicts the key nearest to idle
    /// if the shard is still full.
    fn make_room(&mut self, now: Instant, max_keys: usize) {
        let full = self.arrivals.len() >= max_keys;
        if full || now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.arrivals.retain(|_, tat| *tat > now);
            self.last_sweep = now;
        }
        if self.arrivals.len() >= max_keys
            && let Some(oldest) = self
                .arrivals
                .iter()
                .min_by_key(|(_, tat)| **tat)
                .map(|(key, _)| key.clone())
        {
            self.arrivals.remove(&oldest);
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for GcraLimiter {
    async fn check(&self, key: &str) -> Decision {
        self.check_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_passes_then_one_per_interval() {
        let limiter = GcraLimiter::new(60, 3, 1000);
        let start = Instant::now();
        let remaining: Vec<u64> = (0..3)
            .map(|_| {
                let decision = limiter.check_at("a", start);
                assert!(decision.allowed);
                decision.remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check_at("a", start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // A refused request costs nothing: still one second to wait.
        assert!(
            !limiter
                .check_at("a", start + Duration::from_millis(999))
                .allowed
        );
        let later = limiter.check_at("a", start + Duration::from_secs(1));
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
    }

    #[test]
    fn steady_client_at_the_rate_is_never_limited() {
        let limiter = GcraLimiter::new(600, 1, 1000);
        let start = Instant::now();
        for step in 0..10_000u32 {
            let decision = limiter.check_at("steady", start + Duration::from_millis(100) * step);
            assert!(decision.allowed, "limited at step {step}");
        }
    }

    #[test]
    fn budget_refills_after_idle_and_keys_are_separate() {
        let limiter = GcraLimiter::new(60, 2, 1000);
        let start = Instant::now();
        assert!(limiter.check_at("a", start).allowed);
        assert!(limiter.check_at("a", start).allowed);
        assert!(!limiter.check_at("a", start).allowed);
        assert!(limiter.check_at("b", start).allowed);
        let decision = limiter.check_at("a", start + Duration::from_secs(10));
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 1);
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let limiter = GcraLimiter::new(1, 1, 64);
        let start = Instant::now();
        for client in 0..10_000 {
            limiter.check_at(&format!("client-{client}"), start);
        }
        assert!(limiter.tracked_keys() <= 64, "{}", limiter.tracked_keys());
        // Idle keys go at the next sweep.
        let later = start + Duration::from_secs(3600);
        for shard in 0..SHARDS * 8 {
            limiter.check_at(&format!("late-{shard}"), later);
        }
        assert!(limiter.tracked_keys() <= 64);
    }
}
