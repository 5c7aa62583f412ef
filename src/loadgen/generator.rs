//! A deterministic, realistic B25 event stream.
//!
//! [`EventGenerator`] plays a small trading desk: users log in and browse,
//! strategies start, stop and emit signals, orders are placed and then
//! filled (sometimes in several partial fills), canceled or rejected,
//! positions open and close with a profit or loss, and market data ticks
//! move each symbol's price along a geometric random walk.
//!
//! Invariants:
//! - Every random choice comes from one seeded ChaCha-based `StdRng` per
//!   stream, so `(seed, stream)` and the sequence of timestamps asked for fix
//!   the output byte for byte.
//! - Lifecycles make sense: an `order.filled`, `order.canceled` or
//!   `order.rejected` always refers to an `order_id` that was placed earlier
//!   in the same stream, fills never exceed the placed quantity, and a
//!   `position.closed` always follows its `position.opened`.
//! - Latencies are log-normal (heavy right tail), like real exchange round
//!   trips; prices stay positive.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde::Serialize;
use uuid::Uuid;

use crate::model::event::format_timestamp;

/// Symbols used when none are configured.
pub const DEFAULT_SYMBOLS: [&str; 8] = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT",
];

const STRATEGY_KINDS: [&str; 6] = [
    "momentum",
    "mean-reversion",
    "market-making",
    "arbitrage",
    "breakout",
    "grid",
];

const PAGES: [&str; 7] = [
    "/dashboard",
    "/trade",
    "/orders",
    "/positions",
    "/strategies",
    "/analytics",
    "/settings",
];

/// Most orders kept open at once; past this, the generator resolves orders
/// before placing new ones, so memory stays bounded.
const MAX_OPEN_ORDERS: usize = 512;
/// Most positions kept open at once.
const MAX_OPEN_POSITIONS: usize = 256;

/// Whether generated events carry an `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdMode {
    /// No `id`: the receiver assigns one (the service: a UUIDv7; `analytics
    /// import`: a UUIDv5 of the line).
    None,
    /// A deterministic, time-ordered id (UUIDv7 layout: the event time plus
    /// seeded random bits), so a re-run with the same seed and timestamps
    /// sends the same ids (duplicates).
    Seeded,
}

/// What the generated desk looks like.
#[derive(Debug, Clone)]
pub struct GeneratorSettings {
    pub seed: u64,
    /// Distinguishes independent streams of one run (one per worker).
    pub stream: u64,
    pub users: usize,
    pub symbols: Vec<String>,
    pub strategies: usize,
    pub ids: IdMode,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        GeneratorSettings {
            seed: 42,
            stream: 0,
            users: 200,
            symbols: DEFAULT_SYMBOLS
                .iter()
                .map(|symbol| symbol.to_string())
                .collect(),
            strategies: 12,
            ids: IdMode::None,
        }
    }
}

/// One event in wire form, ready to serialise as the service's JSON.
#[derive(Debug, Clone, Serialize)]
pub struct WireEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub properties: Properties,
    /// RFC 3339 with milliseconds, UTC.
    pub timestamp: String,
}

/// The properties the analytics read, plus a few descriptive ones. Absent
/// fields are left out of the JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Properties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_quantity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_maker: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commission: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pnl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bid: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ask: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<&'static str>,
}

struct Market {
    symbol: String,
    mid: f64,
    /// Per-tick standard deviation of the log price.
    volatility: f64,
}

struct OpenOrder {
    order_id: String,
    user: usize,
    market: usize,
    side: &'static str,
    order_type: &'static str,
    strategy: Option<usize>,
    price: f64,
    remaining: f64,
    /// Decided at placement: the exchange will refuse this order.
    doomed: bool,
}

struct OpenPosition {
    position_id: String,
    user: usize,
    market: usize,
    side: &'static str,
    entry_price: f64,
    quantity: f64,
    strategy: Option<usize>,
}

/// Generates one stream of events; see the module docs.
pub struct EventGenerator {
    rng: StdRng,
    settings: GeneratorSettings,
    user_ids: Vec<String>,
    sessions: Vec<u64>,
    strategy_ids: Vec<String>,
    strategy_active: Vec<bool>,
    markets: Vec<Market>,
    open_orders: Vec<OpenOrder>,
    open_positions: Vec<OpenPosition>,
    next_order: u64,
    next_position: u64,
    latency: LogNormal<f64>,
    notional: LogNormal<f64>,
    tick: Normal<f64>,
}

