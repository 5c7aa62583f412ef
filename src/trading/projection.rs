//! What a batch of newly inserted events changes in the trading tables:
//! per-order state, fills, mid quotes and one-minute market bars.
//!
//! The submitting task prepares [`TradingBatch::of`] all its events (off the
//! committer, like the rollup deltas); the store writes it inside the commit
//! transaction when every event was new, else [`TradingBatch::of_inserted`]
//! the events it did insert. Writes are merges that do not depend on
//! arrival order:
//! - an order row adds up fill quantity, notional, fills, maker fills and
//!   commission, keeps the earliest placed, cancel, reject and first-fill
//!   times and the latest fill time, the first known symbol, side, strategy
//!   and type, and the ordered quantity, price and placement latency of the
//!   earliest placement;
//! - a bar keeps the first and last update by (time, event id), the high, the
//!   low and the sums.
//!
//! So a redelivered event (not inserted again) changes nothing, and events of
//! one order in any order give the same row. Within a batch, the rows are
//! already merged the same way: one order row per order id and one bar per
//! (symbol, source, minute), sorted, so concurrent writers lock rows in the
//! same order.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::model::Event;
use crate::model::metric::strategy_id;
use crate::model::properties::Scalar;
use crate::rollup::Interval;

/// `market_bars.source` of bars built from `market.data.update`.
pub const SOURCE_MARKET: &str = "market";
/// `market_bars.source` of bars built from `order.filled`.
pub const SOURCE_FILL: &str = "fill";

/// The static name of a stored `market_bars.source` (an unknown one reads
/// as market data).
pub fn source_name(stored: &str) -> &'static str {
    if stored == SOURCE_FILL {
        SOURCE_FILL
    } else {
        SOURCE_MARKET
    }
}

/// The merged change of one order; also an order row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderDelta {
    pub order_id: String,
    pub symbol: Option<String>,
    pub side: Option<String>,
    pub strategy_id: Option<String>,
    pub order_type: Option<String>,
    pub placed_at: Option<i64>,
    pub quantity: Option<f64>,
    pub price: Option<f64>,
    pub latency_ms: Option<f64>,
    pub filled_quantity: f64,
    pub filled_notional: f64,
    pub fills: i64,
    pub maker_fills: i64,
    pub commission: f64,
    pub first_fill_at: Option<i64>,
    pub last_fill_at: Option<i64>,
    pub canceled_at: Option<i64>,
    pub rejected_at: Option<i64>,
    pub seen_at: i64,
}

impl OrderDelta {
    fn new(order_id: &str, seen_at: i64) -> Self {
        OrderDelta {
            order_id: order_id.to_owned(),
            symbol: None,
            side: None,
            strategy_id: None,
            order_type: None,
            placed_at: None,
            quantity: None,
            price: None,
            latency_ms: None,
            filled_quantity: 0.0,
            filled_notional: 0.0,
            fills: 0,
            maker_fills: 0,
            commission: 0.0,
            first_fill_at: None,
            last_fill_at: None,
            canceled_at: None,
            rejected_at: None,
            seen_at,
        }
    }

