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
//! - Percentiles come from a DDSketch of the values (1 % relative error,
//!   clamped to the exact minimum and maximum), as in `/api/v1/metrics`: the
//!   value at rank ⌊q·(n − 1)⌋ (0-based) of the sorted values. Counts, sums,
//!   means and rates are exact.
//! - Reports are merged from per-minute and per-hour summaries per group
//!   (symbol, strategy, side) and the raw rows of the minutes not summarised
//!   yet (see [`super::summary`]).
//! - Bars come from one-minute bars: market data where the minute has any,
//!   else the fills of that minute. Volatility of a bar is the sample
//!   standard deviation of the log returns between the closes of its
//!   consecutive one-minute bars (null with fewer than two returns).

use std::collections::BTreeMap;

use serde::Serialize;

use super::FillView;
use super::projection::{BarDelta, OrderDelta, SOURCE_FILL, SOURCE_MARKET};
use super::summary::{Decoder, Encoder};
use crate::rollup::{Accumulator, Interval};

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

/// Count, mean and percentiles of some values (see the module docs for the
/// percentile definition).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Distribution {
    /// The figures of a valued accumulator: exact count and mean, sketch
    /// percentiles clamped to the exact minimum and maximum.
    pub fn of(values: &Accumulator) -> Distribution {
        Distribution {
            count: values.value_count(),
            mean: values.mean(),
            p50: values.quantile(0.50),
            p95: values.quantile(0.95),
            p99: values.quantile(0.99),
        }
    }
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

/// The group of an order or a fill: the finest grain the summaries keep,
/// from which every filter and breakdown is a selection or a merge.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub symbol: Option<String>,
    pub strategy_id: Option<String>,
    /// Lower case.
    pub side: Option<String>,
}

/// A mergeable summary of orders or fills: what a one-minute or one-hour
/// summary holds per group, and what a report merges.
pub trait Tally: Default + Clone + Send + Sync + 'static {
    /// An order or a fill, as read from the trading tables.
    type Item: Send + Sync;
    /// The figures a report shows.
    type Figures: Serialize;
    /// When the item counts (placement or fill time); `None`: not reported.
    fn at(item: &Self::Item) -> Option<i64>;
    fn key(item: &Self::Item) -> GroupKey;
    fn add(&mut self, item: &Self::Item);
    /// As if `self` had also seen `other`'s items.
    fn merge(&mut self, other: &Self);
    fn finish(&self) -> Self::Figures;
    fn encode(&self, out: &mut Encoder);
    fn decode(input: &mut Decoder<'_>) -> Result<Self, String>;
}

/// The tallies of one stretch of time (a minute, an hour, or the raw items
/// of a part of a minute), per group.
pub type Slice<T> = BTreeMap<GroupKey, T>;

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

/// Accumulates [`OrderFigures`]: exact counts and sums, and a sketch per
/// distribution.
#[derive(Clone)]
pub struct OrderTally {
    placed: u64,
    filled: u64,
    partially_filled: u64,
    canceled: u64,
    rejected: u64,
    open: u64,
    quantity_ordered: f64,
    quantity_filled: f64,
    capped_filled: f64,
    filled_notional: f64,
    fills: u64,
    maker_fills: u64,
    commission: f64,
    first_fill: Accumulator,
    full_fill: Accumulator,
    latency: Accumulator,
}

impl Default for OrderTally {
    fn default() -> Self {
        OrderTally {
            placed: 0,
            filled: 0,
            partially_filled: 0,
            canceled: 0,
            rejected: 0,
            open: 0,
            quantity_ordered: 0.0,
            quantity_filled: 0.0,
            capped_filled: 0.0,
            filled_notional: 0.0,
            fills: 0,
            maker_fills: 0,
            commission: 0.0,
            first_fill: Accumulator::new_with_values(),
            full_fill: Accumulator::new_with_values(),
            latency: Accumulator::new_with_values(),
        }
    }
}

impl Tally for OrderTally {
    type Item = OrderDelta;
    type Figures = OrderFigures;

    fn at(order: &OrderDelta) -> Option<i64> {
        order.placed_at
    }

