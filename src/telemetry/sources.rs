//! Per-source ingestion counters: what each source (HTTP, Kafka, NATS)
//! received, stored, found duplicate, dead-lettered or skipped, and how far
//! behind its broker it is. Exported as Prometheus series and in
//! `/api/v1/internal/ingestion-metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;

/// The series shared by every source.
pub(super) struct SourceSeries {
    messages: IntCounterVec,
    lag: IntGaugeVec,
    connected: IntGaugeVec,
    sources: Mutex<BTreeMap<&'static str, Arc<SourceStats>>>,
}

impl SourceSeries {
    pub(super) fn new(registry: &Registry) -> Self {
        let messages = IntCounterVec::new(
            Opts::new(
                "analytics_source_messages_total",
                "Messages and events per source, by outcome (received, committed, duplicate, dead_lettered, skipped).",
            ),
            &["source", "outcome"],
        )
        .expect("valid counter");
        let lag = IntGaugeVec::new(
            Opts::new(
                "analytics_consumer_lag",
                "Messages the broker holds that this instance has not consumed yet, per topic (or stream) and partition.",
            ),
            &["source", "topic", "partition"],
        )
        .expect("valid gauge");
        let connected = IntGaugeVec::new(
            Opts::new(
                "analytics_source_connected",
                "1 while the source is connected to its broker.",
            ),
            &["source"],
        )
        .expect("valid gauge");
        for collector in [
            Box::new(messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lag.clone()),
            Box::new(connected.clone()),
        ] {
            registry
                .register(collector)
                .unwrap_or_else(|error| panic!("metric registration failed: {error}"));
        }
        SourceSeries {
            messages,
            lag,
            connected,
            sources: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counters of one source, created on first use.
    pub(super) fn source(&self, name: &'static str) -> Arc<SourceStats> {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(sources.entry(name).or_insert_with(|| {
            let outcome = |outcome: &str| self.messages.with_label_values(&[name, outcome]);
            Arc::new(SourceStats {
                name,
                received: outcome("received"),
                committed: outcome("committed"),
                duplicates: outcome("duplicate"),
                dead_lettered: outcome("dead_lettered"),
                skipped: outcome("skipped"),
                connected_gauge: self.connected.with_label_values(&[name]),
                connected: AtomicBool::new(false),
                lag_series: self.lag.clone(),
                lag: Mutex::new(BTreeMap::new()),
            })
        }))
    }

    pub(super) fn snapshot(&self) -> BTreeMap<&'static str, SourceSnapshot> {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sources
            .iter()
            .map(|(name, stats)| (*name, stats.snapshot()))
            .collect()
    }
}

/// The counters of one source. Cheap to share; every method is lock-free
/// except the lag map.
pub struct SourceStats {
    name: &'static str,
    received: IntCounter,
    committed: IntCounter,
    duplicates: IntCounter,
    dead_lettered: IntCounter,
    skipped: IntCounter,
    connected_gauge: IntGauge,
    connected: AtomicBool,
    lag_series: IntGaugeVec,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl SourceStats {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Messages (or events) delivered to this instance, redeliveries included.
    pub fn record_received(&self, count: usize) {
        self.received.inc_by(count as u64);
    }

    /// A commit finished: `committed` events newly stored, `duplicates`
    /// already stored.
    pub fn record_committed(&self, committed: usize, duplicates: usize) {
        self.committed.inc_by(committed as u64);
        self.duplicates.inc_by(duplicates as u64);
    }

    /// Messages newly stored as dead letters.
    pub fn record_dead_lettered(&self, count: usize) {
        self.dead_lettered.inc_by(count as u64);
    }

    /// Messages that carry nothing to store (e.g. an order update that
    /// changes no counted figure).
    pub fn record_skipped(&self, count: usize) {
        self.skipped.inc_by(count as u64);
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.connected_gauge.set(i64::from(connected));
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The consumer lag of one partition (`-1` for a stream without
    /// partitions).
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        let lag = lag.max(0);
        self.lag_series
            .with_label_values(&[self.name, topic, &partition.to_string()])
            .set(lag);
        let mut map = self
            .lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.insert((topic.to_string(), partition), lag);
    }

    /// Forgets the lag of a partition this instance no longer consumes.
    pub fn clear_lag(&self, topic: &str, partition: i32) {
        // Err only when no such series exists (no lag was reported for
        // that partition yet): nothing to remove.
        let _ = self
            .lag_series
            .remove_label_values(&[self.name, topic, &partition.to_string()]);
        let mut map = self
            .lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.remove(&(topic.to_string(), partition));
    }

    pub fn snapshot(&self) -> SourceSnapshot {
        let map = self
            .lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let partitions: Vec<PartitionLag> = map
            .iter()
            .map(|((topic, partition), lag)| PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                lag: *lag,
            })
            .collect();
        SourceSnapshot {
            connected: self.is_connected(),
            received: self.received.get(),
            committed: self.committed.get(),
            duplicates: self.duplicates.get(),
            dead_lettered: self.dead_lettered.get(),
            skipped: self.skipped.get(),
            lag: partitions.iter().map(|partition| partition.lag).sum(),
            partitions,
        }
    }
}

/// One source in `/api/v1/internal/ingestion-metrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceSnapshot {
    pub connected: bool,
    pub received: u64,
    pub committed: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    /// Sum over the partitions this instance consumes.
    pub lag: i64,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_counts_and_reports_its_lag() {
        let registry = Registry::new();
        let series = SourceSeries::new(&registry);
        let kafka = series.source("kafka");
        assert!(Arc::ptr_eq(&kafka, &series.source("kafka")));
        kafka.record_received(5);
        kafka.record_committed(3, 1);
        kafka.record_dead_lettered(1);
        kafka.set_lag("t", 0, 7);
        kafka.set_lag("t", 1, 2);
        kafka.set_connected(true);
        let snapshot = &series.snapshot()["kafka"];
        assert_eq!(
            (snapshot.received, snapshot.committed, snapshot.duplicates),
            (5, 3, 1)
        );
        assert_eq!((snapshot.dead_lettered, snapshot.lag), (1, 9));
        assert!(snapshot.connected);
        kafka.clear_lag("t", 0);
        assert_eq!(series.snapshot()["kafka"].lag, 2);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"analytics_consumer_lag{partition="1",source="kafka",topic="t"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"partition="0""#), "{text}");
    }
}