    /// Folds `other` (later changes of the same order) in: the same merge
    /// the stores apply to a stored row and a batch's change.
    fn merge(&mut self, other: OrderDelta) {
        keep_first(&mut self.symbol, other.symbol.as_deref());
        keep_first(&mut self.side, other.side.as_deref());
        keep_first(&mut self.strategy_id, other.strategy_id.as_deref());
        keep_first(&mut self.order_type, other.order_type.as_deref());
        let other_is_earlier = match (other.placed_at, self.placed_at) {
            (Some(theirs), Some(ours)) => theirs < ours,
            _ => false,
        };
        if other_is_earlier {
            self.quantity = other.quantity.or(self.quantity);
            self.price = other.price.or(self.price);
            self.latency_ms = other.latency_ms.or(self.latency_ms);
        } else {
            self.quantity = self.quantity.or(other.quantity);
            self.price = self.price.or(other.price);
            self.latency_ms = self.latency_ms.or(other.latency_ms);
        }
        self.placed_at = min_option(self.placed_at, other.placed_at);
        self.filled_quantity += other.filled_quantity;
        self.filled_notional += other.filled_notional;
        self.fills += other.fills;
        self.maker_fills += other.maker_fills;
        self.commission += other.commission;
        self.first_fill_at = min_option(self.first_fill_at, other.first_fill_at);
        self.last_fill_at = match (self.last_fill_at, other.last_fill_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.canceled_at = min_option(self.canceled_at, other.canceled_at);
        self.rejected_at = min_option(self.rejected_at, other.rejected_at);
        self.seen_at = self.seen_at.min(other.seen_at);
    }

    /// Folds one event of this order in (the same merge the stores apply).
    fn apply(&mut self, event: &Event, kind: OrderEventKind) {
        let at = event.timestamp_ms;
        self.seen_at = self.seen_at.min(at);
        keep_first(&mut self.symbol, event.string("symbol"));
        if self.side.is_none() {
            self.side = side_of(event);
        }
        keep_first(&mut self.strategy_id, strategy_id(event).as_deref());
        keep_first(&mut self.order_type, event.string("order_type"));
        match kind {
            OrderEventKind::Placed => {
                // The earliest placement defines the order's figures (the
                // stores merge the same way).
                let (quantity, price, latency) = (
                    event.number("quantity"),
                    event.number("price"),
                    event.number("latency_ms"),
                );
                if self.placed_at.is_none_or(|placed| at < placed) {
                    self.placed_at = Some(at);
                    self.quantity = quantity.or(self.quantity);
                    self.price = price.or(self.price);
                    self.latency_ms = latency.or(self.latency_ms);
                } else {
                    self.quantity = self.quantity.or(quantity);
                    self.price = self.price.or(price);
                    self.latency_ms = self.latency_ms.or(latency);
                }
            }
            OrderEventKind::Filled => {
                if let Some(fill) = Fill::of(event) {
                    self.filled_quantity += fill.quantity;
                    self.filled_notional += fill.quantity * fill.price;
                    self.fills += 1;
                    self.maker_fills += i64::from(fill.is_maker == Some(true));
                    self.commission += fill.commission.unwrap_or(0.0);
                    self.first_fill_at = min_option(self.first_fill_at, Some(at));
                    self.last_fill_at = Some(self.last_fill_at.map_or(at, |last| last.max(at)));
                }
            }
            OrderEventKind::Canceled => self.canceled_at = min_option(self.canceled_at, Some(at)),
            OrderEventKind::Rejected => self.rejected_at = min_option(self.rejected_at, Some(at)),
        }
    }
}

/// One `order.filled` event.
#[derive(Debug, Clone, PartialEq)]
pub struct FillRow {
    pub event_id: uuid::Uuid,
    pub order_id: Option<String>,
    pub symbol: Option<String>,
    pub side: Option<String>,
    pub strategy_id: Option<String>,
    pub timestamp_ms: i64,
    pub price: f64,
    pub quantity: f64,
    pub is_maker: Option<bool>,
    pub commission: Option<f64>,
}

/// The mid price of one `market.data.update`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuoteRow {
    pub symbol: String,
    pub timestamp_ms: i64,
    pub event_id: String,
    pub mid: f64,
}

/// The merged change of one one-minute bar.
#[derive(Debug, Clone, PartialEq)]
pub struct BarDelta {
    pub symbol: String,
    pub source: &'static str,
    pub minute: i64,
    pub open_ts: i64,
    pub open_id: String,
    pub open: f64,
    pub close_ts: i64,
    pub close_id: String,
    pub close: f64,
    pub high: f64,
    pub low: f64,
    pub volume: f64,
    pub updates: i64,
    pub spread_sum: f64,
    pub spread_count: i64,
}

impl BarDelta {
    /// A bar of one update.
    fn of_point(symbol: &str, source: &'static str, point: &BarPoint<'_>) -> BarDelta {
        BarDelta {
            symbol: symbol.to_owned(),
            source,
            minute: Interval::M1.bucket_start(point.at),
            open_ts: point.at,
            open_id: point.id.to_owned(),
            open: point.price,
            close_ts: point.at,
            close_id: point.id.to_owned(),
            close: point.price,
            high: point.price,
            low: point.price,
            volume: point.volume,
            updates: 1,
            spread_sum: point.spread.unwrap_or(0.0),
            spread_count: i64::from(point.spread.is_some()),
        }
    }

