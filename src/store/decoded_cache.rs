//! Decoded rollup rows kept for the readers.
//!
//! Decoding a row's quantile sketch costs far more than reading it: a
//! one-day series at one-minute buckets decodes 1 440 sketches, and at
//! millions of events each sketch holds hundreds of bins. Dashboards ask the
//! same ranges again and again, and past buckets rarely change, so readers
//! keep the accumulators they decoded, keyed by row, next to the exact bytes
//! they were decoded from.
//!
//! Invariant: a cached accumulator is used only when the stored sketch
//! bytes, count, sum, min and max are byte-for-byte those it was decoded
//! from, so a changed row is always decoded afresh (no staleness, whatever
//! wrote it). Memory is bounded: past `capacity` entries the cache starts
//! over.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::rollup::{Accumulator, Interval, RollupError};

/// Identifies a stored rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub metric: String,
    pub interval: Interval,
    pub bucket_start_ms: i64,
    pub dimensions: String,
}

/// The stored columns of a value row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredColumns {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sketch: Vec<u8>,
}

impl StoredColumns {
    fn decode(&self) -> Result<Accumulator, RollupError> {
        Accumulator::from_parts(self.count, self.sum, self.min, self.max, Some(&self.sketch))
    }
}

/// Decoded value rows, shared by the reader connections.
#[derive(Debug)]
pub struct DecodedCache {
    entries: Mutex<HashMap<RowKey, (StoredColumns, Accumulator)>>,
    capacity: usize,
}

impl DecodedCache {
    pub fn new(capacity: usize) -> Self {
        DecodedCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The accumulator of the row `key` whose stored columns are these:
    /// the cached one when they are unchanged, else decoded (outside the
    /// lock) and remembered.
    pub fn get_or_decode(
        &self,
        key: RowKey,
        count: u64,
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        sketch: &[u8],
    ) -> Result<Accumulator, RollupError> {
        let bits = |value: Option<f64>| value.map(f64::to_bits);
        {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((cached, accumulator)) = entries.get(&key)
                && cached.count == count
                && bits(cached.sum) == bits(sum)
                && bits(cached.min) == bits(min)
                && bits(cached.max) == bits(max)
                && cached.sketch == sketch
            {
                return Ok(accumulator.clone());
            }
        }
        let columns = StoredColumns {
            count,
            sum,
            min,
            max,
            sketch: sketch.to_vec(),
        };
        let accumulator = columns.decode()?;
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, (columns, accumulator.clone()));
        Ok(accumulator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(cache: &DecodedCache, rows: Vec<(RowKey, StoredColumns)>) -> Vec<Accumulator> {
        rows.into_iter()
            .map(|(key, columns)| {
                cache
                    .get_or_decode(
                        key,
                        columns.count,
                        columns.sum,
                        columns.min,
                        columns.max,
                        &columns.sketch,
                    )
                    .unwrap()
            })
            .collect()
    }

    fn row(bucket: i64, values: &[f64]) -> (RowKey, StoredColumns) {
        let mut accumulator = Accumulator::new_with_values();
        for value in values {
            accumulator.record_value(*value);
        }
        (
            RowKey {
                metric: "m".into(),
                interval: Interval::M1,
                bucket_start_ms: bucket,
                dimensions: String::new(),
            },
            StoredColumns {
                count: accumulator.count(),
                sum: accumulator.sum(),
                min: accumulator.min(),
                max: accumulator.max(),
                sketch: accumulator.sketch_bytes().unwrap(),
            },
        )
    }

    #[test]
    fn a_changed_row_is_decoded_again() {
        let cache = DecodedCache::new(10);
        let first = resolve(&cache, vec![row(0, &[1.0, 2.0])]);
        assert_eq!(first[0].count(), 2);
        let again = resolve(&cache, vec![row(0, &[1.0, 2.0])]);
        assert_eq!(again[0].sum(), Some(3.0));
        // Same key, new contents: the cached copy must not be used.
        let changed = resolve(&cache, vec![row(0, &[1.0, 2.0, 10.0])]);
        assert_eq!((changed[0].count(), changed[0].max()), (3, Some(10.0)));
    }

    #[test]
    fn stays_within_capacity() {
        let cache = DecodedCache::new(2);
        let rows: Vec<_> = (0..5).map(|bucket| row(bucket, &[bucket as f64])).collect();
        let resolved = resolve(&cache, rows);
        assert_eq!(resolved.len(), 5);
        assert!(cache.entries.lock().unwrap().len() <= 2);
    }
}
