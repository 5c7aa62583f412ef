//! The figures of `/api/v1/trading/orders`, `/execution` and
//! `/markets/{symbol}/bars`, computed from the rows the stores keep (see
//! [`super::projection`]).
//!
//! Definitions (README "Trading analytics" states the same):
//! - Order figures are by *placement*: an order belongs to the bucket of its
//!   `order.placed` time, and its outcome is what its events say now. Fully
//!   filled: filled quantity ≥ ordered quantity (less 1e-9 relative).
//!   Partially filled: some but not all filled (whether canceled or still
//!   open). Time to first / full fill: first fill time / last fill time of a
//!   fully filled order, minus the placement time.
//! - Execution figures are by *fill time*. Slippage of a fill, in basis
//!   points: `(price − mid) / mid × 10⁴` for a buy, `(mid − price) / mid ×
//!   10⁴` for a sell, so positive means worse than mid. The mid is that of
//!   the latest `market.data.update` of the symbol at or before the fill
//!   (ties by event id); fills without a side or a mid have no slippage.
//! - Percentiles are exact (nearest rank: the value at rank ⌈p·n⌉ of the
//!   sorted values).
//! - Bars come from one-minute bars: market data where the minute has any,
//!   else the fills of that minute. Volatility of a bar is the sample
//!   standard deviation of the log returns between the closes of its
//!   consecutive one-minute bars (null with fewer than two returns).

use std::collections::BTreeMap;

use serde::Serialize;

use super::FillView;
use super::projection::{BarDelta, OrderDelta, SOURCE_FILL, SOURCE_MARKET};
use crate::rollup::Interval;

/// Which orders or fills a report covers; `None` means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub symbol: Option<String>,
    pub strategy_id: Option<String>,
    /// Lower case.
    pub side: Option<String>,
}

impl Filters {
    fn matches(&self, symbol: Option<&str>, strategy: Option<&str>, side: Option<&str>) -> bool {
        fn one(wanted: &Option<String>, actual: Option<&str>) -> bool {
            wanted
                .as_deref()
                .is_none_or(|wanted| actual == Some(wanted))
        }
        one(&self.symbol, symbol) && one(&self.strategy_id, strategy) && one(&self.side, side)
    }
}

/// Count, mean and nearest-rank percentiles of some values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Distribution {
    pub fn of(mut values: Vec<f64>) -> Distribution {
        values.retain(|value| value.is_finite());
        if values.is_empty() {
            return Distribution::default();
        }
        values.sort_by(f64::total_cmp);
        let count = values.len();
        Distribution {
            count: count as u64,
            mean: Some(values.iter().sum::<f64>() / count as f64),
            p50: Some(nearest_rank(&values, 0.50)),
            p95: Some(nearest_rank(&values, 0.95)),
            p99: Some(nearest_rank(&values, 0.99)),
        }
    }
}

/// The value at rank ⌈q·n⌉ (1-based) of `sorted`, which is not empty.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

// ---------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------

/// Whether an order's filled quantity covers its ordered quantity.
pub fn is_fully_filled(order: &OrderDelta) -> bool {
    match order.quantity {
        Some(quantity) if quantity > 0.0 => order.filled_quantity >= quantity * (1.0 - 1e-9),
        _ => false,
    }
}

/// Order figures of a set of orders (by placement).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OrderFigures {
    pub orders_placed: u64,
    pub orders_filled: u64,
    pub orders_partially_filled: u64,
    pub orders_canceled: u64,
    pub orders_rejected: u64,
    /// Placed, not fully filled, not canceled, not rejected.
    pub orders_open: u64,
    /// Fully filled ÷ placed.
    pub fill_rate: Option<f64>,
    /// Filled quantity (capped at each order's quantity) ÷ ordered quantity.
    pub fill_rate_by_quantity: Option<f64>,
    pub cancel_rate: Option<f64>,
    pub reject_rate: Option<f64>,
    pub quantity_ordered: f64,
    pub quantity_filled: f64,
    pub filled_notional: f64,
    /// Filled notional ÷ filled quantity.
    pub vwap: Option<f64>,
    pub fills: u64,
    pub maker_fills: u64,
    /// Maker fills ÷ fills.
    pub maker_ratio: Option<f64>,
    pub commission: f64,
    pub time_to_first_fill_ms: Distribution,
    pub time_to_full_fill_ms: Distribution,
    pub placement_latency_ms: Distribution,
}

/// Accumulates [`OrderFigures`].
#[derive(Default)]
struct OrderTally {
    figures: OrderFigures,
    capped_filled: f64,
    first_fill: Vec<f64>,
    full_fill: Vec<f64>,
    latency: Vec<f64>,
}

