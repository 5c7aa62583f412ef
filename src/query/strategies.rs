//! Strategy performance, from the closed positions (`position.closed` with
//! `strategy_id` and `pnl`) and the strategies' start and stop events.
//!
//! Everything here is computed from rollups (exact for any range, like every
//! other query): per strategy and bucket the PnL of all closed positions,
//! of the winners (`pnl > 0`) and of the losers (`pnl < 0`), as count, sum,
//! min and max. From those:
//! - trades, winners, losers, total PnL, gross profit and gross loss, win
//!   rate, profit factor (gross profit ÷ gross loss), average and largest
//!   win and loss: exact over the range;
//! - max drawdown: the largest fall of the cumulative PnL from its running
//!   peak (starting at 0), measured on the bucket closes of the requested
//!   interval (a dip and recovery inside one bucket is not seen; pick a
//!   finer interval to see more);
//! - Sharpe ratio: mean ÷ sample standard deviation of the PnL per bucket,
//!   over every bucket of the range (empty ones count as 0), annualised by
//!   √(buckets per year) with 365.25-day years (crypto trades every day);
//!   no risk-free rate is subtracted. `null` with fewer than two buckets or
//!   no variation.
//! - running: the strategy's latest `strategy.started` is later than its
//!   latest `strategy.stopped`, looking back over `lifecycle` (the raw-event
//!   retention).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Grouped, MetricFilter, QueryEngine};
use crate::model::event::format_timestamp;
use crate::model::metric::{
    STRATEGY_LOSSES, STRATEGY_PNL, STRATEGY_STARTED_AT, STRATEGY_STOPPED_AT, STRATEGY_WINS,
};
use crate::rollup::{Accumulator, Interval, TimeRange};
use crate::store::StoreError;
use crate::trading::projection::combine_options;

/// Most buckets one answer may hold.
pub const MAX_BUCKETS: i64 = 10_000;

/// Milliseconds in a 365.25-day year.
const YEAR_MS: f64 = 365.25 * 86_400_000.0;

/// One strategy over a range.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StrategySummary {
    pub strategy_id: String,
    pub trades: u64,
    pub winners: u64,
    pub losers: u64,
    pub total_pnl: f64,
    pub gross_profit: f64,
    /// Sum of the losses, as a positive number.
    pub gross_loss: f64,
    pub win_rate: Option<f64>,
    pub profit_factor: Option<f64>,
    pub average_win: Option<f64>,
    /// Negative, like the losses it averages.
    pub average_loss: Option<f64>,
    pub largest_win: Option<f64>,
    pub largest_loss: Option<f64>,
    /// Positive amount (0 when the cumulative PnL never fell).
    pub max_drawdown: f64,
    pub sharpe: Option<f64>,
    pub running: bool,
    pub last_started_at: Option<String>,
    pub last_stopped_at: Option<String>,
}

/// One bucket of a strategy's series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StrategyBucket {
    pub timestamp: String,
    pub trades: u64,
    pub winners: u64,
    pub losers: u64,
    pub pnl: f64,
    pub cumulative_pnl: f64,
}

/// A strategy's summary and its series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StrategyPerformance {
    #[serde(flatten)]
    pub summary: StrategySummary,
    pub series: Vec<StrategyBucket>,
}