    /// Adds one update; allocates only when it becomes the open or close.
    fn add_point(&mut self, point: &BarPoint<'_>) {
        if (point.at, point.id) < (self.open_ts, self.open_id.as_str()) {
            self.open_ts = point.at;
            point.id.clone_into(&mut self.open_id);
            self.open = point.price;
        }
        if (point.at, point.id) > (self.close_ts, self.close_id.as_str()) {
            self.close_ts = point.at;
            point.id.clone_into(&mut self.close_id);
            self.close = point.price;
        }
        self.high = self.high.max(point.price);
        self.low = self.low.min(point.price);
        self.volume += point.volume;
        self.updates += 1;
        if let Some(spread) = point.spread {
            self.spread_sum += spread;
            self.spread_count += 1;
        }
    }

    fn merge(&mut self, other: BarDelta) {
        if (other.open_ts, &other.open_id) < (self.open_ts, &self.open_id) {
            self.open_ts = other.open_ts;
            self.open_id = other.open_id;
            self.open = other.open;
        }
        if (other.close_ts, &other.close_id) > (self.close_ts, &self.close_id) {
            self.close_ts = other.close_ts;
            self.close_id = other.close_id;
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.volume += other.volume;
        self.updates += other.updates;
        self.spread_sum += other.spread_sum;
        self.spread_count += other.spread_count;
    }
}

/// Everything a batch changes in the trading tables.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TradingBatch {
    /// One per order id, by order id.
    pub orders: Vec<OrderDelta>,
    pub fills: Vec<FillRow>,
    pub quotes: Vec<QuoteRow>,
    /// One per (symbol, source, minute), in that order.
    pub bars: Vec<BarDelta>,
}

/// Puts `quotes` in their key order (symbol, time, event id): the store's
/// inserts then walk each symbol's end of the index in turn instead of
/// jumping between the symbols at every row.
fn sort_quotes(quotes: &mut [QuoteRow]) {
    quotes.sort_unstable_by(|a, b| {
        (&a.symbol, a.timestamp_ms, &a.event_id).cmp(&(&b.symbol, b.timestamp_ms, &b.event_id))
    });
}

impl TradingBatch {
    /// The changes of `events[i]` for every `i` with `inserted[i]`.
    pub fn of_inserted(events: &[Event], inserted: &[bool]) -> TradingBatch {
        TradingBatch::of(
            events
                .iter()
                .zip(inserted)
                .filter(|(_, inserted)| **inserted)
                .map(|(event, _)| event),
        )
    }

