//! Order lifecycle, execution quality and market bars against an independent
//! computation. A few thousand events of realistic order lifecycles (partial
//! fills, cancels after partial fills, rejects, orders left open, fills of
//! orders whose placement never arrives) and market data (quotes with and
//! without a last price, a symbol traded with no market data at all) are
//! shuffled, so fills arrive before their placement and ticks arrive late,
//! sent in chunks, and partly sent again. Every figure of
//! `/api/v1/trading/orders`, `/execution` and `/markets/{symbol}/bars` is
//! then computed here from the raw list by the README's definitions (plain
//! loops, no code shared with the service) and compared for several
//! intervals and ranges.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::exactness::Rng;
use crate::helpers::{TestApp, now_ms, rfc3339, spawn_app, spawn_app_with};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const SYMBOLS: [&str; 3] = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
/// Traded, but no market data ever arrives for it: bars come from fills.
const DARK_SYMBOL: &str = "DARKUSDT";
const STRATEGIES: [&str; 3] = ["grid-1", "momentum", "mm-7"];

struct Order {
    id: String,
    symbol: &'static str,
    side: &'static str,
    strategy: &'static str,
    /// None: the placement never arrives.
    placed_at: Option<i64>,
    quantity: f64,
    latency_ms: f64,
    canceled_at: Option<i64>,
    rejected_at: Option<i64>,
}

struct Fill {
    id: String,
    order: usize,
    at: i64,
    price: f64,
    quantity: f64,
    is_maker: bool,
    commission: f64,
}

struct Tick {
    id: String,
    symbol: &'static str,
    at: i64,
    bid: f64,
    ask: f64,
    price: Option<f64>,
    volume: f64,
}

struct World {
    orders: Vec<Order>,
    fills: Vec<Fill>,
    ticks: Vec<Tick>,
}

fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A number, as a JSON number or (every third time) a numeric string.
fn number(rng: &mut Rng, value: f64) -> Value {
    if rng.random_range(0..3u64) == 0 {
        json!(value.to_string())
    } else {
        json!(value)
    }
}

fn generate(now: i64, span: i64) -> World {
    let mut rng = Rng(0x0007_de75);
    let start = now - span;
    let mut ticks = Vec::new();
    for symbol in SYMBOLS {
        let mut mid = 100.0 + 50.0 * ticks.len() as f64;
        let mut at = start + rng.random_range(0..5_000u64) as i64;
        while at < now {
            mid *= 1.0 + (rng.random_range(0..2_001u64) as f64 - 1_000.0) / 200_000.0;
            let half_spread = 0.01 * (1 + rng.random_range(0..20u64)) as f64;
            let mid_cents = (mid * 100.0).round() / 100.0;
            ticks.push(Tick {
                id: uuid(),
                symbol,
                at,
                bid: mid_cents - half_spread,
                ask: mid_cents + half_spread,
                price: (rng.random_range(0..2u64) == 0).then_some(mid_cents),
                volume: rng.random_range(1..50u64) as f64 / 10.0,
            });
            at += 7_000 + rng.random_range(0..20_000u64) as i64;
        }
    }
    let mut orders = Vec::new();
    let mut fills = Vec::new();
    for index in 0..700 {
        let symbol = if index % 10 == 9 {
            DARK_SYMBOL
        } else {
            SYMBOLS[rng.random_range(0..SYMBOLS.len())]
        };
        let placed = start + rng.random_range(0..(span - 10 * MINUTE) as u64) as i64;
        let quantity = rng.random_range(1..40u64) as f64 / 4.0;
        let outcome = rng.random_range(0..100u64);
        let mut order = Order {
            id: format!("ord-{index}"),
            symbol,
            side: if rng.random_range(0..2u64) == 0 {
                "buy"
            } else {
                "sell"
            },
            strategy: STRATEGIES[rng.random_range(0..STRATEGIES.len())],
            placed_at: (index % 50 != 7).then_some(placed),
            quantity,
            latency_ms: 1.0 + rng.random_range(0..5_000u64) as f64 / 100.0,
            canceled_at: None,
            rejected_at: None,
        };
        // Fill quantities: quarters of the order's quantity.
        let quarters = (quantity * 4.0) as u64;
        let to_fill = match outcome {
            0..40 => quarters,                                      // fully filled
            40..60 => 1 + rng.random_range(0..quarters.max(2) - 1), // partial, canceled
            60..75 => 0,                                            // canceled unfilled
            75..85 => 0,                                            // rejected
            _ => rng.random_range(0..quarters),                     // open, maybe partial
        }
        .min(quarters);
        let mut filled = 0;
        let mut at = placed;
        while filled < to_fill {
            let part = (1 + rng.random_range(0..(to_fill - filled))).min(to_fill - filled);
            filled += part;
            at += 50 + rng.random_range(0..90_000u64) as i64;
            let reference = 100.0 + (index % 7) as f64;
            fills.push(Fill {
                id: uuid(),
                order: index,
                at,
                price: ((reference + (rng.random_range(0..200u64) as f64 - 100.0) / 100.0) * 100.0)
                    .round()
                    / 100.0,
                quantity: part as f64 / 4.0,
                is_maker: rng.random_range(0..3u64) == 0,
                commission: rng.random_range(0..100u64) as f64 / 1_000.0,
            });
        }
        match outcome {
            40..75 => order.canceled_at = Some(at + 1_000 + rng.random_range(0..30_000u64) as i64),
            75..85 => order.rejected_at = Some(placed + rng.random_range(0..500u64) as i64),
            _ => {}
        }
        orders.push(order);
    }
    // Fill prices near the symbol's market, so slippage is realistic.
    for fill in &mut fills {
        let order = &orders[fill.order];
        if let Some(mid) = mid_at(&ticks, order.symbol, fill.at) {
            fill.price = ((mid + (fill.price - 100.0 - (fill.order % 7) as f64) / 10.0) * 100.0)
                .round()
                / 100.0;
        }
    }
    World {
        orders,
        fills,
        ticks,
    }
}

