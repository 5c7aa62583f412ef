//! Limits at the edge of the service: how much one client may ask for
//! (the rate limiter) and how the API listener bounds connections (read and
//! write timeouts, the live connection count).
//!
//! The limiter is a trait, [`RateLimiter`]: the in-process [`GcraLimiter`]
//! by default, the shared [`RedisGcraLimiter`] when `redis` is enabled; the
//! API layer does not know which it has.

pub mod rate;
pub mod redis;
pub mod server;

pub use rate::{Decision, GcraLimiter, RateLimiter};
pub use redis::RedisGcraLimiter;
