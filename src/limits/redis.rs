//! The shared rate limiter: the GCRA of [`super::rate`] with its state in
//! Redis, so every instance behind a load balancer draws on one budget per
//! client.
//!
//! One Lua script does the whole step atomically, in one round trip: it
//! reads the server's clock (`TIME`, so instances with skewed clocks still
//! agree), the key's theoretical arrival time (TAT), decides, and stores the
//! new TAT with an expiry of exactly the time until the key would be back
//! to the state of a key never seen: idle keys vanish by themselves. A
//! refused request writes nothing (it costs the client nothing, as in
//! process). Times are integer microseconds, formatted with `%d`: Lua's
//! default number formatting keeps 14 digits and would lose precision.
//!
//! On a Redis error the request is let through (`redis.fail_closed: false`,
//! the default: a lost Redis must not become an outage) or refused with a
//! one-second `Retry-After` (`fail_closed: true`); the link counts and logs
//! the error.

use std::sync::Arc;
use std::time::Duration;

use super::rate::{Decision, RateLimiter};
use crate::cache::redis::RedisLink;

/// KEYS[1]: the client's key. ARGV[1]: emission interval (µs).
/// ARGV[2]: burst. Returns {allowed (0/1), remaining, retry_after (µs)}.
const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = math.max(tonumber(stored), now)
end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, 0, ahead - tolerance}
end
local remaining = math.floor((tolerance - ahead) / interval)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', math.ceil(ahead / 1000)))
return {1, remaining, 0}
";

/// GCRA over Redis; see the module docs.
pub struct RedisGcraLimiter {
    link: Arc<RedisLink>,
    script: redis::Script,
    emission_interval_us: u64,
    burst: u64,
    fail_closed: bool,
}

impl RedisGcraLimiter {
    /// Same parameters as [`super::GcraLimiter::new`] (both at least 1).
    pub fn new(
        link: Arc<RedisLink>,
        requests_per_minute: u64,
        burst: u64,
        fail_closed: bool,
    ) -> Self {
        RedisGcraLimiter {
            link,
            script: redis::Script::new(GCRA_SCRIPT),
            emission_interval_us: (60_000_000 / requests_per_minute.max(1)).max(1),
            burst: burst.max(1),
            fail_closed,
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisGcraLimiter {
    async fn check(&self, key: &str) -> Decision {
        let redis_key = self.link.key(&format!("rl:{key}"));
        let script = &self.script;
        let (interval, burst) = (self.emission_interval_us, self.burst);
        let outcome = self
            .link
            .run("limiter", |mut connection| async move {
                script
                    .key(&redis_key)
                    .arg(interval)
                    .arg(burst)
                    .invoke_async::<(i64, i64, i64)>(&mut connection)
                    .await
            })
            .await;
        match outcome {
            Ok((allowed, remaining, retry_after_us)) => Decision {
                allowed: allowed == 1,
                limit: self.burst,
                remaining: u64::try_from(remaining).unwrap_or(0),
                retry_after: Duration::from_micros(u64::try_from(retry_after_us).unwrap_or(0)),
            },
            // Unknown budget: say the whole burst is left rather than invent
            // a number; the error is counted and logged by the link.
            Err(_) if !self.fail_closed => Decision {
                allowed: true,
                limit: self.burst,
                remaining: self.burst,
                retry_after: Duration::ZERO,
            },
            Err(_) => Decision {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                retry_after: Duration::from_secs(1),
            },
        }
    }
}