/// The mid of the latest tick of `symbol` at or before `at` (ties: larger
/// id).
fn mid_at(ticks: &[Tick], symbol: &str, at: i64) -> Option<f64> {
    ticks
        .iter()
        .filter(|tick| tick.symbol == symbol && tick.at <= at)
        .max_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)))
        .map(|tick| (tick.bid + tick.ask) / 2.0)
}

fn events_of(world: &World, rng: &mut Rng) -> Vec<Value> {
    let mut events = Vec::new();
    for order in &world.orders {
        if let Some(placed) = order.placed_at {
            events.push(json!({
                "id": uuid(), "event_type": "order.placed", "timestamp": placed,
                "properties": {
                    "order_id": order.id, "symbol": order.symbol,
                    // The sender's casing is not ours to fix.
                    "side": if order.id.ends_with('3') { order.side.to_uppercase() } else { order.side.to_string() },
                    "order_type": "limit", "strategy_id": order.strategy,
                    "quantity": number(rng, order.quantity), "price": 100,
                    "latency_ms": number(rng, order.latency_ms),
                },
            }));
        }
        if let Some(at) = order.canceled_at {
            events.push(
                json!({"id": uuid(), "event_type": "order.canceled", "timestamp": at,
                "properties": {"order_id": order.id, "symbol": order.symbol}}),
            );
        }
        if let Some(at) = order.rejected_at {
            events.push(
                json!({"id": uuid(), "event_type": "order.rejected", "timestamp": at,
                "properties": {"order_id": order.id, "symbol": order.symbol, "reason": "risk"}}),
            );
        }
    }
    for fill in &world.fills {
        let order = &world.orders[fill.order];
        let mut properties = json!({
            "order_id": order.id, "symbol": order.symbol,
            "price": number(rng, fill.price), "quantity": number(rng, fill.quantity),
            "is_maker": fill.is_maker, "commission": fill.commission,
        });
        // Half the fills carry their side; the others take their order's.
        // An order whose placement never arrives has its side on each fill.
        if order.placed_at.is_none() || rng.random_range(0..2u64) == 0 {
            properties["side"] = json!(order.side);
        }
        events.push(
            json!({"id": fill.id, "event_type": "order.filled", "timestamp": fill.at,
            "properties": properties}),
        );
    }
    for tick in &world.ticks {
        let mut properties = json!({
            "symbol": tick.symbol, "bid": number(rng, tick.bid), "ask": number(rng, tick.ask),
            "volume": tick.volume,
        });
        if let Some(price) = tick.price {
            properties["price"] = json!(price);
        }
        events.push(
            json!({"id": tick.id, "event_type": "market.data.update", "timestamp": tick.at,
            "properties": properties}),
        );
    }
    events
}

fn ratio(numerator: f64, denominator: f64) -> Value {
    if denominator > 0.0 {
        json!(numerator / denominator)
    } else {
        Value::Null
    }
}

