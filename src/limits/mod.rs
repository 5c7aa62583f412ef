//! Limits at the edge of the service: how much one client may ask for
//! (the rate limiter) and how the API listener bounds connections (read and
//! write timeouts, the live connection count).
//!
//! The limiter is a trait, [`RateLimiter`], so a shared (Redis-backed)
//! implementation can replace the in-process [`GcraLimiter`] without the API
//! layer changing.

pub mod rate;
pub mod server;

pub use rate::{Decision, GcraLimiter, RateLimiter};
