//! The trading figures under `GET /api/v1/metrics` metric names, as data
//! points of the same shape as every other metric's:
//!
//! | name | `value` (default) | also |
//! |---|---|---|
//! | `orders.placed` | orders placed | — |
//! | `orders.fill_rate` | fully filled ÷ placed | dimensions: the order counts, `fill_rate_by_quantity` |
//! | `orders.cancel_rate`, `orders.reject_rate` | canceled (rejected) ÷ placed | dimensions: the order counts |
//! | `orders.time_to_first_fill_ms`, `orders.time_to_fill_ms`, `orders.placement_latency_ms` | mean | `count`, `p50`, `p95`, `p99`; `aggregation=` picks one |
//! | `execution.slippage_bps` | notional-weighted mean | `count`, `p50`, `p95`, `p99`; `aggregation=` |
//! | `execution.vwap` | VWAP | `count` fills, `sum` notional, dimensions `quantity` |
//! | `market.ohlcv.<symbol>` | close | `min` low, `max` high, `count` updates, dimensions OHLCV |
//!
//! Order figures are by placement time and execution figures by fill time
//! (see [`super::report`]); `symbol`, `strategy_id` and `side` filter both.

use serde_json::{Map, Value, json};

use super::report::{Bar, Bucket, Distribution, ExecutionFigures, OrderFigures};
use crate::query::series::DataPoint;