    fn key(order: &OrderDelta) -> GroupKey {
        GroupKey {
            symbol: order.symbol.clone(),
            strategy_id: order.strategy_id.clone(),
            side: order.side.clone(),
        }
    }

    fn add(&mut self, order: &OrderDelta) {
        let Some(placed_at) = order.placed_at else {
            return;
        };
        let full = is_fully_filled(order);
        self.placed += 1;
        self.filled += u64::from(full);
        self.partially_filled += u64::from(!full && order.filled_quantity > 0.0);
        self.canceled += u64::from(order.canceled_at.is_some());
        self.rejected += u64::from(order.rejected_at.is_some());
        self.open += u64::from(!full && order.canceled_at.is_none() && order.rejected_at.is_none());
        let quantity = order.quantity.unwrap_or(0.0).max(0.0);
        self.quantity_ordered += quantity;
        self.quantity_filled += order.filled_quantity;
        self.capped_filled += order.filled_quantity.min(quantity);
        self.filled_notional += order.filled_notional;
        self.fills += order.fills.max(0) as u64;
        self.maker_fills += order.maker_fills.max(0) as u64;
        self.commission += order.commission;
        if let Some(first) = order.first_fill_at {
            self.first_fill.record_value((first - placed_at) as f64);
        }
        if full && let Some(last) = order.last_fill_at {
            self.full_fill.record_value((last - placed_at) as f64);
        }
        if let Some(latency) = order.latency_ms {
            self.latency.record_value(latency);
        }
    }

    fn merge(&mut self, other: &Self) {
        self.placed += other.placed;
        self.filled += other.filled;
        self.partially_filled += other.partially_filled;
        self.canceled += other.canceled;
        self.rejected += other.rejected;
        self.open += other.open;
        self.quantity_ordered += other.quantity_ordered;
        self.quantity_filled += other.quantity_filled;
        self.capped_filled += other.capped_filled;
        self.filled_notional += other.filled_notional;
        self.fills += other.fills;
        self.maker_fills += other.maker_fills;
        self.commission += other.commission;
        self.first_fill.merge(&other.first_fill);
        self.full_fill.merge(&other.full_fill);
        self.latency.merge(&other.latency);
    }

    fn finish(&self) -> OrderFigures {
        let placed = self.placed as f64;
        OrderFigures {
            orders_placed: self.placed,
            orders_filled: self.filled,
            orders_partially_filled: self.partially_filled,
            orders_canceled: self.canceled,
            orders_rejected: self.rejected,
            orders_open: self.open,
            fill_rate: ratio(self.filled as f64, placed),
            fill_rate_by_quantity: ratio(self.capped_filled, self.quantity_ordered),
            cancel_rate: ratio(self.canceled as f64, placed),
            reject_rate: ratio(self.rejected as f64, placed),
            quantity_ordered: self.quantity_ordered,
            quantity_filled: self.quantity_filled,
            filled_notional: self.filled_notional,
            vwap: ratio(self.filled_notional, self.quantity_filled),
            fills: self.fills,
            maker_fills: self.maker_fills,
            maker_ratio: ratio(self.maker_fills as f64, self.fills as f64),
            commission: self.commission,
            time_to_first_fill_ms: Distribution::of(&self.first_fill),
            time_to_full_fill_ms: Distribution::of(&self.full_fill),
            placement_latency_ms: Distribution::of(&self.latency),
        }
    }

