//! Micro-benchmarks of the per-event hot paths: parse + validate, rollup
//! accumulation of a 10 000-event batch, sketch merge and bucket maths.
//!
//! Inputs come from the load generator (`analytics::loadgen::generator`),
//! so they have the shape and mix of real B25 traffic. Run with
//! `cargo bench --bench hot_paths`.

use std::hint::black_box;

use analytics::loadgen::baseline::realistic_events;
use analytics::loadgen::generator::{EventGenerator, GeneratorSettings};
use analytics::model::EventLimits;
use analytics::model::event::{now_ms, parse_event};
use analytics::model::wire::WireEvent;
use analytics::rollup::{Accumulator, Interval, TimeRange, decompose};
use analytics::store::rollups_for;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;

fn limits() -> EventLimits {
    EventLimits {
        max_properties: 50,
        max_property_size: 1024,
        max_future_skew_ms: 300_000,
        max_age_ms: 90 * 86_400_000,
    }
}

/// 1 000 realistic events as the JSON bytes a client sends.
fn wire_events() -> Vec<Vec<u8>> {
    let mut generator = EventGenerator::new(GeneratorSettings::default());
    let now = now_ms();
    (0..1000)
        .map(|index| serde_json::to_vec(&generator.next_event(now - 1000 + index)).unwrap())
        .collect()
}

fn parse_and_validate(criterion: &mut Criterion) {
    let wire = wire_events();
    let limits = limits();
    let now = now_ms();
    let mut group = criterion.benchmark_group("parse_validate");
    group.throughput(Throughput::Elements(wire.len() as u64));
    // The service's path: the known fields read straight into a WireEvent.
    group.bench_function("1000_events_from_bytes", |bencher| {
        bencher.iter(|| {
            for bytes in &wire {
                let event: WireEvent = serde_json::from_slice(bytes).unwrap();
                black_box(parse_event(event, &limits, now, Uuid::now_v7).unwrap());
            }
        })
    });
    // The same through a whole serde_json::Value first (the path before
    // session 9), for the ratio.
    group.bench_function("1000_events_via_value", |bencher| {
        bencher.iter(|| {
            for bytes in &wire {
                let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                black_box(parse_event(value, &limits, now, Uuid::now_v7).unwrap());
            }
        })
    });
    group.finish();
}

fn rollup_accumulation(criterion: &mut Criterion) {
    let events = realistic_events(10_000, 42);
    let mut group = criterion.benchmark_group("rollups_for");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("10000_events_7_intervals", |bencher| {
        bencher.iter(|| black_box(rollups_for(events.iter(), &Interval::ALL)))
    });
    group.finish();
}

fn sketch_merge(criterion: &mut Criterion) {
    let events = realistic_events(4_000, 7);
    let mut left = Accumulator::new_with_values();
    let mut right = Accumulator::new_with_values();
    for (index, latency) in events
        .iter()
        .filter_map(|event| event.number("latency_ms"))
        .enumerate()
    {
        if index % 2 == 0 {
            left.record_value(latency);
        } else {
            right.record_value(latency);
        }
    }
    criterion.bench_function("accumulator_merge", |bencher| {
        bencher.iter_batched(
            || left.clone(),
            |mut merged| {
                merged.merge(&right);
                merged
            },
            BatchSize::SmallInput,
        )
    });
    criterion.bench_function("accumulator_encode_decode", |bencher| {
        bencher.iter(|| {
            let bytes = left.sketch_bytes();
            black_box(
                Accumulator::from_parts(
                    left.count(),
                    left.sum(),
                    left.min(),
                    left.max(),
                    bytes.as_deref(),
                )
                .unwrap(),
            )
        })
    });
}

fn bucket_maths(criterion: &mut Criterion) {
    // Ragged ranges of 1 minute to 30 days, none on a bucket edge.
    let now = now_ms();
    let ranges: Vec<TimeRange> = (0..256i64)
        .map(|index| {
            let start = now - 40 * 86_400_000 + index * 7_777_777 + 1_234;
            let length = 60_000 + index * index * 39_000 + 17;
            TimeRange {
                start_ms: start,
                end_ms: start + length,
            }
        })
        .collect();
    let mut group = criterion.benchmark_group("decompose");
    group.throughput(Throughput::Elements(ranges.len() as u64));
    group.bench_function("256_ragged_ranges_7_intervals", |bencher| {
        bencher.iter(|| {
            for range in &ranges {
                black_box(decompose(*range, &Interval::ALL));
            }
        })
    });
    group.bench_function("256_bucket_starts", |bencher| {
        bencher.iter(|| {
            for range in &ranges {
                for interval in Interval::ALL {
                    black_box(interval.bucket_start(range.start_ms));
                }
            }
        })
    });
    group.finish();
}

criterion_group!(
    hot_paths,
    parse_and_validate,
    rollup_accumulation,
    sketch_merge,
    bucket_maths
);
criterion_main!(hot_paths);