    /// The changes of the inserted events (`inserted` index for index with
    /// `events`), given `prepared`, the changes of all of them: `prepared`
    /// itself when every event was new.
    pub fn of_inserted_given<'p>(
        prepared: &'p TradingBatch,
        events: &[Event],
        inserted: &[bool],
    ) -> std::borrow::Cow<'p, TradingBatch> {
        if inserted.iter().all(|flag| *flag) {
            Cow::Borrowed(prepared)
        } else {
            Cow::Owned(TradingBatch::of_inserted(events, inserted))
        }
    }

    /// The changes of `events`.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> TradingBatch {
        // Keys borrow from the events: no allocation to find a row again.
        let mut orders: BTreeMap<Cow<'a, str>, OrderDelta> = BTreeMap::new();
        let mut bars: Bars<'a> = BTreeMap::new();
        let mut batch = TradingBatch::default();
        for event in events {
            if event.event_type == "market.data.update" {
                batch.add_market_update(event, &mut bars);
                continue;
            }
            let Some(kind) = OrderEventKind::of(&event.event_type) else {
                continue;
            };
            if kind == OrderEventKind::Filled
                && let Some(fill) = Fill::of(event)
            {
                batch.add_fill(event, &fill, &mut bars);
            }
            if let Some(order_id) = text_of(event, "order_id") {
                orders
                    .entry(order_id)
                    .or_insert_with_key(|order_id| OrderDelta::new(order_id, event.timestamp_ms))
                    .apply(event, kind);
            }
        }
        batch.orders = orders.into_values().collect();
        batch.bars = bars.into_values().collect();
        sort_quotes(&mut batch.quotes);
        batch
    }

    /// The changes of all `batches`' events together, the batches in the
    /// order of their events. One pass over them all: merging them one by
    /// one would re-sort the orders gathered so far at every step.
    pub fn merge_all(batches: impl IntoIterator<Item = TradingBatch>) -> TradingBatch {
        let mut batches = batches.into_iter().filter(|batch| !batch.is_empty());
        let Some(first) = batches.next() else {
            return TradingBatch::default();
        };
        let Some(second) = batches.next() else {
            return first;
        };
        let mut orders: BTreeMap<String, OrderDelta> = BTreeMap::new();
        let mut bars: BTreeMap<(String, &'static str, i64), BarDelta> = BTreeMap::new();
        let mut merged = TradingBatch::default();
        for batch in [first, second].into_iter().chain(batches) {
            for order in batch.orders {
                match orders.entry(order.order_id.clone()) {
                    Entry::Occupied(mut existing) => existing.get_mut().merge(order),
                    Entry::Vacant(slot) => {
                        slot.insert(order);
                    }
                }
            }
            for bar in batch.bars {
                match bars.entry((bar.symbol.clone(), bar.source, bar.minute)) {
                    Entry::Occupied(mut existing) => existing.get_mut().merge(bar),
                    Entry::Vacant(slot) => {
                        slot.insert(bar);
                    }
                }
            }
            merged.fills.extend(batch.fills);
            merged.quotes.extend(batch.quotes);
        }
        merged.orders = orders.into_values().collect();
        merged.bars = bars.into_values().collect();
        sort_quotes(&mut merged.quotes);
        merged
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
            && self.fills.is_empty()
            && self.quotes.is_empty()
            && self.bars.is_empty()
    }

    fn add_market_update<'a>(&mut self, event: &'a Event, bars: &mut Bars<'a>) {
        let Some(symbol) = event.string("symbol") else {
            return;
        };
        let (bid, ask) = (event.number("bid"), event.number("ask"));
        let mid = match (bid, ask) {
            (Some(bid), Some(ask)) => Some((bid + ask) / 2.0),
            _ => None,
        };
        // A bar follows the traded price; a quote-only update follows its mid.
        let Some(price) = event.number("price").or(mid) else {
            return;
        };
        // Without bid and ask, the traded price stands in for the mid.
        let event_id = event.id.to_string();
        let spread = match (bid, ask) {
            (Some(bid), Some(ask)) => Some(ask - bid),
            _ => None,
        };
        let point = BarPoint {
            at: event.timestamp_ms,
            id: &event_id,
            price,
            volume: event.number("volume").unwrap_or(0.0),
            spread,
        };
        add_bar(bars, symbol, SOURCE_MARKET, &point);
        self.quotes.push(QuoteRow {
            symbol: symbol.to_owned(),
            timestamp_ms: event.timestamp_ms,
            event_id,
            mid: mid.unwrap_or(price),
        });
    }

    fn add_fill<'a>(&mut self, event: &'a Event, fill: &Fill, bars: &mut Bars<'a>) {
        let symbol = event.string("symbol");
        if let Some(symbol) = symbol {
            let event_id = event.id.to_string();
            let point = BarPoint {
                at: event.timestamp_ms,
                id: &event_id,
                price: fill.price,
                volume: fill.quantity,
                spread: None,
            };
            add_bar(bars, symbol, SOURCE_FILL, &point);
        }
        self.fills.push(FillRow {
            event_id: event.id,
            order_id: text_of(event, "order_id").map(Cow::into_owned),
            symbol: symbol.map(str::to_owned),
            side: side_of(event),
            strategy_id: strategy_id(event).map(|id| id.into_owned()),
            timestamp_ms: event.timestamp_ms,
            price: fill.price,
            quantity: fill.quantity,
            is_maker: fill.is_maker,
            commission: fill.commission,
        });
    }
}

/// The one-minute bars of a batch being built, keyed by (symbol, source,
/// minute) borrowed from the events.
type Bars<'a> = BTreeMap<(&'a str, &'static str, i64), BarDelta>;

/// One update of a bar.
struct BarPoint<'p> {
    at: i64,
    /// The event id, hyphenated (the tie-breaker of open and close).
    id: &'p str,
    price: f64,
    volume: f64,
    spread: Option<f64>,
}