fn distribution(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return json!({"count": 0, "mean": null, "p50": null, "p95": null, "p99": null});
    }
    values.sort_by(f64::total_cmp);
    // The rank the service's sketches answer for (0-based ⌊q·(n − 1)⌋),
    // compared within their 1 % relative error (see assert_close).
    let rank = |q: f64| values[(q * (values.len() - 1) as f64) as usize];
    json!({
        "count": values.len(),
        "mean": values.iter().sum::<f64>() / values.len() as f64,
        "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99),
    })
}

fn order_fills(world: &World, order: usize) -> impl Iterator<Item = &Fill> {
    world.fills.iter().filter(move |fill| fill.order == order)
}

fn expected_orders(world: &World, selected: &[usize]) -> Value {
    let mut placed = 0;
    let (mut full, mut partial, mut canceled, mut rejected, mut open) = (0, 0, 0, 0, 0);
    let (mut ordered, mut filled_total, mut capped, mut notional, mut commission) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut fills, mut maker) = (0, 0);
    let (mut first, mut complete, mut latency) = (Vec::new(), Vec::new(), Vec::new());
    for &index in selected {
        let order = &world.orders[index];
        let placed_at = order.placed_at.unwrap();
        let own: Vec<&Fill> = order_fills(world, index).collect();
        let filled: f64 = own.iter().map(|fill| fill.quantity).sum();
        let is_full = filled >= order.quantity;
        placed += 1;
        if is_full {
            full += 1;
        } else if filled > 0.0 {
            partial += 1;
        }
        canceled += usize::from(order.canceled_at.is_some());
        rejected += usize::from(order.rejected_at.is_some());
        open += usize::from(!is_full && order.canceled_at.is_none() && order.rejected_at.is_none());
        ordered += order.quantity;
        filled_total += filled;
        capped += filled.min(order.quantity);
        notional += own
            .iter()
            .map(|fill| fill.price * fill.quantity)
            .sum::<f64>();
        commission += own.iter().map(|fill| fill.commission).sum::<f64>();
        fills += own.len();
        maker += own.iter().filter(|fill| fill.is_maker).count();
        if let Some(earliest) = own.iter().map(|fill| fill.at).min() {
            first.push((earliest - placed_at) as f64);
        }
        if is_full {
            complete.push((own.iter().map(|fill| fill.at).max().unwrap() - placed_at) as f64);
        }
        latency.push(order.latency_ms);
    }
    let placed_f = placed as f64;
    json!({
        "orders_placed": placed, "orders_filled": full, "orders_partially_filled": partial,
        "orders_canceled": canceled, "orders_rejected": rejected, "orders_open": open,
        "fill_rate": ratio(full as f64, placed_f),
        "fill_rate_by_quantity": ratio(capped, ordered),
        "cancel_rate": ratio(canceled as f64, placed_f),
        "reject_rate": ratio(rejected as f64, placed_f),
        "quantity_ordered": ordered, "quantity_filled": filled_total,
        "filled_notional": notional, "vwap": ratio(notional, filled_total),
        "fills": fills, "maker_fills": maker, "maker_ratio": ratio(maker as f64, fills as f64),
        "commission": commission,
        "time_to_first_fill_ms": distribution(first),
        "time_to_full_fill_ms": distribution(complete),
        "placement_latency_ms": distribution(latency),
    })
}

fn expected_execution(world: &World, selected: &[usize]) -> Value {
    let (mut quantity, mut notional, mut commission) = (0.0, 0.0, 0.0);
    let mut maker = 0;
    let (mut slippage, mut weighted, mut weight) = (Vec::new(), 0.0, 0.0);
    for &index in selected {
        let fill = &world.fills[index];
        let order = &world.orders[fill.order];
        quantity += fill.quantity;
        notional += fill.price * fill.quantity;
        commission += fill.commission;
        maker += usize::from(fill.is_maker);
        if let Some(mid) = mid_at(&world.ticks, order.symbol, fill.at) {
            let sign = if order.side == "buy" { 1.0 } else { -1.0 };
            let bps = sign * (fill.price - mid) / mid * 10_000.0;
            slippage.push(bps);
            weighted += bps * fill.price * fill.quantity;
            weight += fill.price * fill.quantity;
        }
    }
    json!({
        "fills": selected.len(), "quantity": quantity, "notional": notional,
        "vwap": ratio(notional, quantity), "maker_fills": maker,
        "maker_ratio": ratio(maker as f64, selected.len() as f64), "commission": commission,
        "slippage_bps": distribution(slippage),
        "slippage_bps_notional_weighted": ratio(weighted, weight),
    })
}