    fn encode(&self, out: &mut Encoder) {
        for count in [
            self.placed,
            self.filled,
            self.partially_filled,
            self.canceled,
            self.rejected,
            self.open,
            self.fills,
            self.maker_fills,
        ] {
            out.u64(count);
        }
        for sum in [
            self.quantity_ordered,
            self.quantity_filled,
            self.capped_filled,
            self.filled_notional,
            self.commission,
        ] {
            out.f64(sum);
        }
        out.accumulator(&self.first_fill);
        out.accumulator(&self.full_fill);
        out.accumulator(&self.latency);
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, String> {
        Ok(OrderTally {
            placed: input.u64()?,
            filled: input.u64()?,
            partially_filled: input.u64()?,
            canceled: input.u64()?,
            rejected: input.u64()?,
            open: input.u64()?,
            fills: input.u64()?,
            maker_fills: input.u64()?,
            quantity_ordered: input.f64()?,
            quantity_filled: input.f64()?,
            capped_filled: input.f64()?,
            filled_notional: input.f64()?,
            commission: input.f64()?,
            first_fill: input.accumulator()?,
            full_fill: input.accumulator()?,
            latency: input.accumulator()?,
        })
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

/// Whether a report carries the per-symbol, -strategy and -side groups
/// (the `/api/v1/trading/*` reports) or only its summary and series (metric
/// names, the dashboard), which saves the merges of the groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups {
    With,
    Without,
}

fn add_to<K: Ord, T: Tally>(map: &mut BTreeMap<K, T>, key: K, item: &T::Item) {
    map.entry(key).or_default().add(item);
}

/// Tallies the `items` that `filters` select into one [`Coarse`] per
/// minute (by [`Tally::at`]); items without a time are left out.
pub fn minute_coarse<'a, T: Tally>(
    items: impl IntoIterator<Item = &'a T::Item>,
    filters: &Filters,
) -> BTreeMap<i64, Coarse<T>>
where
    T::Item: 'a,
{
    let mut minutes: BTreeMap<i64, Coarse<T>> = BTreeMap::new();
    for item in items {
        let Some(at) = T::at(item) else { continue };
        let key = T::key(item);
        if !filters.matches(
            key.symbol.as_deref(),
            key.strategy_id.as_deref(),
            key.side.as_deref(),
        ) {
            continue;
        }
        let coarse = minutes.entry(Interval::M1.bucket_start(at)).or_default();
        coarse.all.add(item);
        if let (Some(symbol), Some(side)) = (&key.symbol, &key.side) {
            add_to(
                &mut coarse.by_symbol_side,
                (symbol.clone(), side.clone()),
                item,
            );
        }
        if let Some(symbol) = key.symbol {
            add_to(&mut coarse.by_symbol, symbol, item);
        }
        if let Some(strategy) = key.strategy_id {
            add_to(&mut coarse.by_strategy, strategy, item);
        }
        if let Some(side) = key.side {
            add_to(&mut coarse.by_side, side, item);
        }
    }
    minutes
}

/// Tallies `items` into one slice per minute (by [`Tally::at`]); items
/// without a time are left out.
pub fn minute_slices<'a, T: Tally>(
    items: impl IntoIterator<Item = &'a T::Item>,
) -> BTreeMap<i64, Slice<T>>
where
    T::Item: 'a,
{
    let mut minutes: BTreeMap<i64, Slice<T>> = BTreeMap::new();
    add_to_minute_slices::<T>(&mut minutes, items);
    minutes
}

/// Adds `items` to the one-minute slices in `minutes` (what
/// [`minute_slices`] returns for all the items added so far), so items can
/// be read and tallied a piece at a time.
pub fn add_to_minute_slices<'a, T: Tally>(
    minutes: &mut BTreeMap<i64, Slice<T>>,
    items: impl IntoIterator<Item = &'a T::Item>,
) where
    T::Item: 'a,
{
    for item in items {
        let Some(at) = T::at(item) else { continue };
        minutes
            .entry(Interval::M1.bucket_start(at))
            .or_default()
            .entry(T::key(item))
            .or_default()
            .add(item);
    }
}

impl Filters {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.symbol.is_none() && self.strategy_id.is_none() && self.side.is_none()
    }
}

/// What a report needs of a stretch of time: the tally of everything and
/// the tallies per symbol, strategy, side, and symbol and side. Much
/// smaller than the [`Slice`] it comes from (tens of tallies instead of one
/// per symbol × strategy × side), so an unfiltered report merges these.
#[derive(Clone, Default)]
pub struct Coarse<T> {
    pub all: T,
    pub by_symbol: BTreeMap<String, T>,
    pub by_strategy: BTreeMap<String, T>,
    pub by_side: BTreeMap<String, T>,
    pub by_symbol_side: BTreeMap<(String, String), T>,
}

fn merge_into<K: Ord + Clone, T: Tally>(target: &mut BTreeMap<K, T>, key: &K, tally: &T) {
    match target.get_mut(key) {
        Some(existing) => existing.merge(tally),
        None => {
            target.insert(key.clone(), tally.clone());
        }
    }
}