impl OrderTally {
    fn add(&mut self, order: &OrderDelta) {
        let Some(placed_at) = order.placed_at else {
            return;
        };
        let figures = &mut self.figures;
        let full = is_fully_filled(order);
        figures.orders_placed += 1;
        figures.orders_filled += u64::from(full);
        figures.orders_partially_filled += u64::from(!full && order.filled_quantity > 0.0);
        figures.orders_canceled += u64::from(order.canceled_at.is_some());
        figures.orders_rejected += u64::from(order.rejected_at.is_some());
        figures.orders_open +=
            u64::from(!full && order.canceled_at.is_none() && order.rejected_at.is_none());
        let quantity = order.quantity.unwrap_or(0.0).max(0.0);
        figures.quantity_ordered += quantity;
        figures.quantity_filled += order.filled_quantity;
        self.capped_filled += order.filled_quantity.min(quantity);
        figures.filled_notional += order.filled_notional;
        figures.fills += order.fills.max(0) as u64;
        figures.maker_fills += order.maker_fills.max(0) as u64;
        figures.commission += order.commission;
        if let Some(first) = order.first_fill_at {
            self.first_fill.push((first - placed_at) as f64);
        }
        if full && let Some(last) = order.last_fill_at {
            self.full_fill.push((last - placed_at) as f64);
        }
        if let Some(latency) = order.latency_ms {
            self.latency.push(latency);
        }
    }

    fn finish(self) -> OrderFigures {
        let mut figures = self.figures;
        let placed = figures.orders_placed as f64;
        figures.fill_rate = ratio(figures.orders_filled as f64, placed);
        figures.cancel_rate = ratio(figures.orders_canceled as f64, placed);
        figures.reject_rate = ratio(figures.orders_rejected as f64, placed);
        figures.fill_rate_by_quantity = ratio(self.capped_filled, figures.quantity_ordered);
        figures.vwap = ratio(figures.filled_notional, figures.quantity_filled);
        figures.maker_ratio = ratio(figures.maker_fills as f64, figures.fills as f64);
        figures.time_to_first_fill_ms = Distribution::of(self.first_fill);
        figures.time_to_full_fill_ms = Distribution::of(self.full_fill);
        figures.placement_latency_ms = Distribution::of(self.latency);
        figures
    }
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket<T> {
    /// Bucket start, RFC 3339.
    pub timestamp: String,
    #[serde(flatten)]
    pub figures: T,
}

/// A group of a breakdown (a symbol, a strategy, a side, or a symbol and a
/// side).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group<T> {
    pub key: String,
    #[serde(flatten)]
    pub figures: T,
}

/// A report: the figures of everything selected, per bucket, and per
/// symbol, strategy, side, and symbol and side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report<F> {
    pub summary: F,
    pub series: Vec<Bucket<F>>,
    pub by_symbol: Vec<Group<F>>,
    pub by_strategy: Vec<Group<F>>,
    pub by_side: Vec<Group<F>>,
    /// `<symbol>/<side>`: e.g. filled notional and VWAP per symbol and side.
    pub by_symbol_side: Vec<Group<F>>,
}

/// `/api/v1/trading/orders`.
pub type OrdersReport = Report<OrderFigures>;

/// Where an item belongs: its time (`None`: not reported) and its symbol,
/// strategy and side, borrowed from it.
type Keys<'a> = (
    Option<i64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

/// Whether a report carries the per-symbol, -strategy and -side groups
/// (the `/api/v1/trading/*` reports) or only its summary and series (metric
/// names, the dashboard), which saves a tally per group per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups {
    With,
    Without,
}