/// Equal, allowing for the order of floating-point additions.
fn assert_close(actual: &Value, expected: &Value, path: &str) {
    match (actual, expected) {
        (Value::Object(got), Value::Object(want)) => {
            for (key, value) in want {
                let got = got
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} missing"));
                assert_close(got, value, &format!("{path}.{key}"));
            }
        }
        (Value::Number(_), Value::Number(_)) => {
            let (a, e) = (actual.as_f64().unwrap(), expected.as_f64().unwrap());
            let percentile = [".p50", ".p95", ".p99"]
                .iter()
                .any(|suffix| path.ends_with(suffix));
            let tolerance = if percentile {
                // DDSketch: 1 % relative error.
                0.01 * e.abs() + 1e-9
            } else {
                1e-9 * e.abs().max(1.0)
            };
            assert!((a - e).abs() <= tolerance, "{path}: got {a}, expected {e}");
        }
        _ => assert_eq!(actual, expected, "{path}"),
    }
}

/// Groups `items` by key, each group's expected figures by `figures`.
fn grouped(
    items: &[usize],
    key: impl Fn(usize) -> Option<String>,
    figures: impl Fn(&[usize]) -> Value,
) -> BTreeMap<String, Value> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &item in items {
        if let Some(key) = key(item) {
            groups.entry(key).or_default().push(item);
        }
    }
    groups
        .into_iter()
        .map(|(key, members)| (key, figures(&members)))
        .collect()
}

fn assert_groups(actual: &Value, expected: &BTreeMap<String, Value>, path: &str) {
    let actual: BTreeMap<String, &Value> = actual
        .as_array()
        .unwrap_or_else(|| panic!("{path} is not an array"))
        .iter()
        .map(|group| (group["key"].as_str().unwrap().to_string(), group))
        .collect();
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{path} keys"
    );
    for (key, want) in expected {
        assert_close(actual[key], want, &format!("{path}[{key}]"));
    }
}

/// Checks a report's summary, series and breakdowns for `selected` items
/// stamped at `at(item)`.
#[allow(clippy::too_many_arguments)]
fn assert_report(
    report: &Value,
    selected: &[usize],
    interval: i64,
    at: impl Fn(usize) -> i64,
    symbol: impl Fn(usize) -> String,
    strategy: impl Fn(usize) -> Option<String>,
    side: impl Fn(usize) -> String,
    figures: impl Fn(&[usize]) -> Value,
    what: &str,
) {
    assert_close(
        &report["summary"],
        &figures(selected),
        &format!("{what}.summary"),
    );
    let series: BTreeMap<String, Value> = grouped(
        selected,
        |item| Some(rfc3339(at(item).div_euclid(interval) * interval)),
        &figures,
    );
    let actual: BTreeMap<String, Value> = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bucket| {
            (
                bucket["timestamp"].as_str().unwrap().to_string(),
                bucket.clone(),
            )
        })
        .collect();
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        series.keys().collect::<Vec<_>>(),
        "{what}.series buckets"
    );
    for (bucket, want) in &series {
        assert_close(&actual[bucket], want, &format!("{what}.series[{bucket}]"));
    }
    assert_groups(
        &report["by_symbol"],
        &grouped(selected, |i| Some(symbol(i)), &figures),
        &format!("{what}.by_symbol"),
    );
    assert_groups(
        &report["by_strategy"],
        &grouped(selected, &strategy, &figures),
        &format!("{what}.by_strategy"),
    );
    assert_groups(
        &report["by_side"],
        &grouped(selected, |i| Some(side(i)), &figures),
        &format!("{what}.by_side"),
    );
    assert_groups(
        &report["by_symbol_side"],
        &grouped(
            selected,
            |i| Some(format!("{}/{}", symbol(i), side(i))),
            &figures,
        ),
        &format!("{what}.by_symbol_side"),
    );
}