impl<T: Tally> Coarse<T> {
    /// The groups of `slice` that `filters` select, folded.
    pub fn of(slice: &Slice<T>, filters: &Filters) -> Coarse<T> {
        let mut coarse = Coarse::default();
        for (key, tally) in slice {
            if filters.matches(
                key.symbol.as_deref(),
                key.strategy_id.as_deref(),
                key.side.as_deref(),
            ) {
                coarse.add_group(key, tally);
            }
        }
        coarse
    }

    fn add_group(&mut self, key: &GroupKey, tally: &T) {
        self.all.merge(tally);
        if let Some(symbol) = &key.symbol {
            merge_into(&mut self.by_symbol, symbol, tally);
            if let Some(side) = &key.side {
                merge_into(
                    &mut self.by_symbol_side,
                    &(symbol.clone(), side.clone()),
                    tally,
                );
            }
        }
        if let Some(strategy) = &key.strategy_id {
            merge_into(&mut self.by_strategy, strategy, tally);
        }
        if let Some(side) = &key.side {
            merge_into(&mut self.by_side, side, tally);
        }
    }

    /// As if `self` had also seen `other`'s items.
    pub fn merge(&mut self, other: &Coarse<T>) {
        self.all.merge(&other.all);
        for (key, tally) in &other.by_symbol {
            merge_into(&mut self.by_symbol, key, tally);
        }
        for (key, tally) in &other.by_strategy {
            merge_into(&mut self.by_strategy, key, tally);
        }
        for (key, tally) in &other.by_side {
            merge_into(&mut self.by_side, key, tally);
        }
        for (key, tally) in &other.by_symbol_side {
            merge_into(&mut self.by_symbol_side, key, tally);
        }
    }
}

/// Blocks merged beforehand: their merged [`Coarse`] and each block's
/// `all` tally by start (for the series).
#[derive(Clone, Default)]
pub struct Merged<T> {
    pub total: Coarse<T>,
    pub alls: Vec<(i64, T)>,
}

impl<T: Tally> Merged<T> {
    pub fn of<'a>(blocks: impl IntoIterator<Item = (i64, &'a Coarse<T>)>) -> Merged<T> {
        let mut merged = Merged::default();
        for (start, block) in blocks {
            merged.total.merge(block);
            merged.alls.push((start, block.all.clone()));
        }
        merged
    }
}

/// What a report is made of: the tallies of stretches of time that each lie
/// inside one bucket of the interval.
pub enum Piece<'a, T> {
    /// One block, named by its start.
    Block(i64, &'a Coarse<T>),
    /// Blocks merged beforehand.
    Merged(&'a Merged<T>),
}

/// The report of `pieces` by `interval`. With [`Groups::Without`] only the
/// `all` tallies are used.
pub fn report<'a, T: Tally>(
    pieces: impl IntoIterator<Item = Piece<'a, T>>,
    interval: Interval,
    groups: Groups,
) -> Report<T::Figures> {
    let mut series: BTreeMap<i64, T> = BTreeMap::new();
    let mut total: Coarse<T> = Coarse::default();
    for piece in pieces {
        match piece {
            Piece::Block(start, block) => {
                merge_into(&mut series, &interval.bucket_start(start), &block.all);
                match groups {
                    Groups::With => total.merge(block),
                    Groups::Without => total.all.merge(&block.all),
                }
            }
            Piece::Merged(merged) => {
                for (start, all) in &merged.alls {
                    merge_into(&mut series, &interval.bucket_start(*start), all);
                }
                match groups {
                    Groups::With => total.merge(&merged.total),
                    Groups::Without => total.all.merge(&merged.total.all),
                }
            }
        }
    }
    let grouped = |map: BTreeMap<String, T>| -> Vec<Group<T::Figures>> {
        map.into_iter()
            .map(|(key, tally)| Group {
                key,
                figures: tally.finish(),
            })
            .collect()
    };
    Report {
        summary: total.all.finish(),
        series: series
            .into_iter()
            .map(|(start, tally)| Bucket {
                timestamp: crate::model::event::format_timestamp(start),
                figures: tally.finish(),
            })
            .collect(),
        by_symbol: grouped(total.by_symbol),
        by_strategy: grouped(total.by_strategy),
        by_side: grouped(total.by_side),
        by_symbol_side: total
            .by_symbol_side
            .into_iter()
            .map(|((symbol, side), tally)| Group {
                key: format!("{symbol}/{side}"),
                figures: tally.finish(),
            })
            .collect(),
    }
}

