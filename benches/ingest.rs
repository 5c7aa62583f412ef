//! Store-level ingest comparison: preparing and committing (with its fsync) 10 000
//! realistic events (rollups included) against inserting the same rows
//! straight into the same SQLite schema with one prepared statement in one
//! transaction (the baseline). Both write into fresh temp files with the
//! store's pragmas (WAL, synchronous FULL as configured by default).
//!
//! Criterion reports each side's time and throughput; at the end the bench
//! prints the ratio (store rate ÷ raw rate) from the medians of its own
//! repeated runs. Run with `cargo bench --bench ingest`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use analytics::loadgen::baseline::{open_raw, raw_insert, realistic_events};
use analytics::model::Event;
use analytics::rollup::Interval;
use analytics::store::sqlite::{SqliteStore, Synchronous};
use analytics::store::{PreparedBatch, Store};
use criterion::{BatchSize, Criterion, Throughput};

const EVENTS: usize = 10_000;

struct Fresh {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn fresh() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    Fresh { _dir: dir, path }
}

fn store_commit(runtime: &tokio::runtime::Runtime, events: &[Event]) -> Duration {
    let target = fresh();
    let store =
        Arc::new(SqliteStore::open(&target.path, Synchronous::Full, &Interval::ALL).unwrap());
    let owned = events.to_vec();
    let started = Instant::now();
    commit_and_sync(runtime, &store, owned);
    started.elapsed()
}

/// Everything the service does for a batch: preparation (properties JSON,
/// rollup deltas), the commit, and the fsync before the acknowledgement.
fn commit_and_sync(runtime: &tokio::runtime::Runtime, store: &SqliteStore, events: Vec<Event>) {
    let batch = PreparedBatch::prepare(events, &Interval::ALL);
    black_box(runtime.block_on(store.commit_batch(batch)).unwrap());
    runtime.block_on(store.sync()).unwrap();
}

fn raw(events: &[Event]) -> Duration {
    let target = fresh();
    let mut connection = open_raw(&target.path, Synchronous::Full).unwrap();
    let started = Instant::now();
    raw_insert(&mut connection, events).unwrap();
    started.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let events = realistic_events(EVENTS, 42);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("sqlite_10000_events");
        group.throughput(Throughput::Elements(EVENTS as u64));
        group.bench_function("store_commit_batch_with_rollups", |bencher| {
            bencher.iter_batched(
                || {
                    let target = fresh();
                    let store =
                        SqliteStore::open(&target.path, Synchronous::Full, &Interval::ALL).unwrap();
                    (target, Arc::new(store), events.clone())
                },
                |(target, store, owned)| {
                    commit_and_sync(&runtime, &store, owned);
                    target
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("raw_insert_baseline", |bencher| {
            bencher.iter_batched(
                || {
                    let target = fresh();
                    let connection = open_raw(&target.path, Synchronous::Full).unwrap();
                    (target, connection)
                },
                |(target, mut connection)| {
                    raw_insert(&mut connection, &events).unwrap();
                    target
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
    criterion.final_summary();

    // The ratio the issue asks for, from the same process and inputs.
    let store_median = median((0..5).map(|_| store_commit(&runtime, &events)).collect());
    let raw_median = median((0..5).map(|_| raw(&events)).collect());
    let rate = |elapsed: Duration| EVENTS as f64 / elapsed.as_secs_f64();
    println!(
        "ingest ratio: store commit_batch {:.0} events/s vs raw insert {:.0} events/s = {:.1} % (target >= 70 %)",
        rate(store_median),
        rate(raw_median),
        rate(store_median) / rate(raw_median) * 100.0
    );
}