impl EventGenerator {
    /// A generator for `settings`; zero users, symbols or strategies are
    /// raised to one.
    pub fn new(mut settings: GeneratorSettings) -> Self {
        if settings.symbols.is_empty() {
            settings.symbols = DEFAULT_SYMBOLS.iter().map(|s| s.to_string()).collect();
        }
        settings.users = settings.users.max(1);
        settings.strategies = settings.strategies.max(1);
        // Distinct streams of one seed must not share a sequence: mix the
        // stream number in with a large odd constant (splitmix64 increment).
        let seed = settings
            .seed
            .wrapping_add(settings.stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut rng = StdRng::seed_from_u64(seed);
        let markets = settings
            .symbols
            .iter()
            .map(|symbol| Market {
                symbol: symbol.clone(),
                mid: base_price(symbol) * rng.random_range(0.9..1.1),
                volatility: 0.0004,
            })
            .collect();
        let user_ids = (0..settings.users)
            .map(|index| format!("user-{index:05}"))
            .collect();
        let strategy_ids: Vec<String> = (0..settings.strategies)
            .map(|index| {
                let kind = STRATEGY_KINDS[index % STRATEGY_KINDS.len()];
                format!("strat-{kind}-{index:02}")
            })
            .collect();
        let strategy_active = (0..settings.strategies)
            .map(|_| rng.random_bool(0.6))
            .collect();
        EventGenerator {
            sessions: vec![0; settings.users],
            rng,
            user_ids,
            strategy_ids,
            strategy_active,
            markets,
            open_orders: Vec::new(),
            open_positions: Vec::new(),
            next_order: 0,
            next_position: 0,
            // Median 8 ms, p99 about 65 ms, rare spikes in the hundreds.
            latency: LogNormal::new(8f64.ln(), 0.9).unwrap_or_else(|_| unreachable_distribution()),
            // Median order notional 1 000 USDT.
            notional: LogNormal::new(1000f64.ln(), 1.2)
                .unwrap_or_else(|_| unreachable_distribution()),
            tick: Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable_distribution()),
            settings,
        }
    }

    /// The next event of the stream, stamped `timestamp_ms`.
    pub fn next_event(&mut self, timestamp_ms: i64) -> WireEvent {
        let roll = self.rng.random_range(0..100u32);
        let mut event = match roll {
            0..30 => self.market_data(),
            30..50 => self.place_order(),
            50..70 => self.resolve_order(),
            70..78 => self.signal(),
            78..84 => self.position(),
            84..86 => self.strategy_toggle(),
            86..89 => self.login(),
            89..90 => self.logout(),
            _ => self.page_view(),
        };
        event.timestamp = format_timestamp(timestamp_ms);
        if self.settings.ids == IdMode::Seeded {
            let random: [u8; 10] = self.rng.random();
            let millis = u64::try_from(timestamp_ms).unwrap_or(0);
            event.id = Some(uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid());
        }
        event
    }

    fn blank(&self, event_type: &'static str, user: Option<usize>) -> WireEvent {
        WireEvent {
            id: None,
            event_type,
            user_id: user.map(|user| self.user_ids[user].clone()),
            session_id: user.map(|user| self.session_id(user)),
            properties: Properties::default(),
            timestamp: String::new(),
        }
    }

    fn session_id(&self, user: usize) -> String {
        format!(
            "sess-{}-{}-{}",
            self.settings.stream, self.user_ids[user], self.sessions[user]
        )
    }

    fn pick_user(&mut self) -> usize {
        // A few users trade much more than the rest (Zipf-like): square a
        // uniform draw so low indices are favoured.
        let draw: f64 = self.rng.random();
        ((draw * draw) * self.settings.users as f64) as usize % self.settings.users
    }

    fn pick_market(&mut self) -> usize {
        // The first symbols (BTC, ETH) carry most of the flow.
        let draw: f64 = self.rng.random();
        ((draw * draw) * self.markets.len() as f64) as usize % self.markets.len()
    }

    fn active_strategy(&mut self) -> Option<usize> {
        let start = self.rng.random_range(0..self.strategy_ids.len());
        (0..self.strategy_ids.len())
            .map(|offset| (start + offset) % self.strategy_ids.len())
            .find(|index| self.strategy_active[*index])
    }

    fn step_price(&mut self, market: usize) -> f64 {
        let shock = self.tick.sample(&mut self.rng);
        let market = &mut self.markets[market];
        market.mid *= (market.volatility * shock).exp();
        market.mid
    }

