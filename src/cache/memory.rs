//! The in-process query cache: one process, nothing to install.
//!
//! Invariants:
//! - memory is bounded: the answers' bytes (plus their keys) never exceed
//!   `max_bytes`; when a new answer would, the oldest go first. Every entry
//!   lives for the same TTL, so insertion order is also expiry order, and
//!   expired entries are dropped from the front of the same queue;
//! - the day generations are a map of the days ever bumped; events are
//!   accepted only within the retention period (`max_age`) and a little
//!   ahead of now, so the map holds at most that many days.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{CacheError, DaySpan, QueryCache};

/// Cost charged per entry beyond its key and answer (map and queue slots).
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// In-process [`QueryCache`], bounded in bytes.
pub struct MemoryCache {
    max_bytes: usize,
    entries: Mutex<Entries>,
    generations: Mutex<HashMap<i64, u64>>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    /// Keys in insertion order, with the sequence number of the insertion
    /// (a key stored again leaves a stale record behind, skipped on pop).
    order: VecDeque<(String, u64)>,
    bytes: usize,
    next_sequence: u64,
}

struct Entry {
    answer: Vec<u8>,
    expires_at: Instant,
    sequence: u64,
}

fn entry_cost(key: &str, answer: &[u8]) -> usize {
    key.len() + answer.len() + ENTRY_OVERHEAD_BYTES
}

impl MemoryCache {
    /// A cache holding at most `max_bytes` of keys and answers.
    pub fn new(max_bytes: usize) -> Self {
        MemoryCache {
            max_bytes,
            entries: Mutex::new(Entries::default()),
            generations: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes currently held (tests and diagnostics).
    pub fn bytes(&self) -> usize {
        self.entries
            .lock()
            .map(|entries| entries.bytes)
            .unwrap_or(0)
    }
}

impl Entries {
    /// Removes the oldest record; returns false when the queue is empty.
    fn pop_oldest(&mut self) -> bool {
        let Some((key, sequence)) = self.order.pop_front() else {
            return false;
        };
        if self
            .by_key
            .get(&key)
            .is_some_and(|entry| entry.sequence == sequence)
            && let Some(entry) = self.by_key.remove(&key)
        {
            self.bytes -= entry_cost(&key, &entry.answer);
        }
        true
    }

    /// Drops expired entries from the front, then the oldest until `needed`
    /// more bytes fit under `max_bytes`.
    fn make_room(&mut self, needed: usize, max_bytes: usize, now: Instant) {
        while let Some((key, _)) = self.order.front() {
            let expired = self
                .by_key
                .get(key)
                .is_none_or(|entry| entry.expires_at <= now);
            if !expired {
                break;
            }
            self.pop_oldest();
        }
        while self.bytes + needed > max_bytes && self.pop_oldest() {}
    }
}

#[async_trait::async_trait]
impl QueryCache for MemoryCache {
    async fn generations(&self, days: DaySpan) -> Result<Vec<u64>, CacheError> {
        let generations = self
            .generations
            .lock()
            .map_err(|_| CacheError("generation map poisoned".into()))?;
        Ok(days
            .days()
            .map(|day| generations.get(&day).copied().unwrap_or(0))
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let entries = self
            .entries
            .lock()
            .map_err(|_| CacheError("cache poisoned".into()))?;
        Ok(entries
            .by_key
            .get(key)
            .filter(|entry| entry.expires_at > Instant::now())
            .map(|entry| entry.answer.clone()))
    }

    async fn put(&self, key: &str, answer: Vec<u8>, ttl: Duration) -> Result<(), CacheError> {
        let cost = entry_cost(key, &answer);
        if cost > self.max_bytes {
            return Ok(());
        }
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| CacheError("cache poisoned".into()))?;
        let now = Instant::now();
        if let Some(old) = entries.by_key.remove(key) {
            entries.bytes -= entry_cost(key, &old.answer);
        }
        entries.make_room(cost, self.max_bytes, now);
        let sequence = entries.next_sequence;
        entries.next_sequence += 1;
        entries.order.push_back((key.to_string(), sequence));
        entries.bytes += cost;
        entries.by_key.insert(
            key.to_string(),
            Entry {
                answer,
                expires_at: now + ttl,
                sequence,
            },
        );
        // Keys stored again leave stale queue records; keep the queue
        // proportional to the live entries.
        if entries.order.len() > 2 * entries.by_key.len() + 1024 {
            let Entries { by_key, order, .. } = &mut *entries;
            order.retain(|(key, sequence)| {
                by_key
                    .get(key)
                    .is_some_and(|entry| entry.sequence == *sequence)
            });
        }
        Ok(())
    }

    fn invalidate(&self, days: DaySpan) {
        if let Ok(mut generations) = self.generations.lock() {
            for day in days.days() {
                *generations.entry(day).or_insert(0) += 1;
            }
        }
    }

    async fn status(&self) -> &'static str {
        "in_process"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn memory_is_bounded_and_oldest_go_first() {
        let cache = MemoryCache::new(10 * (100 + 8 + ENTRY_OVERHEAD_BYTES));
        for index in 0..100 {
            cache
                .put(&format!("key-{index:04}"), vec![0; 100], TTL)
                .await
                .unwrap();
            assert!(cache.bytes() <= cache.max_bytes);
        }
        assert!(cache.get("key-0000").await.unwrap().is_none());
        assert!(cache.get("key-0099").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn entries_expire_and_keys_can_be_replaced() {
        let cache = MemoryCache::new(1 << 20);
        cache.put("a", b"1".to_vec(), TTL).await.unwrap();
        cache.put("a", b"2".to_vec(), TTL).await.unwrap();
        assert_eq!(cache.get("a").await.unwrap(), Some(b"2".to_vec()));
        cache.put("b", b"3".to_vec(), Duration::ZERO).await.unwrap();
        assert_eq!(cache.get("b").await.unwrap(), None);
        for round in 0..5000 {
            cache.put("a", vec![round as u8], TTL).await.unwrap();
        }
        let entries = cache.entries.lock().unwrap();
        assert!(entries.order.len() <= 2 * entries.by_key.len() + 1025);
    }

    #[tokio::test]
    async fn invalidation_bumps_each_day() {
        let cache = MemoryCache::new(1 << 20);
        let span = DaySpan {
            first_day: 10,
            last_day: 12,
        };
        assert_eq!(cache.generations(span).await.unwrap(), [0, 0, 0]);
        cache.invalidate(DaySpan {
            first_day: 11,
            last_day: 13,
        });
        assert_eq!(cache.generations(span).await.unwrap(), [0, 1, 1]);
    }
}