/// A trading metric name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradingMetric {
    Order(OrderMetric),
    Execution(ExecutionMetric),
    /// `market.ohlcv.<symbol>`
    Bars(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderMetric {
    Placed,
    FillRate,
    CancelRate,
    RejectRate,
    TimeToFirstFill,
    TimeToFill,
    PlacementLatency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionMetric {
    SlippageBps,
    Vwap,
}

/// Which statistic of a distribution `value` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    Default,
    Avg,
    Count,
    P50,
    P95,
    P99,
}

impl Statistic {
    /// The `aggregation` parameter, for the metrics that take one.
    pub fn parse(text: &str) -> Option<Statistic> {
        Some(match text {
            "avg" | "mean" => Statistic::Avg,
            "count" => Statistic::Count,
            "p50" => Statistic::P50,
            "p95" => Statistic::P95,
            "p99" => Statistic::P99,
            _ => return None,
        })
    }
}

impl TradingMetric {
    pub fn parse(name: &str) -> Option<TradingMetric> {
        if let Some(symbol) = name.strip_prefix("market.ohlcv.")
            && !symbol.is_empty()
        {
            return Some(TradingMetric::Bars(symbol.to_owned()));
        }
        Some(match name {
            "orders.placed" => TradingMetric::Order(OrderMetric::Placed),
            "orders.fill_rate" => TradingMetric::Order(OrderMetric::FillRate),
            "orders.cancel_rate" => TradingMetric::Order(OrderMetric::CancelRate),
            "orders.reject_rate" => TradingMetric::Order(OrderMetric::RejectRate),
            "orders.time_to_first_fill_ms" => TradingMetric::Order(OrderMetric::TimeToFirstFill),
            "orders.time_to_fill_ms" => TradingMetric::Order(OrderMetric::TimeToFill),
            "orders.placement_latency_ms" => TradingMetric::Order(OrderMetric::PlacementLatency),
            "execution.slippage_bps" => TradingMetric::Execution(ExecutionMetric::SlippageBps),
            "execution.vwap" => TradingMetric::Execution(ExecutionMetric::Vwap),
            _ => return None,
        })
    }

    /// Whether `aggregation=` may pick a statistic of this metric.
    pub fn takes_statistic(&self) -> bool {
        matches!(
            self,
            TradingMetric::Order(
                OrderMetric::TimeToFirstFill
                    | OrderMetric::TimeToFill
                    | OrderMetric::PlacementLatency
            ) | TradingMetric::Execution(ExecutionMetric::SlippageBps)
        )
    }
}

fn point(timestamp: &str, value: f64, count: u64) -> DataPoint {
    DataPoint::new(timestamp.to_owned(), value, count)
}

impl Statistic {
    /// The `aggregation` a response reports; `default` names the default.
    fn label(self, default: &'static str) -> &'static str {
        match self {
            Statistic::Default => default,
            Statistic::Avg => "avg",
            Statistic::Count => "count",
            Statistic::P50 => "p50",
            Statistic::P95 => "p95",
            Statistic::P99 => "p99",
        }
    }
}

/// A distribution's data point; the default statistic is `default`.
fn distribution_point(
    timestamp: &str,
    distribution: &Distribution,
    statistic: Statistic,
    default: Option<f64>,
) -> DataPoint {
    let value = match statistic {
        Statistic::Default => default,
        Statistic::Avg => distribution.mean,
        Statistic::Count => Some(distribution.count as f64),
        Statistic::P50 => distribution.p50,
        Statistic::P95 => distribution.p95,
        Statistic::P99 => distribution.p99,
    };
    let mut data_point = point(timestamp, value.unwrap_or(0.0), distribution.count);
    data_point.p50 = distribution.p50;
    data_point.p95 = distribution.p95;
    data_point.p99 = distribution.p99;
    data_point
}

fn order_counts(figures: &OrderFigures) -> Map<String, Value> {
    let mut dimensions = Map::new();
    for (name, value) in [
        ("orders_placed", figures.orders_placed),
        ("orders_filled", figures.orders_filled),
        ("orders_partially_filled", figures.orders_partially_filled),
        ("orders_canceled", figures.orders_canceled),
        ("orders_rejected", figures.orders_rejected),
        ("orders_open", figures.orders_open),
    ] {
        dimensions.insert(name.to_owned(), json!(value));
    }
    dimensions
}

/// The data points of an order metric (buckets with placed orders only),
/// and the name of the statistic `value` carries.
pub fn order_points(
    metric: OrderMetric,
    series: &[Bucket<OrderFigures>],
    statistic: Statistic,
) -> (Vec<DataPoint>, &'static str) {
    let name = match metric {
        OrderMetric::Placed => "count",
        OrderMetric::FillRate | OrderMetric::CancelRate | OrderMetric::RejectRate => "rate",
        _ => statistic.label("avg"),
    };
    let points = series
        .iter()
        .filter(|bucket| bucket.figures.orders_placed > 0)
        .map(|bucket| {
            let figures = &bucket.figures;
            let placed = figures.orders_placed;
            let rate = |value: Option<f64>| {
                let mut data_point = point(&bucket.timestamp, value.unwrap_or(0.0), placed);
                data_point.dimensions = order_counts(figures);
                data_point
            };
            match metric {
                OrderMetric::Placed => point(&bucket.timestamp, placed as f64, placed),
                OrderMetric::FillRate => {
                    let mut data_point = rate(figures.fill_rate);
                    data_point.dimensions.insert(
                        "fill_rate_by_quantity".into(),
                        json!(figures.fill_rate_by_quantity),
                    );
                    data_point
                }
                OrderMetric::CancelRate => rate(figures.cancel_rate),
                OrderMetric::RejectRate => rate(figures.reject_rate),
                OrderMetric::TimeToFirstFill
                | OrderMetric::TimeToFill
                | OrderMetric::PlacementLatency => {
                    let distribution = match metric {
                        OrderMetric::TimeToFirstFill => &figures.time_to_first_fill_ms,
                        OrderMetric::TimeToFill => &figures.time_to_full_fill_ms,
                        _ => &figures.placement_latency_ms,
                    };
                    distribution_point(
                        &bucket.timestamp,
                        distribution,
                        statistic,
                        distribution.mean,
                    )
                }
            }
        })
        .collect();
    (points, name)
}

/// The data points of an execution metric (buckets with fills only).
pub fn execution_points(
    metric: ExecutionMetric,
    series: &[Bucket<ExecutionFigures>],
    statistic: Statistic,
) -> (Vec<DataPoint>, &'static str) {
    let name = match metric {
        ExecutionMetric::SlippageBps => statistic.label("notional_weighted_mean"),
        ExecutionMetric::Vwap => "vwap",
    };
    let points = series
        .iter()
        .map(|bucket| {
            let figures = &bucket.figures;
            match metric {
                ExecutionMetric::SlippageBps => distribution_point(
                    &bucket.timestamp,
                    &figures.slippage_bps,
                    statistic,
                    figures.slippage_bps_notional_weighted,
                ),
                ExecutionMetric::Vwap => {
                    let mut data_point = point(
                        &bucket.timestamp,
                        figures.vwap.unwrap_or(0.0),
                        figures.fills,
                    );
                    data_point.sum = Some(figures.notional);
                    data_point
                        .dimensions
                        .insert("quantity".into(), json!(figures.quantity));
                    data_point
                }
            }
        })
        .collect();
    (points, name)
}

/// The data points of `market.ohlcv.<symbol>`: `value` is the close.
pub fn bar_points(bars: &[Bar]) -> Vec<DataPoint> {
    bars.iter()
        .map(|bar| {
            let mut data_point = point(&bar.timestamp, bar.close, bar.updates.max(0) as u64);
            data_point.min = Some(bar.low);
            data_point.max = Some(bar.high);
            data_point.dimensions = match json!({
                "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close,
                "volume": bar.volume, "trades": bar.trades,
                "average_spread": bar.average_spread, "volatility": bar.volatility,
                "source": bar.source,
            }) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            data_point
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_trading_names_only() {
        assert_eq!(
            TradingMetric::parse("orders.fill_rate"),
            Some(TradingMetric::Order(OrderMetric::FillRate))
        );
        assert_eq!(
            TradingMetric::parse("market.ohlcv.BTCUSDT"),
            Some(TradingMetric::Bars("BTCUSDT".into()))
        );
        assert_eq!(TradingMetric::parse("market.ohlcv."), None);
        // The rollup metric of the same family stays the rollup's.
        assert_eq!(TradingMetric::parse("orders.latency_ms"), None);
        assert!(
            TradingMetric::parse("execution.slippage_bps")
                .unwrap()
                .takes_statistic()
        );
        assert!(
            !TradingMetric::parse("orders.fill_rate")
                .unwrap()
                .takes_statistic()
        );
    }
}