    fn market_data(&mut self) -> WireEvent {
        let market = self.pick_market();
        let mid = self.step_price(market);
        let half_spread = mid * self.rng.random_range(0.00002..0.0002);
        let mut event = self.blank("market.data.update", None);
        let properties = &mut event.properties;
        properties.symbol = Some(self.markets[market].symbol.clone());
        properties.bid = Some(round_price(mid - half_spread));
        properties.ask = Some(round_price(mid + half_spread));
        properties.price = Some(round_price(mid));
        properties.volume = Some(round_to(
            self.notional.sample(&mut self.rng) / mid * 20.0,
            4,
        ));
        event
    }

    fn place_order(&mut self) -> WireEvent {
        if self.open_orders.len() >= MAX_OPEN_ORDERS {
            return self.resolve_order();
        }
        let user = self.pick_user();
        let market = self.pick_market();
        let mid = self.step_price(market);
        let side = if self.rng.random_bool(0.5) {
            "BUY"
        } else {
            "SELL"
        };
        let order_type = if self.rng.random_bool(0.7) {
            "LIMIT"
        } else {
            "MARKET"
        };
        let strategy = if self.rng.random_bool(0.7) {
            self.active_strategy()
        } else {
            None
        };
        // Limit orders rest a little away from the mid on their own side.
        let offset = if order_type == "LIMIT" {
            self.rng.random_range(0.0..0.002)
        } else {
            0.0
        };
        let price = round_price(if side == "BUY" {
            mid * (1.0 - offset)
        } else {
            mid * (1.0 + offset)
        });
        let quantity = round_quantity(self.notional.sample(&mut self.rng) / price);
        self.next_order += 1;
        let order = OpenOrder {
            order_id: format!("ORD-{}-{:010}", self.settings.stream, self.next_order),
            user,
            market,
            side,
            order_type,
            strategy,
            price,
            remaining: quantity,
            doomed: self.rng.random_bool(0.04),
        };
        let mut event = self.blank("order.placed", Some(user));
        self.order_properties(&mut event.properties, &order);
        event.properties.quantity = Some(quantity);
        event.properties.latency_ms = Some(self.latency());
        self.open_orders.push(order);
        event
    }

    fn order_properties(&self, properties: &mut Properties, order: &OpenOrder) {
        properties.order_id = Some(order.order_id.clone());
        properties.symbol = Some(self.markets[order.market].symbol.clone());
        properties.side = Some(order.side);
        properties.order_type = Some(order.order_type);
        properties.price = Some(order.price);
        properties.strategy_id = order.strategy.map(|index| self.strategy_ids[index].clone());
    }

    fn resolve_order(&mut self) -> WireEvent {
        if self.open_orders.is_empty() {
            return self.place_order();
        }
        let index = self.rng.random_range(0..self.open_orders.len());
        let order = self.open_orders.swap_remove(index);
        let user = order.user;
        if order.doomed {
            let mut event = self.blank("order.rejected", Some(user));
            self.order_properties(&mut event.properties, &order);
            event.properties.quantity = Some(order.remaining);
            event.properties.latency_ms = Some(self.latency());
            event.properties.reason = Some(
                ["INSUFFICIENT_BALANCE", "PRICE_FILTER", "RATE_LIMIT"][self.rng.random_range(0..3)],
            );
            return event;
        }
        // Market orders always fill; limit orders are canceled one time in five.
        if order.order_type == "LIMIT" && self.rng.random_bool(0.2) {
            let mut event = self.blank("order.canceled", Some(user));
            self.order_properties(&mut event.properties, &order);
            event.properties.quantity = Some(order.remaining);
            event.properties.latency_ms = Some(self.latency());
            event.properties.reason = Some("USER_CANCELED");
            return event;
        }
        // One fill in four is partial; the rest stays open for later fills.
        let partial = self.rng.random_bool(0.25) && order.remaining > 0.0002;
        let filled = if partial {
            round_quantity(order.remaining * self.rng.random_range(0.2..0.8))
        } else {
            order.remaining
        };
        let fill_price = if order.order_type == "MARKET" {
            // Market orders pay a little slippage.
            let slip = self.rng.random_range(0.0..0.0005);
            round_price(if order.side == "BUY" {
                order.price * (1.0 + slip)
            } else {
                order.price * (1.0 - slip)
            })
        } else {
            order.price
        };
        let is_maker = order.order_type == "LIMIT" && self.rng.random_bool(0.8);
        let fee_rate = if is_maker { 0.0002 } else { 0.0004 };
        let mut event = self.blank("order.filled", Some(user));
        self.order_properties(&mut event.properties, &order);
        let properties = &mut event.properties;
        properties.price = Some(fill_price);
        properties.quantity = Some(filled);
        properties.is_maker = Some(is_maker);
        properties.commission = Some(round_to(fill_price * filled * fee_rate, 6));
        let remaining = round_quantity(order.remaining - filled);
        properties.remaining_quantity = Some(remaining.max(0.0));
        event.properties.latency_ms = Some(self.latency());
        if partial && remaining > 0.0 {
            self.open_orders.push(OpenOrder { remaining, ..order });
        }
        event
    }