/// The expected bars of `symbol` over the minutes in `[start, end)`.
fn expected_bars(world: &World, symbol: &str, start: i64, end: i64, interval: i64) -> Vec<Value> {
    let first_minute = start.div_euclid(MINUTE) * MINUTE;
    // Per minute: (at, id, price, volume, spread) of ticks, else fills.
    type Point = (i64, String, f64, f64, Option<f64>);
    let mut ticks: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
    let mut fills: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
    for tick in world.ticks.iter().filter(|tick| tick.symbol == symbol) {
        let minute = tick.at.div_euclid(MINUTE) * MINUTE;
        let price = tick.price.unwrap_or((tick.bid + tick.ask) / 2.0);
        ticks.entry(minute).or_default().push((
            tick.at,
            tick.id.clone(),
            price,
            tick.volume,
            Some(tick.ask - tick.bid),
        ));
    }
    for fill in world
        .fills
        .iter()
        .filter(|fill| world.orders[fill.order].symbol == symbol)
    {
        let minute = fill.at.div_euclid(MINUTE) * MINUTE;
        fills.entry(minute).or_default().push((
            fill.at,
            fill.id.clone(),
            fill.price,
            fill.quantity,
            None,
        ));
    }
    let minutes: Vec<i64> = ticks
        .keys()
        .chain(fills.keys())
        .copied()
        .filter(|minute| *minute >= first_minute && *minute < end)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut bars: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for minute in minutes {
        bars.entry(minute.div_euclid(interval) * interval)
            .or_default()
            .push(minute);
    }
    bars.into_iter()
        .map(|(bar_start, minutes)| {
            let mut points: Vec<&Point> = Vec::new();
            let mut closes = Vec::new();
            let (mut market_minutes, mut trades) = (0, 0);
            for minute in &minutes {
                let chosen = match ticks.get(minute) {
                    Some(minute_ticks) => {
                        market_minutes += 1;
                        minute_ticks
                    }
                    None => &fills[minute],
                };
                trades += fills.get(minute).map_or(0, Vec::len);
                let last = chosen.iter().max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1))).unwrap();
                closes.push(last.2);
                points.extend(chosen.iter());
            }
            let open = points.iter().min_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1))).unwrap().2;
            let close = points.iter().max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1))).unwrap().2;
            let spreads: Vec<f64> = points.iter().filter_map(|point| point.4).collect();
            let returns: Vec<f64> = closes.windows(2).map(|pair| (pair[1] / pair[0]).ln()).collect();
            let volatility = if returns.len() >= 2 {
                let mean = returns.iter().sum::<f64>() / returns.len() as f64;
                json!((returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (returns.len() - 1) as f64).sqrt())
            } else {
                Value::Null
            };
            json!({
                "timestamp": rfc3339(bar_start),
                "open": open, "close": close,
                "high": points.iter().map(|p| p.2).fold(f64::MIN, f64::max),
                "low": points.iter().map(|p| p.2).fold(f64::MAX, f64::min),
                "volume": points.iter().map(|p| p.3).sum::<f64>(),
                "updates": points.len(), "trades": trades,
                "average_spread": if spreads.is_empty() { Value::Null } else { json!(spreads.iter().sum::<f64>() / spreads.len() as f64) },
                "volatility": volatility,
                "source": if market_minutes == minutes.len() { "market" } else if market_minutes == 0 { "fill" } else { "mixed" },
            })
        })
        .collect()
}

/// Whether [`send`] waits for the summaries midway (the trading tables are
/// on), so that later events change minutes already summarised.
#[derive(Clone, Copy, PartialEq)]
enum Midway {
    Settle,
    GoOn,
}

async fn send(app: &TestApp, world: &World, midway: Midway) {
    let mut rng = Rng(0x5e4d);
    let mut events = events_of(world, &mut rng);
    for index in (1..events.len()).rev() {
        let other = rng.random_range(0..index + 1);
        events.swap(index, other);
    }
    let chunks: Vec<&[Value]> = events.chunks(400).collect();
    for (index, chunk) in chunks.iter().enumerate() {
        if midway == Midway::Settle && index == chunks.len() * 3 / 5 {
            settle(app).await;
        }
        let (status, body) = app.post_json("/api/v1/events/batch", &json!(chunk)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"], json!([]), "{body}");
    }
    // Redelivery: a fifth of everything again, in another order.
    let resent: Vec<Value> = events.iter().step_by(5).cloned().collect();
    let (status, again) = app.post_json("/api/v1/events/batch", &json!(resent)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["accepted"], &again["duplicates"]),
        (&json!(0), &json!(resent.len())),
        "{again}"
    );
}

