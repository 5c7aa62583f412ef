//! Retention: what `analytics.retention` expires, and the schedule that
//! removes it.
//!
//! Raw events (and the per-minute distinct sets derived from them) live for
//! `raw_events`; rollups of the minute intervals (1m 5m 15m 30m) for
//! `minute_aggregates`, of the hour intervals (1h 4h) for
//! `hour_aggregates`, of 1d for `daily_aggregates`. The store removes in
//! bounded steps, so a run never blocks ingest for long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::rollup::Interval;
use crate::store::{RetentionCutoffs, RetentionReport, Store, StoreError};

/// How often the service runs retention.
pub const RUN_EVERY: Duration = Duration::from_secs(3600);

/// The cutoffs of `config` at `now_ms` for the stored `intervals`.
pub fn cutoffs(config: &RetentionConfig, intervals: &[Interval], now_ms: i64) -> RetentionCutoffs {
    let before = |keep: Duration| now_ms.saturating_sub(crate::duration_ms(keep));
    RetentionCutoffs {
        events_before_ms: before(config.raw_events),
        rollups_before_ms: intervals
            .iter()
            .map(|interval| {
                let keep = match interval {
                    Interval::M1 | Interval::M5 | Interval::M15 | Interval::M30 => {
                        config.minute_aggregates
                    }
                    Interval::H1 | Interval::H4 => config.hour_aggregates,
                    Interval::D1 => config.daily_aggregates,
                };
                // Only whole buckets go: a bucket is removed once all of it
                // lies before the cutoff.
                (*interval, interval.bucket_start(before(keep)))
            })
            .collect(),
    }
}

/// One retention run, logged.
pub async fn run_once(
    store: &dyn Store,
    config: &RetentionConfig,
    intervals: &[Interval],
    now_ms: i64,
) -> Result<RetentionReport, StoreError> {
    let cutoffs = cutoffs(config, intervals, now_ms);
    let report = store.delete_expired(&cutoffs).await?;
    tracing::info!(
        events_deleted = report.events_deleted,
        rollup_rows_deleted = report.rollup_rows_deleted,
        distinct_rows_deleted = report.distinct_rows_deleted,
        partitions_dropped = report.partitions_dropped,
        "retention run finished"
    );
    Ok(report)
}

/// Runs retention at start and then every [`RUN_EVERY`] until `shutdown`.
pub async fn run_on_schedule(
    store: Arc<dyn Store>,
    config: RetentionConfig,
    intervals: Vec<Interval>,
    shutdown: CancellationToken,
) {
    loop {
        let run = run_once(&*store, &config, &intervals, crate::model::event::now_ms());
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = run => if let Err(error) = result {
                tracing::error!(error = %error, "retention run failed; retrying at the next run");
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RUN_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_interval_gets_its_horizon_in_whole_buckets() {
        let config = RetentionConfig {
            raw_events: Duration::from_secs(2 * 86_400),
            minute_aggregates: Duration::from_secs(10 * 86_400),
            hour_aggregates: Duration::from_secs(20 * 86_400),
            daily_aggregates: Duration::from_secs(30 * 86_400),
        };
        let now = 100 * 86_400_000 + 12_345;
        let cutoffs = cutoffs(&config, &Interval::ALL, now);
        assert_eq!(cutoffs.events_before_ms, now - 2 * 86_400_000);
        let of = |wanted: Interval| {
            cutoffs
                .rollups_before_ms
                .iter()
                .find(|(interval, _)| *interval == wanted)
                .unwrap()
                .1
        };
        assert_eq!(
            of(Interval::M1),
            Interval::M1.bucket_start(now - 10 * 86_400_000)
        );
        assert_eq!(
            of(Interval::M30),
            Interval::M30.bucket_start(now - 10 * 86_400_000)
        );
        assert_eq!(
            of(Interval::H4),
            Interval::H4.bucket_start(now - 20 * 86_400_000)
        );
        assert_eq!(of(Interval::D1), 70 * 86_400_000);
    }
}