    fn signal(&mut self) -> WireEvent {
        let market = self.pick_market();
        let strategy = self
            .active_strategy()
            .unwrap_or_else(|| self.rng.random_range(0..self.strategy_ids.len()));
        let mut event = self.blank("signal.generated", None);
        let mid = self.markets[market].mid;
        let properties = &mut event.properties;
        properties.symbol = Some(self.markets[market].symbol.clone());
        properties.strategy_id = Some(self.strategy_ids[strategy].clone());
        properties.side = Some(if self.rng.random_bool(0.5) {
            "BUY"
        } else {
            "SELL"
        });
        properties.signal = Some(["ENTRY", "EXIT", "REBALANCE"][self.rng.random_range(0..3)]);
        properties.confidence = Some(round_to(self.rng.random_range(0.5..1.0), 3));
        properties.price = Some(round_price(mid));
        event
    }

    fn position(&mut self) -> WireEvent {
        let close = !self.open_positions.is_empty()
            && (self.open_positions.len() >= MAX_OPEN_POSITIONS || self.rng.random_bool(0.5));
        if close {
            let index = self.rng.random_range(0..self.open_positions.len());
            let position = self.open_positions.swap_remove(index);
            let exit = round_price(self.step_price(position.market));
            let direction = if position.side == "BUY" { 1.0 } else { -1.0 };
            let pnl = round_to(
                (exit - position.entry_price) * position.quantity * direction,
                4,
            );
            let mut event = self.blank("position.closed", Some(position.user));
            let properties = &mut event.properties;
            properties.position_id = Some(position.position_id);
            properties.symbol = Some(self.markets[position.market].symbol.clone());
            properties.side = Some(position.side);
            properties.entry_price = Some(position.entry_price);
            properties.price = Some(exit);
            properties.quantity = Some(position.quantity);
            properties.pnl = Some(pnl);
            properties.strategy_id = position
                .strategy
                .map(|index| self.strategy_ids[index].clone());
            return event;
        }
        let user = self.pick_user();
        let market = self.pick_market();
        let entry_price = round_price(self.step_price(market));
        let quantity = round_quantity(self.notional.sample(&mut self.rng) / entry_price);
        let side = if self.rng.random_bool(0.5) {
            "BUY"
        } else {
            "SELL"
        };
        let strategy = self.active_strategy();
        self.next_position += 1;
        let position = OpenPosition {
            position_id: format!("POS-{}-{:010}", self.settings.stream, self.next_position),
            user,
            market,
            side,
            entry_price,
            quantity,
            strategy,
        };
        let mut event = self.blank("position.opened", Some(user));
        let properties = &mut event.properties;
        properties.position_id = Some(position.position_id.clone());
        properties.symbol = Some(self.markets[market].symbol.clone());
        properties.side = Some(side);
        properties.price = Some(entry_price);
        properties.quantity = Some(quantity);
        properties.strategy_id = strategy.map(|index| self.strategy_ids[index].clone());
        self.open_positions.push(position);
        event
    }

    fn strategy_toggle(&mut self) -> WireEvent {
        let index = self.rng.random_range(0..self.strategy_ids.len());
        let was_active = self.strategy_active[index];
        self.strategy_active[index] = !was_active;
        let mut event = self.blank(
            if was_active {
                "strategy.stopped"
            } else {
                "strategy.started"
            },
            None,
        );
        event.properties.strategy_id = Some(self.strategy_ids[index].clone());
        let market = self.pick_market();
        event.properties.symbol = Some(self.markets[market].symbol.clone());
        if was_active {
            event.properties.reason = Some("OPERATOR");
        }
        event
    }

    fn login(&mut self) -> WireEvent {
        let user = self.pick_user();
        self.sessions[user] += 1;
        let mut event = self.blank("user.login", Some(user));
        event.properties.page = Some("/login");
        event
    }

