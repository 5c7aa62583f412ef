//! Black-box tests: the real service on port 0, spoken to over HTTP.
//! One test binary (faster to link than one per file).

mod cache;
mod contract;
mod custom_events;
mod dead_letters;
mod durability;
mod errors;
mod exactness;
mod helpers;
mod kafka;
mod logging;
mod nats;
mod postgres_outage;
mod redis;
mod retention;
mod scale_out;
mod security;
mod trading;
mod trading_orders;