/// Why strategies cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    #[error(
        "the range holds {buckets} buckets of {interval}, more than {MAX_BUCKETS}; use a coarser interval or a shorter range"
    )]
    TooManyBuckets {
        buckets: i64,
        interval: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The performance of every strategy with closed positions in `range` or a
/// start/stop within `lifecycle` (or only of `only`), by strategy id.
pub async fn strategy_performance(
    engine: &QueryEngine,
    range: TimeRange,
    interval: Interval,
    lifecycle: TimeRange,
    only: Option<&str>,
) -> Result<Vec<StrategyPerformance>, StrategyError> {
    let first_bucket = interval.bucket_start(range.start_ms);
    let buckets = (range.end_ms - first_bucket + interval.millis() - 1) / interval.millis();
    if buckets > MAX_BUCKETS {
        return Err(StrategyError::TooManyBuckets {
            buckets,
            interval: interval.as_str(),
        });
    }
    let filters = [STRATEGY_PNL, STRATEGY_WINS, STRATEGY_LOSSES]
        .map(|metric| MetricFilter::new(metric, only));
    let mut grouped = engine
        .aggregate(&filters, range, Some(interval))
        .await?
        .into_iter();
    let (pnl, wins, losses) = (
        grouped.next().unwrap_or_default(),
        grouped.next().unwrap_or_default(),
        grouped.next().unwrap_or_default(),
    );
    let lifecycle_filters =
        [STRATEGY_STARTED_AT, STRATEGY_STOPPED_AT].map(|metric| MetricFilter::new(metric, only));
    let mut lifecycles = engine
        .aggregate(&lifecycle_filters, lifecycle, None)
        .await?
        .into_iter();
    let started = latest_by_strategy(lifecycles.next().unwrap_or_default());
    let stopped = latest_by_strategy(lifecycles.next().unwrap_or_default());

    let by_strategy_pnl = by_strategy(pnl);
    let by_strategy_wins = by_strategy(wins);
    let by_strategy_losses = by_strategy(losses);
    let strategies: BTreeSet<&String> = by_strategy_pnl
        .keys()
        .chain(started.keys())
        .chain(stopped.keys())
        .collect();
    let empty = BTreeMap::new();
    let mut answers = Vec::new();
    for strategy in strategies {
        let series_pnl = by_strategy_pnl.get(strategy).unwrap_or(&empty);
        let series_wins = by_strategy_wins.get(strategy).unwrap_or(&empty);
        let series_losses = by_strategy_losses.get(strategy).unwrap_or(&empty);
        // The summary needs counts, sums and extremes only: the buckets'
        // sketches are left unmerged.
        let (mut trades, mut winners, mut losers) = (0_u64, 0_u64, 0_u64);
        let (mut total_pnl, mut gross_profit, mut lost_sum) = (0.0_f64, 0.0_f64, 0.0_f64);
        let (mut largest_win, mut largest_loss) = (None::<f64>, None::<f64>);
        let mut series = Vec::with_capacity(buckets as usize);
        let mut cumulative = 0.0;
        let (mut peak, mut drawdown) = (0.0_f64, 0.0_f64);
        let mut per_bucket = Vec::with_capacity(buckets as usize);
        for index in 0..buckets {
            let start = first_bucket + index * interval.millis();
            let bucket_pnl = series_pnl.get(&start);
            let bucket_wins = series_wins.get(&start);
            let bucket_losses = series_losses.get(&start);
            if let Some(part) = bucket_pnl {
                trades += part.value_count();
                total_pnl += part.sum().unwrap_or(0.0);
            }
            if let Some(part) = bucket_wins {
                winners += part.value_count();
                gross_profit += part.sum().unwrap_or(0.0);
                largest_win = combine_options(largest_win, part.max(), f64::max);
            }
            if let Some(part) = bucket_losses {
                losers += part.value_count();
                lost_sum += part.sum().unwrap_or(0.0);
                largest_loss = combine_options(largest_loss, part.min(), f64::min);
            }
            let pnl = bucket_pnl.and_then(Accumulator::sum).unwrap_or(0.0);
            cumulative += pnl;
            peak = peak.max(cumulative);
            drawdown = drawdown.max(peak - cumulative);
            per_bucket.push(pnl);
            series.push(StrategyBucket {
                timestamp: format_timestamp(start),
                trades: bucket_pnl.map_or(0, Accumulator::value_count),
                winners: bucket_wins.map_or(0, Accumulator::value_count),
                losers: bucket_losses.map_or(0, Accumulator::value_count),
                pnl,
                cumulative_pnl: cumulative,
            });
        }
        let gross_loss = -lost_sum;
        let last_started = started.get(strategy).copied();
        let last_stopped = stopped.get(strategy).copied();
        let summary = StrategySummary {
            strategy_id: strategy.clone(),
            trades,
            winners,
            losers,
            total_pnl,
            gross_profit,
            gross_loss,
            win_rate: (trades > 0).then(|| winners as f64 / trades as f64),
            profit_factor: (gross_loss > 0.0).then(|| gross_profit / gross_loss),
            average_win: (winners > 0).then(|| gross_profit / winners as f64),
            average_loss: (losers > 0).then(|| -gross_loss / losers as f64),
            largest_win,
            largest_loss,
            max_drawdown: drawdown,
            sharpe: sharpe(&per_bucket, interval),
            running: match (last_started, last_stopped) {
                (Some(started), Some(stopped)) => started > stopped,
                (Some(_), None) => true,
                _ => false,
            },
            last_started_at: last_started.map(format_timestamp),
            last_stopped_at: last_stopped.map(format_timestamp),
        };
        answers.push(StrategyPerformance { summary, series });
    }
    Ok(answers)
}

/// Accumulators by strategy, then bucket start.
fn by_strategy(grouped: Grouped) -> BTreeMap<String, BTreeMap<i64, Accumulator>> {
    let mut out: BTreeMap<String, BTreeMap<i64, Accumulator>> = BTreeMap::new();
    for (bucket, accumulators) in grouped {
        for (strategy, accumulator) in accumulators {
            out.entry(strategy).or_default().insert(bucket, accumulator);
        }
    }
    out
}

/// The latest recorded time (epoch ms) per strategy.
fn latest_by_strategy(grouped: Grouped) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for accumulators in grouped.into_values() {
        for (strategy, accumulator) in accumulators {
            if let Some(latest) = accumulator.max() {
                let latest = latest as i64;
                let entry = out.entry(strategy).or_insert(latest);
                *entry = (*entry).max(latest);
            }
        }
    }
    out
}

/// Annualised Sharpe ratio of the per-bucket PnL (see the module docs).
pub fn sharpe(per_bucket: &[f64], interval: Interval) -> Option<f64> {
    if per_bucket.len() < 2 {
        return None;
    }
    let n = per_bucket.len() as f64;
    let mean = per_bucket.iter().sum::<f64>() / n;
    let variance = per_bucket
        .iter()
        .map(|pnl| (pnl - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    let deviation = variance.sqrt();
    // NaN (from non-finite sums) fails this too.
    if deviation.is_nan() || deviation <= 0.0 {
        return None;
    }
    let buckets_per_year = YEAR_MS / interval.millis() as f64;
    Some(mean / deviation * buckets_per_year.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharpe_is_annualised_and_undefined_without_variation() {
        assert_eq!(sharpe(&[1.0], Interval::D1), None);
        assert_eq!(sharpe(&[2.0, 2.0, 2.0], Interval::D1), None);
        // mean 1, sample deviation 1 → √365.25 per year of daily buckets.
        let value = sharpe(&[0.0, 1.0, 2.0], Interval::D1).unwrap();
        assert!((value - 365.25_f64.sqrt()).abs() < 1e-9, "{value}");
    }
}