    fn logout(&mut self) -> WireEvent {
        let user = self.pick_user();
        self.blank("user.logout", Some(user))
    }

    fn page_view(&mut self) -> WireEvent {
        let user = self.pick_user();
        let mut event = self.blank("page.view", Some(user));
        event.properties.page = Some(PAGES[self.rng.random_range(0..PAGES.len())]);
        event.properties.latency_ms = Some(round_to(self.latency() * 6.0, 1));
        event
    }

    fn latency(&mut self) -> f64 {
        round_to(self.latency.sample(&mut self.rng), 3)
    }
}

/// The distributions above are built from constants that are valid; this is
/// only here to avoid a panic path the compiler cannot rule out.
fn unreachable_distribution<D>() -> D {
    unreachable!("constant distribution parameters are valid")
}

/// A plausible starting price for well-known symbols, 100 otherwise.
fn base_price(symbol: &str) -> f64 {
    match symbol {
        "BTCUSDT" => 65_000.0,
        "ETHUSDT" => 3_200.0,
        "SOLUSDT" => 150.0,
        "BNBUSDT" => 580.0,
        "XRPUSDT" => 0.6,
        "ADAUSDT" => 0.45,
        "DOGEUSDT" => 0.15,
        "AVAXUSDT" => 35.0,
        _ => 100.0,
    }
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Exchange-like tick sizes: cents above 1, five decimals below.
fn round_price(price: f64) -> f64 {
    if price >= 1.0 {
        round_to(price, 2)
    } else {
        round_to(price, 5)
    }
}

/// Lot size 0.00001, never zero.
fn round_quantity(quantity: f64) -> f64 {
    round_to(quantity, 5).max(0.00001)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn stream(seed: u64, count: usize) -> Vec<String> {
        let mut generator = EventGenerator::new(GeneratorSettings {
            seed,
            ..GeneratorSettings::default()
        });
        (0..count)
            .map(|index| {
                serde_json::to_string(&generator.next_event(1_759_492_800_000 + index as i64))
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn same_seed_same_stream() {
        assert_eq!(stream(7, 500), stream(7, 500));
        assert_ne!(stream(7, 500), stream(8, 500));
    }

    #[test]
    fn order_lifecycles_make_sense() {
        let mut generator = EventGenerator::new(GeneratorSettings::default());
        let mut placed: HashMap<String, f64> = HashMap::new();
        let mut closed: HashSet<String> = HashSet::new();
        let mut types: HashSet<&str> = HashSet::new();
        for index in 0..20_000 {
            let event = generator.next_event(index);
            types.insert(event.event_type);
            let properties = &event.properties;
            match event.event_type {
                "order.placed" => {
                    let id = properties.order_id.clone().unwrap();
                    assert!(properties.price.unwrap() > 0.0);
                    assert!(properties.latency_ms.unwrap() > 0.0);
                    placed.insert(id, properties.quantity.unwrap());
                }
                "order.filled" | "order.canceled" | "order.rejected" => {
                    let id = properties.order_id.clone().unwrap();
                    assert!(!closed.contains(&id), "{id} resolved after it was closed");
                    let remaining = placed.get_mut(&id).expect("resolved order was placed");
                    let quantity = properties.quantity.unwrap();
                    assert!(quantity <= *remaining + 1e-9, "{id} overfilled");
                    *remaining -= quantity;
                    if properties.remaining_quantity.unwrap_or(0.0) <= 0.0 {
                        closed.insert(id);
                    }
                }
                _ => {}
            }
        }
        for expected in [
            "order.placed",
            "order.filled",
            "order.canceled",
            "order.rejected",
            "position.opened",
            "position.closed",
            "signal.generated",
            "market.data.update",
            "user.login",
            "page.view",
        ] {
            assert!(types.contains(expected), "{expected} never generated");
        }
    }

    #[test]
    fn seeded_ids_are_time_ordered_and_repeatable() {
        let settings = GeneratorSettings {
            ids: IdMode::Seeded,
            ..GeneratorSettings::default()
        };
        let mut first = EventGenerator::new(settings.clone());
        let mut second = EventGenerator::new(settings);
        let ids: Vec<Uuid> = (0..100)
            .map(|index| first.next_event(1_000_000 + index * 10).id.unwrap())
            .collect();
        let again: Vec<Uuid> = (0..100)
            .map(|index| second.next_event(1_000_000 + index * 10).id.unwrap())
            .collect();
        assert_eq!(ids, again);
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