fn add_bar<'a>(bars: &mut Bars<'a>, symbol: &'a str, source: &'static str, point: &BarPoint<'_>) {
    let minute = Interval::M1.bucket_start(point.at);
    match bars.get_mut(&(symbol, source, minute)) {
        Some(bar) => bar.add_point(point),
        None => {
            bars.insert(
                (symbol, source, minute),
                BarDelta::of_point(symbol, source, point),
            );
        }
    }
}

/// The order event types this module follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderEventKind {
    Placed,
    Filled,
    Canceled,
    Rejected,
}

impl OrderEventKind {
    fn of(event_type: &str) -> Option<Self> {
        Some(match event_type {
            "order.placed" => OrderEventKind::Placed,
            "order.filled" => OrderEventKind::Filled,
            "order.canceled" | "order.cancelled" => OrderEventKind::Canceled,
            "order.rejected" => OrderEventKind::Rejected,
            _ => return None,
        })
    }
}

/// The figures of one `order.filled`: it needs a positive quantity and a
/// price to be a fill.
struct Fill {
    price: f64,
    quantity: f64,
    is_maker: Option<bool>,
    commission: Option<f64>,
}

impl Fill {
    fn of(event: &Event) -> Option<Fill> {
        let price = event.number("price")?;
        let quantity = event
            .number("quantity")
            .filter(|quantity| *quantity > 0.0)?;
        Some(Fill {
            price,
            quantity,
            is_maker: event.properties.get("is_maker").and_then(Scalar::flag),
            commission: event.number("commission"),
        })
    }
}

/// `side` in lower case (`buy`/`sell` whatever the sender's casing).
fn side_of(event: &Event) -> Option<String> {
    event.string("side").map(str::to_ascii_lowercase)
}

/// A string or numeric property as text (borrowed when it is a string).
fn text_of<'a>(event: &'a Event, name: &str) -> Option<Cow<'a, str>> {
    event.properties.get(name)?.text()
}

fn keep_first(slot: &mut Option<String>, value: Option<&str>) {
    if slot.is_none()
        && let Some(value) = value
    {
        *slot = Some(value.to_owned());
    }
}

fn min_option(current: Option<i64>, candidate: Option<i64>) -> Option<i64> {
    combine_options(current, candidate, i64::min)
}