/// The report of the `items` that `filters` select, by `interval`, with
/// `tally` folding one item into an accumulator. Group keys borrow from the
/// items (no allocation per item).
fn report<'a, I: 'a, T: Default, F>(
    items: impl Iterator<Item = &'a I>,
    filters: &Filters,
    interval: Interval,
    groups: Groups,
    keys: impl Fn(&'a I) -> Keys<'a>,
    tally: impl Fn(&mut T, &I),
    finish: impl Fn(T) -> F,
) -> Report<F> {
    let mut summary = T::default();
    let mut series: BTreeMap<i64, T> = BTreeMap::new();
    let mut by_symbol: BTreeMap<&str, T> = BTreeMap::new();
    let mut by_strategy: BTreeMap<&str, T> = BTreeMap::new();
    let mut by_side: BTreeMap<&str, T> = BTreeMap::new();
    let mut by_symbol_side: BTreeMap<(&str, &str), T> = BTreeMap::new();
    for item in items {
        let (Some(at), symbol, strategy, side) = keys(item) else {
            continue;
        };
        if !filters.matches(symbol, strategy, side) {
            continue;
        }
        tally(&mut summary, item);
        tally(series.entry(interval.bucket_start(at)).or_default(), item);
        if groups == Groups::Without {
            continue;
        }
        if let Some(symbol) = symbol {
            tally(by_symbol.entry(symbol).or_default(), item);
            if let Some(side) = side {
                tally(by_symbol_side.entry((symbol, side)).or_default(), item);
            }
        }
        if let Some(strategy) = strategy {
            tally(by_strategy.entry(strategy).or_default(), item);
        }
        if let Some(side) = side {
            tally(by_side.entry(side).or_default(), item);
        }
    }
    let grouped = |map: BTreeMap<&str, T>| -> Vec<Group<F>> {
        map.into_iter()
            .map(|(key, tally)| Group {
                key: key.to_owned(),
                figures: finish(tally),
            })
            .collect()
    };
    Report {
        series: series
            .into_iter()
            .map(|(start, tally)| Bucket {
                timestamp: crate::model::event::format_timestamp(start),
                figures: finish(tally),
            })
            .collect(),
        summary: finish(summary),
        by_symbol: grouped(by_symbol),
        by_strategy: grouped(by_strategy),
        by_side: grouped(by_side),
        by_symbol_side: by_symbol_side
            .into_iter()
            .map(|((symbol, side), tally)| Group {
                key: format!("{symbol}/{side}"),
                figures: finish(tally),
            })
            .collect(),
    }
}

/// The orders report of `orders` (those placed in the range), filtered.
pub fn orders_report(
    orders: &[OrderDelta],
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> OrdersReport {
    report(
        orders.iter(),
        filters,
        interval,
        groups,
        |order| {
            (
                order.placed_at,
                order.symbol.as_deref(),
                order.strategy_id.as_deref(),
                order.side.as_deref(),
            )
        },
        OrderTally::add,
        OrderTally::finish,
    )
}

// ---------------------------------------------------------------------------
// Execution
// ---------------------------------------------------------------------------

/// Execution figures of a set of fills (by fill time).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExecutionFigures {
    pub fills: u64,
    pub quantity: f64,
    pub notional: f64,
    pub vwap: Option<f64>,
    pub maker_fills: u64,
    pub maker_ratio: Option<f64>,
    pub commission: f64,
    /// Slippage against the mid, basis points, over the fills with a side
    /// and a mid.
    pub slippage_bps: Distribution,
    /// Σ slippage × notional ÷ Σ notional over those fills.
    pub slippage_bps_notional_weighted: Option<f64>,
}

/// Slippage of a fill in basis points (positive: worse than mid).
pub fn slippage_bps(view: &FillView) -> Option<f64> {
    let mid = view.mid.filter(|mid| *mid > 0.0)?;
    let sign = match view.fill.side.as_deref()? {
        "buy" => 1.0,
        "sell" => -1.0,
        _ => return None,
    };
    Some(sign * (view.fill.price - mid) / mid * 10_000.0)
}

#[derive(Default)]
struct ExecutionTally {
    figures: ExecutionFigures,
    slippage: Vec<f64>,
    weighted: f64,
    weight: f64,
}

impl ExecutionTally {
    fn add(&mut self, view: &FillView) {
        let fill = &view.fill;
        let notional = fill.price * fill.quantity;
        let figures = &mut self.figures;
        figures.fills += 1;
        figures.quantity += fill.quantity;
        figures.notional += notional;
        figures.maker_fills += u64::from(fill.is_maker == Some(true));
        figures.commission += fill.commission.unwrap_or(0.0);
        if let Some(slippage) = slippage_bps(view) {
            self.slippage.push(slippage);
            self.weighted += slippage * notional;
            self.weight += notional;
        }
    }

    fn finish(self) -> ExecutionFigures {
        let mut figures = self.figures;
        figures.vwap = ratio(figures.notional, figures.quantity);
        figures.maker_ratio = ratio(figures.maker_fills as f64, figures.fills as f64);
        figures.slippage_bps = Distribution::of(self.slippage);
        figures.slippage_bps_notional_weighted = ratio(self.weighted, self.weight);
        figures
    }
}

/// `/api/v1/trading/execution`.
pub type ExecutionReport = Report<ExecutionFigures>;

/// The execution report of `fills` (those stamped in the range), filtered.
pub fn execution_report(
    fills: &[FillView],
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> ExecutionReport {
    report(
        fills.iter(),
        filters,
        interval,
        groups,
        |view| {
            (
                Some(view.fill.timestamp_ms),
                view.fill.symbol.as_deref(),
                view.fill.strategy_id.as_deref(),
                view.fill.side.as_deref(),
            )
        },
        ExecutionTally::add,
        ExecutionTally::finish,
    )
}

// ---------------------------------------------------------------------------
// Bars
// ---------------------------------------------------------------------------

/// One OHLCV bar.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bar {
    /// Bar start, RFC 3339.
    pub timestamp: String,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    /// Market data updates behind the bar (fills, for minutes without any).
    pub updates: i64,
    /// Fills of the symbol in the bar.
    pub trades: i64,
    /// Mean ask − bid over the updates that had both.
    pub average_spread: Option<f64>,
    /// Sample standard deviation of the one-minute close-to-close log returns
    /// inside the bar.
    pub volatility: Option<f64>,
    /// `market`, `fill`, or `mixed` (some minutes from each).
    pub source: &'static str,
}

/// The bars of one symbol by `interval` from its one-minute bars (any order,
/// both sources).
pub fn bars(minutes: &[BarDelta], interval: Interval) -> Vec<Bar> {
    // Per minute: the market bar if there is one, else the fill bar; and
    // the fills of the minute.
    let mut chosen: BTreeMap<i64, (&BarDelta, i64)> = BTreeMap::new();
    for minute in minutes {
        let trades = if minute.source == SOURCE_FILL {
            minute.updates
        } else {
            0
        };
        match chosen.get_mut(&minute.minute) {
            None => {
                chosen.insert(minute.minute, (minute, trades));
            }
            Some((bar, fills)) => {
                *fills += trades;
                if minute.source == SOURCE_MARKET {
                    *bar = minute;
                }
            }
        }
    }
    let mut grouped: BTreeMap<i64, Vec<(&BarDelta, i64)>> = BTreeMap::new();
    for (start, entry) in chosen {
        grouped
            .entry(interval.bucket_start(start))
            .or_default()
            .push(entry);
    }
    grouped
        .into_iter()
        .map(|(start, minutes)| {
            let first = minutes[0].0;
            let last = minutes[minutes.len() - 1].0;
            let mut returns = Vec::new();
            for pair in minutes.windows(2) {
                let (before, after) = (pair[0].0.close, pair[1].0.close);
                if before > 0.0 && after > 0.0 {
                    returns.push((after / before).ln());
                }
            }
            let spread_count: i64 = minutes.iter().map(|(bar, _)| bar.spread_count).sum();
            let spread_sum: f64 = minutes.iter().map(|(bar, _)| bar.spread_sum).sum();
            let sources = minutes.iter().map(|(bar, _)| bar.source);
            let source = if sources.clone().all(|source| source == SOURCE_MARKET) {
                "market"
            } else if sources.clone().all(|source| source == SOURCE_FILL) {
                "fill"
            } else {
                "mixed"
            };
            Bar {
                timestamp: crate::model::event::format_timestamp(start),
                open: first.open,
                high: minutes
                    .iter()
                    .map(|(bar, _)| bar.high)
                    .fold(f64::MIN, f64::max),
                low: minutes
                    .iter()
                    .map(|(bar, _)| bar.low)
                    .fold(f64::MAX, f64::min),
                close: last.close,
                volume: minutes.iter().map(|(bar, _)| bar.volume).sum(),
                updates: minutes.iter().map(|(bar, _)| bar.updates).sum(),
                trades: minutes.iter().map(|(_, trades)| trades).sum(),
                average_spread: ratio(spread_sum, spread_count as f64),
                volatility: sample_std(&returns),
                source,
            }
        })
        .collect()
}

/// Sample standard deviation; `None` for fewer than two values.
pub fn sample_std(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let squares: f64 = values.iter().map(|value| (value - mean).powi(2)).sum();
    Some((squares / (n - 1.0)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let distribution = Distribution::of(values);
        assert_eq!(distribution.p50, Some(50.0));
        assert_eq!(distribution.p95, Some(95.0));
        assert_eq!(distribution.p99, Some(99.0));
        assert_eq!(Distribution::of(vec![7.0]).p99, Some(7.0));
        assert_eq!(Distribution::of(vec![]).count, 0);
    }

    #[test]
    fn sample_std_of_known_values() {
        assert_eq!(sample_std(&[1.0]), None);
        let std = sample_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert!((std - 2.138_089_935).abs() < 1e-6);
    }
}