/// Every report, for several intervals and ranges, against the independent
/// computation.
async fn compare_reports(app: &TestApp, world: &World, now: i64, span: i64) {
    let ranges = [
        (now - span - MINUTE, now),
        (now - 2 * HOUR + 17_123, now - HOUR / 2 - 23_456),
    ];
    for (interval_name, interval) in [("1m", MINUTE), ("5m", 5 * MINUTE), ("1h", HOUR)] {
        for (start, end) in ranges {
            // The wire range includes end_time.
            let end_exclusive = end + 1;
            let what = format!("{interval_name} {}..{}", rfc3339(start), rfc3339(end));
            let query = vec![
                ("start_time", rfc3339(start)),
                ("end_time", rfc3339(end)),
                ("interval", interval_name.to_string()),
            ];

            let (status, report) = app.get_query("/api/v1/trading/orders", &query).await;
            assert_eq!(status, 200, "{report}");
            let placed: Vec<usize> = (0..world.orders.len())
                .filter(|&i| {
                    world.orders[i]
                        .placed_at
                        .is_some_and(|at| at >= start && at < end_exclusive)
                })
                .collect();
            assert!(placed.len() > 100, "{what}: too few orders to mean much");
            assert_report(
                &report,
                &placed,
                interval,
                |i| world.orders[i].placed_at.unwrap(),
                |i| world.orders[i].symbol.to_string(),
                |i| Some(world.orders[i].strategy.to_string()),
                |i| world.orders[i].side.to_string(),
                |members| expected_orders(world, members),
                &format!("orders {what}"),
            );

            let (status, report) = app.get_query("/api/v1/trading/execution", &query).await;
            assert_eq!(status, 200, "{report}");
            let filled: Vec<usize> = (0..world.fills.len())
                .filter(|&i| world.fills[i].at >= start && world.fills[i].at < end_exclusive)
                .collect();
            let order_of = |i: usize| &world.orders[world.fills[i].order];
            assert_report(
                &report,
                &filled,
                interval,
                |i| world.fills[i].at,
                |i| order_of(i).symbol.to_string(),
                // A fill takes its strategy from its order's placement.
                |i| {
                    order_of(i)
                        .placed_at
                        .map(|_| order_of(i).strategy.to_string())
                },
                |i| order_of(i).side.to_string(),
                |members| expected_execution(world, members),
                &format!("execution {what}"),
            );

            for symbol in SYMBOLS.iter().chain([&DARK_SYMBOL]) {
                let (status, body) = app
                    .get_query(&format!("/api/v1/trading/markets/{symbol}/bars"), &query)
                    .await;
                assert_eq!(status, 200, "{body}");
                let want = expected_bars(world, symbol, start, end_exclusive, interval);
                let got = body["bars"].as_array().unwrap();
                assert_eq!(got.len(), want.len(), "bars {symbol} {what}: {body}");
                for (index, (got, want)) in got.iter().zip(&want).enumerate() {
                    assert_close(got, want, &format!("bars {symbol} {what} [{index}]"));
                }
            }
        }
    }
}

/// Waits until the trading summary refresher has run a whole pass that
/// started after this call and found nothing to do.
async fn settle(app: &TestApp) {
    let progress = || async {
        let (status, body) = app.get("/api/v1/internal/ingestion-metrics").await;
        assert_eq!(status, 200, "{body}");
        let summaries = &body["trading_summaries"];
        (
            summaries["passes"].as_u64().unwrap(),
            summaries["marks"].as_i64().unwrap(),
        )
    };
    let (first, _) = progress().await;
    for _ in 0..600 {
        let (passes, marks) = progress().await;
        if passes >= first + 2 && marks == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the trading summaries never caught up: {:?}",
        progress().await
    );
}