/// `pick` of the two values when both are there, else whichever is (the
/// earlier of two times, the larger of two extremes).
pub(crate) fn combine_options<T>(
    current: Option<T>,
    candidate: Option<T>,
    pick: impl FnOnce(T, T) -> T,
) -> Option<T> {
    match (current, candidate) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn event(event_type: &str, at: i64, properties: Value) -> Event {
        Event {
            id: uuid::Uuid::new_v4(),
            event_type: event_type.into(),
            user_id: None,
            session_id: None,
            properties: properties.as_object().cloned().unwrap_or_default().into(),
            timestamp_ms: at,
            created_at_ms: at,
        }
    }

    #[test]
    fn an_order_merges_the_same_in_any_order() {
        let events = vec![
            event(
                "order.placed",
                1_000,
                json!({"order_id": "o1", "symbol": "BTCUSDT", "side": "BUY", "quantity": "2", "latency_ms": 5}),
            ),
            event(
                "order.filled",
                3_000,
                json!({"order_id": "o1", "price": 10, "quantity": 1.5, "is_maker": true, "commission": 0.1}),
            ),
            event(
                "order.filled",
                2_000,
                json!({"order_id": "o1", "price": "12", "quantity": "0.5", "is_maker": "false"}),
            ),
            event("order.canceled", 4_000, json!({"order_id": "o1"})),
        ];
        let forward = TradingBatch::of(&events);
        let backward = TradingBatch::of(events.iter().rev());
        assert_eq!(forward.orders, backward.orders);
        let order = &forward.orders[0];
        assert_eq!(order.placed_at, Some(1_000));
        assert_eq!(order.side.as_deref(), Some("buy"));
        assert_eq!(order.quantity, Some(2.0));
        assert_eq!(order.filled_quantity, 2.0);
        assert_eq!(order.filled_notional, 21.0);
        assert_eq!((order.fills, order.maker_fills), (2, 1));
        assert_eq!(
            (order.first_fill_at, order.last_fill_at),
            (Some(2_000), Some(3_000))
        );
        assert_eq!(order.canceled_at, Some(4_000));
        assert_eq!(order.seen_at, 1_000);
        assert_eq!(forward.fills.len(), 2);
    }

    #[test]
    fn merging_batches_equals_the_batch_of_all_their_events() {
        let mut events = vec![
            event(
                "order.filled",
                5_000,
                json!({"order_id": "a", "price": 2, "quantity": 1, "side": "sell"}),
            ),
            event(
                "order.placed",
                4_000,
                json!({"order_id": "a", "quantity": 3, "latency_ms": 9}),
            ),
            event(
                "order.placed",
                1_000,
                json!({"order_id": "a", "quantity": 2, "latency_ms": 4}),
            ),
            event(
                "order.filled",
                2_000,
                json!({"order_id": "b", "price": 1, "quantity": 1, "symbol": "X"}),
            ),
            event("order.rejected", 3_000, json!({"order_id": "b"})),
            event(
                "market.data.update",
                61_000,
                json!({"symbol": "X", "price": 4}),
            ),
            event(
                "market.data.update",
                60_500,
                json!({"symbol": "X", "price": 3}),
            ),
        ];
        for split in 0..=events.len() {
            let all = TradingBatch::of(&events);
            let merged = TradingBatch::merge_all([
                TradingBatch::of(&events[..split]),
                TradingBatch::of(&events[split..]),
            ]);
            assert_eq!(merged.orders, all.orders, "split at {split}");
            assert_eq!(merged.bars, all.bars, "split at {split}");
            assert_eq!(merged.fills, all.fills);
            assert_eq!(merged.quotes, all.quotes);
        }
        // One batch per event, merged in one pass, as the committer does.
        let all = TradingBatch::of(&events);
        let merged = TradingBatch::merge_all(
            events
                .iter()
                .map(|event| TradingBatch::of(std::slice::from_ref(event))),
        );
        assert_eq!(merged.orders, all.orders);
        assert_eq!(merged.bars, all.bars);
        assert_eq!(merged.fills, all.fills);
        assert_eq!(merged.quotes, all.quotes);
        // The earliest placement's figures win whichever batch brings it.
        events.swap(1, 2);
        let merged = TradingBatch::merge_all([
            TradingBatch::of(&events[..2]),
            TradingBatch::of(&events[2..]),
        ]);
        assert_eq!(merged.orders[0].quantity, Some(2.0));
        assert_eq!(merged.orders[0].latency_ms, Some(4.0));
    }

    #[test]
    fn bars_keep_first_and_last_by_time() {
        let events = [
            event(
                "market.data.update",
                60_500,
                json!({"symbol": "ETH", "price": 3, "volume": 1}),
            ),
            event(
                "market.data.update",
                60_100,
                json!({"symbol": "ETH", "bid": 1, "ask": 3}),
            ),
            event(
                "market.data.update",
                60_900,
                json!({"symbol": "ETH", "price": 5, "volume": 2}),
            ),
        ];
        let batch = TradingBatch::of(events.iter().rev());
        assert_eq!(batch.bars.len(), 1);
        let bar = &batch.bars[0];
        assert_eq!((bar.minute, bar.open, bar.close), (60_000, 2.0, 5.0));
        assert_eq!(
            (bar.high, bar.low, bar.volume, bar.updates),
            (5.0, 2.0, 3.0, 3)
        );
        assert_eq!((bar.spread_sum, bar.spread_count), (2.0, 1));
        assert_eq!(batch.quotes.len(), 3);
    }

    #[test]
    fn events_without_what_they_need_are_ignored() {
        let events = vec![
            event("order.filled", 1, json!({"order_id": "o", "price": 1})),
            event("market.data.update", 1, json!({"price": 1})),
            event("user.login", 1, json!({"order_id": "o"})),
        ];
        let batch = TradingBatch::of(&events);
        assert!(batch.fills.is_empty() && batch.quotes.is_empty() && batch.bars.is_empty());
        // The fill without a quantity still tells which order exists.
        assert_eq!(batch.orders.len(), 1);
        assert_eq!(batch.orders[0].fills, 0);
    }
}
