//! Rollups: the pure maths behind pre-aggregated analytics.
//!
//! Events are summarised per metric, per dimension set and per epoch-aligned
//! bucket of each supported [`Interval`]. This module holds only plain data
//! and pure functions (no I/O, no SQL, no async) so that every store and every
//! query shares one definition of:
//!
//! - [`bucket`]: which bucket an event belongs to, and how an arbitrary query
//!   range splits into whole buckets plus raw edges ([`decompose`]);
//! - [`accumulator`]: the mergeable summary kept per bucket (count, sum, min,
//!   max, a relative-error quantile sketch) and its stored form;
//! - [`batch`]: the per-batch, in-memory accumulation of rollup deltas, so a
//!   store writes one upsert per touched row, in key order.
//!
//! Invariant shared by all three: merging the accumulators of two buckets
//! gives the accumulator of the union of their events (exactly for count, sum
//! up to float rounding, min and max; within the sketch's 1% relative error
//! for quantiles).

pub mod accumulator;
pub mod batch;
pub mod bucket;

pub use accumulator::{Accumulator, RollupError};
pub use batch::{RollupBatch, RollupKey};
pub use bucket::{Interval, Piece, TimeRange, decompose};