#[tokio::test]
async fn order_execution_and_bar_figures_equal_an_independent_computation() {
    let app = spawn_app().await;
    let now = now_ms();
    let span = 3 * HOUR;
    let world = generate(now, span);
    send(&app, &world, Midway::Settle).await;

    // Some minutes summarised, the rest marked: summaries, raw rows and
    // marks together.
    compare_reports(&app, &world, now, span).await;
    // Everything summarised.
    settle(&app).await;
    compare_reports(&app, &world, now, span).await;

    // The same figures under /api/v1/metrics names, filters included.
    let range = [
        ("start_time", rfc3339(now - span - MINUTE)),
        ("end_time", rfc3339(now)),
        ("interval", "5m".to_string()),
        ("strategy_id", "momentum".to_string()),
    ];
    let (_, report) = app.get_query("/api/v1/trading/orders", &range).await;
    let (_, execution) = app.get_query("/api/v1/trading/execution", &range).await;
    for (metric, aggregation, source, pick) in [
        ("orders.fill_rate", None, &report, "/fill_rate"),
        ("orders.placed", None, &report, "/orders_placed"),
        (
            "orders.time_to_fill_ms",
            Some("p95"),
            &report,
            "/time_to_full_fill_ms/p95",
        ),
        (
            "orders.placement_latency_ms",
            None,
            &report,
            "/placement_latency_ms/mean",
        ),
        (
            "execution.slippage_bps",
            None,
            &execution,
            "/slippage_bps_notional_weighted",
        ),
        (
            "execution.slippage_bps",
            Some("p50"),
            &execution,
            "/slippage_bps/p50",
        ),
        ("execution.vwap", None, &execution, "/vwap"),
    ] {
        let mut query = range.to_vec();
        query.push(("metric_name", metric.to_string()));
        if let Some(aggregation) = aggregation {
            query.push(("aggregation", aggregation.to_string()));
        }
        let (status, body) = app.get_query("/api/v1/metrics", &query).await;
        assert_eq!(status, 200, "{metric}: {body}");
        let points = body["result"]["data_points"].as_array().unwrap();
        let buckets: Vec<&Value> = source["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|bucket| metric.starts_with("execution") || bucket["orders_placed"] != 0)
            .collect();
        assert_eq!(points.len(), buckets.len(), "{metric}: {body}");
        for (point, bucket) in points.iter().zip(buckets) {
            assert_eq!(point["timestamp"], bucket["timestamp"], "{metric}");
            let want = bucket.pointer(pick).unwrap().as_f64().unwrap_or(0.0);
            assert_close(
                &point["value"],
                &json!(want),
                &format!("{metric} {}", point["timestamp"]),
            );
        }
    }
    let mut query = range.to_vec();
    query.push(("metric_name", "market.ohlcv.ETHUSDT".to_string()));
    let (status, body) = app.get_query("/api/v1/metrics", &query).await;
    assert_eq!(status, 200, "{body}");
    let want = expected_bars(&world, "ETHUSDT", now - span - MINUTE, now + 1, 5 * MINUTE);
    let points = body["result"]["data_points"].as_array().unwrap();
    assert_eq!(points.len(), want.len());
    for (point, bar) in points.iter().zip(&want) {
        assert_close(&point["value"], &bar["close"], "ohlcv close");
        for field in [
            "open",
            "high",
            "low",
            "close",
            "volume",
            "trades",
            "volatility",
        ] {
            assert_close(&point["dimensions"][field], &bar[field], "ohlcv dimensions");
        }
    }
    let mut query = range.to_vec();
    query.push(("metric_name", "orders.fill_rate".to_string()));
    query.push(("aggregation", "p99".to_string()));
    let (status, body) = app.get_query("/api/v1/metrics", &query).await;
    assert_eq!(
        (status, &body["details"]["field"]),
        (400, &json!("aggregation")),
        "{body}"
    );

    // The dashboard carries the trading figures of the last five minutes.
    let (status, dashboard) = app.get("/api/v1/dashboard/metrics").await;
    assert_eq!(status, 200, "{dashboard}");
    for key in [
        "orders_fill_rate_5m",
        "orders_time_to_fill_p50_ms_5m",
        "execution_slippage_bps_5m",
    ] {
        assert!(
            dashboard["custom_metrics"].get(key).is_some(),
            "{key}: {dashboard}"
        );
    }
    // They are refreshed (in the background, at most once a second): a new
    // order shows within a few seconds.
    let before = dashboard["custom_metrics"]["orders_placed_5m"]
        .as_u64()
        .unwrap();
    let (status, body) = app
        .post_json(
            "/api/v1/events",
            &json!({"event_type": "order.placed", "timestamp": now_ms(),
                    "properties": {"order_id": "fresh", "symbol": "BTCUSDT", "side": "buy", "quantity": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut seen = before;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (_, dashboard) = app.get("/api/v1/dashboard/metrics").await;
        seen = dashboard["custom_metrics"]["orders_placed_5m"]
            .as_u64()
            .unwrap();
        if seen == before + 1 {
            break;
        }
    }
    assert_eq!(
        seen,
        before + 1,
        "the new order never reached the dashboard"
    );

    // Filters select the same orders as the breakdowns.
    let query = vec![
        ("start_time", rfc3339(now - span - MINUTE)),
        ("end_time", rfc3339(now)),
        ("interval", "1h".to_string()),
        ("symbol", "ETHUSDT".to_string()),
        ("side", "SELL".to_string()),
    ];
    let (status, report) = app.get_query("/api/v1/trading/orders", &query).await;
    assert_eq!(status, 200, "{report}");
    let selected: Vec<usize> = (0..world.orders.len())
        .filter(|&i| {
            let order = &world.orders[i];
            order.placed_at.is_some() && order.symbol == "ETHUSDT" && order.side == "sell"
        })
        .collect();
    assert_close(
        &report["summary"],
        &expected_orders(&world, &selected),
        "filtered summary",
    );
    assert_eq!(report["filters"]["side"], "sell");
}

#[tokio::test]
async fn trading_parameters_are_checked_and_the_switch_turns_the_tables_off() {
    let app = spawn_app().await;
    for (path, query, field) in [
        (
            "/api/v1/trading/orders",
            vec![("side", "long".to_string())],
            "side",
        ),
        (
            "/api/v1/trading/execution",
            vec![("interval", "2m".to_string())],
            "interval",
        ),
        (
            "/api/v1/trading/orders",
            vec![
                ("interval", "1m".to_string()),
                ("start_time", "2020-01-01T00:00:00Z".to_string()),
                ("end_time", "2026-01-01T00:00:00Z".to_string()),
            ],
            "interval",
        ),
    ] {
        let (status, body) = app.get_query(path, &query).await;
        assert_eq!(status, 400, "{path} {query:?}: {body}");
        assert_eq!(body["details"]["field"], field, "{body}");
    }
    let (status, body) = app
        .get_query(
            "/api/v1/trading/execution",
            &[("start_time", "yesterday".to_string())],
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let off = spawn_app_with(&[("ANALYTICS_ANALYTICS__AGGREGATION__TRADING", "false")]).await;
    let now = now_ms();
    let (status, body) = off
        .post_json(
            "/api/v1/events/batch",
            &json!([{"event_type": "order.placed", "timestamp": now,
                     "properties": {"order_id": "x", "symbol": "BTCUSDT", "quantity": 1}}]),
        )
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let (status, body) = off.get("/api/v1/trading/orders").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("analytics.aggregation.trading"),
        "{body}"
    );
}

#[tokio::test]
async fn rebuild_fills_the_trading_tables_from_events_stored_without_them() {
    let mut off = spawn_app_with(&[("ANALYTICS_ANALYTICS__AGGREGATION__TRADING", "false")]).await;
    let now = now_ms();
    let span = 2 * HOUR;
    let world = generate(now, span);
    send(&off, &world, Midway::GoOn).await;
    let database = off.directory.path().join("analytics.db");
    off.stop().await.unwrap();

    let rebuild = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_analytics"))
            .args(["trading", "rebuild"])
            .envs(crate::helpers::store_env_for(&database))
            .env("ANALYTICS_LOGGING__LEVEL", "warn")
            .env_remove("ANALYTICS_CONFIG")
            .output()
            .expect("run analytics trading rebuild");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON report on stdout")
    };
    let first = rebuild();
    assert_eq!(first["fills"], world.fills.len(), "{first}");
    assert_eq!(first["quotes"], world.ticks.len(), "{first}");
    // Again: it starts over, so nothing is counted twice. `orders` and
    // `bar_updates` count upserts per one-hour piece, and the pieces start
    // at each run's own now - retention: an order or a minute bar whose
    // events straddle a piece boundary counts once per piece, so those two
    // may differ by a few between runs. The tables' content is checked
    // through the reports below.
    let second = rebuild();
    for field in ["events_read", "fills", "quotes"] {
        assert_eq!(
            second[field], first[field],
            "{field}: {first} then {second}"
        );
    }

    let database_text = database.display().to_string();
    let app = spawn_app_with(&[("ANALYTICS_DATABASE__PATH", database_text.as_str())]).await;
    let query = vec![
        ("start_time", rfc3339(now - span - MINUTE)),
        ("end_time", rfc3339(now)),
        ("interval", "1h".to_string()),
    ];
    let (status, report) = app.get_query("/api/v1/trading/orders", &query).await;
    assert_eq!(status, 200, "{report}");
    let placed: Vec<usize> = (0..world.orders.len())
        .filter(|&i| world.orders[i].placed_at.is_some())
        .collect();
    assert_close(
        &report["summary"],
        &expected_orders(&world, &placed),
        "rebuilt orders",
    );
    let (_, execution) = app.get_query("/api/v1/trading/execution", &query).await;
    let all_fills: Vec<usize> = (0..world.fills.len()).collect();
    assert_close(
        &execution["summary"],
        &expected_execution(&world, &all_fills),
        "rebuilt execution",
    );
    let (_, body) = app
        .get_query("/api/v1/trading/markets/BTCUSDT/bars", &query)
        .await;
    let want = expected_bars(&world, "BTCUSDT", now - span - MINUTE, now + 1, HOUR);
    assert_eq!(body["bars"].as_array().unwrap().len(), want.len(), "{body}");
    for (got, want) in body["bars"].as_array().unwrap().iter().zip(&want) {
        assert_close(got, want, "rebuilt bars");
    }
}