/// The report of raw `items` (each counted at [`Tally::at`]), filtered:
/// what the summaries must add up to (tests).
#[cfg(test)]
pub fn report_of<'a, T: Tally>(
    items: impl IntoIterator<Item = &'a T::Item>,
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> Report<T::Figures>
where
    T::Item: 'a,
{
    let blocks = minute_coarse::<T>(items, filters);
    report(
        blocks
            .iter()
            .map(|(start, coarse)| Piece::Block(*start, coarse)),
        interval,
        groups,
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

/// `/api/v1/trading/execution`.
pub type ExecutionReport = Report<ExecutionFigures>;

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

/// Accumulates [`ExecutionFigures`].
#[derive(Clone)]
pub struct ExecutionTally {
    fills: u64,
    quantity: f64,
    notional: f64,
    maker_fills: u64,
    commission: f64,
    slippage: Accumulator,
    weighted: f64,
    weight: f64,
}

impl Default for ExecutionTally {
    fn default() -> Self {
        ExecutionTally {
            fills: 0,
            quantity: 0.0,
            notional: 0.0,
            maker_fills: 0,
            commission: 0.0,
            slippage: Accumulator::new_with_values(),
            weighted: 0.0,
            weight: 0.0,
        }
    }
}

impl Tally for ExecutionTally {
    type Item = FillView;
    type Figures = ExecutionFigures;

    fn at(view: &FillView) -> Option<i64> {
        Some(view.fill.timestamp_ms)
    }

    fn key(view: &FillView) -> GroupKey {
        GroupKey {
            symbol: view.fill.symbol.clone(),
            strategy_id: view.fill.strategy_id.clone(),
            side: view.fill.side.clone(),
        }
    }

    fn add(&mut self, view: &FillView) {
        let fill = &view.fill;
        let notional = fill.price * fill.quantity;
        self.fills += 1;
        self.quantity += fill.quantity;
        self.notional += notional;
        self.maker_fills += u64::from(fill.is_maker == Some(true));
        self.commission += fill.commission.unwrap_or(0.0);
        if let Some(slippage) = slippage_bps(view) {
            self.slippage.record_value(slippage);
            self.weighted += slippage * notional;
            self.weight += notional;
        }
    }

    fn merge(&mut self, other: &Self) {
        self.fills += other.fills;
        self.quantity += other.quantity;
        self.notional += other.notional;
        self.maker_fills += other.maker_fills;
        self.commission += other.commission;
        self.slippage.merge(&other.slippage);
        self.weighted += other.weighted;
        self.weight += other.weight;
    }

    fn finish(&self) -> ExecutionFigures {
        ExecutionFigures {
            fills: self.fills,
            quantity: self.quantity,
            notional: self.notional,
            vwap: ratio(self.notional, self.quantity),
            maker_fills: self.maker_fills,
            maker_ratio: ratio(self.maker_fills as f64, self.fills as f64),
            commission: self.commission,
            slippage_bps: Distribution::of(&self.slippage),
            slippage_bps_notional_weighted: ratio(self.weighted, self.weight),
        }
    }

    fn encode(&self, out: &mut Encoder) {
        out.u64(self.fills);
        out.u64(self.maker_fills);
        for sum in [
            self.quantity,
            self.notional,
            self.commission,
            self.weighted,
            self.weight,
        ] {
            out.f64(sum);
        }
        out.accumulator(&self.slippage);
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, String> {
        Ok(ExecutionTally {
            fills: input.u64()?,
            maker_fills: input.u64()?,
            quantity: input.f64()?,
            notional: input.f64()?,
            commission: input.f64()?,
            weighted: input.f64()?,
            weight: input.f64()?,
            slippage: input.accumulator()?,
        })
    }
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
    fn sample_std_of_known_values() {
        assert_eq!(sample_std(&[1.0]), None);
        let std = sample_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert!((std - 2.138_089_935).abs() < 1e-6);
    }
}
