//! The SQLite writer's cache of recently written rollup rows.
//!
//! A value row (count, sum, min, max, sketch) is updated by read, merge,
//! write. Live ingest touches the same few hundred rows (the current buckets
//! of every series) in every commit, so the writer keeps the accumulators it
//! last wrote and merges into those instead of reading and decoding the row
//! again: half the cost of the row.
//!
//! Invariants:
//! - an entry equals the stored row: entries are added only after their
//!   transaction committed, and the whole cache is dropped when a commit
//!   fails or when another connection changed the database (SQLite's
//!   `data_version`), so a stale entry is never merged into;
//! - memory is bounded: past `capacity` entries the cache starts over.

use std::collections::HashMap;

use crate::rollup::{Accumulator, RollupKey};

/// Recently written value rows, by key.
#[derive(Debug)]
pub struct RollupCache {
    entries: HashMap<RollupKey, Accumulator>,
    capacity: usize,
    /// `PRAGMA data_version` when the entries were last known current.
    data_version: Option<i64>,
}

impl RollupCache {
    pub fn new(capacity: usize) -> Self {
        RollupCache {
            entries: HashMap::new(),
            capacity,
            data_version: None,
        }
    }

    /// Drops every entry unless `data_version` is the one the entries were
    /// written under (another connection committed in between otherwise).
    pub fn validate(&mut self, data_version: i64) {
        if self.data_version != Some(data_version) {
            self.entries.clear();
            self.data_version = Some(data_version);
        }
    }

    /// Takes the stored accumulator of `key` out of the cache, if cached:
    /// the writer merges into it and puts it back once its transaction
    /// committed (no copy of the sketch on the hot path).
    pub fn take(&mut self, key: &RollupKey) -> Option<Accumulator> {
        self.entries.remove(key)
    }

    /// Records rows that were just committed.
    pub fn insert_committed(&mut self, rows: impl IntoIterator<Item = (RollupKey, Accumulator)>) {
        for (key, accumulator) in rows {
            if self.entries.len() >= self.capacity {
                // Starting over is cheap and keeps the bound simple; the
                // next commit re-reads the rows it touches.
                self.entries.clear();
            }
            self.entries.insert(key, accumulator);
        }
    }

    /// Forgets everything (after a failed commit).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.data_version = None;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::Interval;

    fn key(bucket: i64) -> RollupKey {
        RollupKey {
            metric: "m".into(),
            dimensions: String::new(),
            interval: Interval::M1,
            bucket_start_ms: bucket,
        }
    }

    #[test]
    fn another_writer_invalidates_everything() {
        let mut cache = RollupCache::new(10);
        cache.validate(1);
        cache.insert_committed([(key(0), Accumulator::new_with_values())]);
        cache.validate(1);
        assert!(cache.take(&key(0)).is_some());
        cache.insert_committed([(key(0), Accumulator::new_with_values())]);
        cache.validate(2);
        assert!(cache.take(&key(0)).is_none());
    }

    #[test]
    fn stays_within_capacity() {
        let mut cache = RollupCache::new(3);
        cache.insert_committed((0..10).map(|bucket| (key(bucket), Accumulator::new_with_values())));
        assert!(cache.len() <= 3);
        assert!(cache.take(&key(9)).is_some());
    }
}
