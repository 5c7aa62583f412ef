//! The distinct values the SQLite writer knows are stored, so a commit
//! skips their `INSERT … ON CONFLICT DO NOTHING`.
//!
//! Under concurrent single-event POSTs a commit of about sixteen events ran
//! about sixteen of these inserts, nearly all for a user or session already
//! stored in the same minute (BENCHMARKS.md, session 19). The cache holds
//! only rows this writer committed, and forgets everything when it cannot
//! vouch for them any more:
//! - another connection committed (`PRAGMA data_version` moved), which may
//!   have deleted rows;
//! - this writer deleted rows (retention), see [`StoredDistinct::clear`];
//! - it is full ([`StoredDistinct::new`]'s capacity): starting over is
//!   cheap, the next commits insert again what they see.

use foldhash::{HashMap, HashSet};

/// Rows of `distinct_values` known to be stored: (dimension, minute) to
/// values.
#[derive(Debug)]
pub struct StoredDistinct {
    rows: HashMap<(&'static str, i64), HashSet<String>>,
    len: usize,
    capacity: usize,
    data_version: Option<i64>,
}

impl StoredDistinct {
    /// An empty cache of at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        StoredDistinct {
            rows: HashMap::default(),
            len: 0,
            capacity,
            data_version: None,
        }
    }

    /// Forgets everything unless `data_version` is the one the rows were
    /// recorded under (another connection committed in between otherwise).
    pub fn validate(&mut self, data_version: i64) {
        if self.data_version != Some(data_version) {
            self.clear();
            self.data_version = Some(data_version);
        }
    }

    /// Whether the row is known to be stored.
    pub fn contains(&self, dimension: &'static str, minute: i64, value: &str) -> bool {
        self.rows
            .get(&(dimension, minute))
            .is_some_and(|values| values.contains(value))
    }

    /// Records rows a transaction of this writer has just committed.
    pub fn insert_committed<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (&'static str, i64, &'a str)>,
    ) {
        for (dimension, minute, value) in rows {
            if self.contains(dimension, minute, value) {
                continue;
            }
            if self.len >= self.capacity {
                self.clear();
            }
            self.rows
                .entry((dimension, minute))
                .or_default()
                .insert(value.to_owned());
            self.len += 1;
        }
    }

    /// Forgets every row (this writer deleted some).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_known_once_committed_until_the_data_version_moves() {
        let mut cache = StoredDistinct::new(10);
        cache.validate(1);
        assert!(!cache.contains("user_id", 60_000, "u1"));
        cache.insert_committed([("user_id", 60_000, "u1")]);
        assert!(cache.contains("user_id", 60_000, "u1"));
        assert!(!cache.contains("user_id", 120_000, "u1"));
        assert!(!cache.contains("session_id", 60_000, "u1"));
        cache.validate(1);
        assert!(cache.contains("user_id", 60_000, "u1"));
        cache.validate(2);
        assert!(!cache.contains("user_id", 60_000, "u1"));
    }

    #[test]
    fn a_full_cache_starts_over() {
        let mut cache = StoredDistinct::new(2);
        cache.insert_committed([
            ("user_id", 0, "a"),
            ("user_id", 0, "b"),
            ("user_id", 0, "a"),
        ]);
        assert_eq!(cache.len, 2);
        cache.insert_committed([("user_id", 0, "c")]);
        assert_eq!(cache.len, 1);
        assert!(cache.contains("user_id", 0, "c"));
        assert!(!cache.contains("user_id", 0, "a"));
        cache.clear();
        assert!(!cache.contains("user_id", 0, "c"));
    }
}
