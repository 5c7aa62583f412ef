//! The rollup metrics an event feeds, and the metric names the API answers.
//!
//! Two vocabularies meet here. *Stored* metrics are what the rollup table
//! keeps (a name plus a dimensions string). *Query* metrics are the names a
//! client passes to `GET /api/v1/metrics`; each maps onto one or more stored
//! metrics. [`for_each_contribution`] is the single definition of what an
//! event contributes: ingest uses it to update rollups and queries use it on
//! the raw events of partial edge buckets, so both always agree.

use std::borrow::Cow;

use super::event::Event;

/// Count of events, dimension = event type.
pub const EVENTS_COUNT: &str = "events.count";
/// `latency_ms` of `order.*` events, no dimension.
pub const ORDERS_LATENCY_MS: &str = "orders.latency_ms";
/// `price × quantity` of `order.filled` events, no dimension.
pub const FILLED_NOTIONAL: &str = "trading.filled_notional";
/// `price × quantity` of `order.filled` events, dimension = symbol.
pub const FILLED_NOTIONAL_BY_SYMBOL: &str = "trading.filled_notional.symbol";
/// Prefix of per-property metrics (`property.price`), dimension = event type.
pub const PROPERTY_PREFIX: &str = "property.";
/// `pnl` of every `position.closed`, dimension = strategy id.
pub const STRATEGY_PNL: &str = "strategy.pnl";
/// `pnl` of the winning (`pnl > 0`) `position.closed`, dimension = strategy id.
pub const STRATEGY_WINS: &str = "strategy.wins";
/// `pnl` of the losing (`pnl < 0`) `position.closed`, dimension = strategy id.
pub const STRATEGY_LOSSES: &str = "strategy.losses";
/// Event time (epoch ms) of `strategy.started`, dimension = strategy id: the
/// maximum is the latest start.
pub const STRATEGY_STARTED_AT: &str = "strategy.started_at";
/// Event time (epoch ms) of `strategy.stopped`, dimension = strategy id.
pub const STRATEGY_STOPPED_AT: &str = "strategy.stopped_at";

/// The one event type whose events contribute to `metric`, for the metrics
/// that have one (the strategy metrics); `None`: several or any.
pub fn sole_source(metric: &str) -> Option<&'static str> {
    match metric {
        STRATEGY_PNL | STRATEGY_WINS | STRATEGY_LOSSES => Some("position.closed"),
        STRATEGY_STARTED_AT => Some("strategy.started"),
        STRATEGY_STOPPED_AT => Some("strategy.stopped"),
        _ => None,
    }
}

/// The numeric properties summarised per event type (count, sum, min, max,
/// quantiles).
pub const NUMERIC_PROPERTIES: [&str; 8] = [
    "price",
    "quantity",
    "latency_ms",
    "commission",
    "pnl",
    "bid",
    "ask",
    "volume",
];

/// The index of `name` in [`NUMERIC_PROPERTIES`].
fn numeric_property_index(name: &str) -> Option<usize> {
    match name {
        "price" => Some(0),
        "quantity" => Some(1),
        "latency_ms" => Some(2),
        "commission" => Some(3),
        "pnl" => Some(4),
        "bid" => Some(5),
        "ask" => Some(6),
        "volume" => Some(7),
        _ => None,
    }
}

/// One contribution of an event to a stored metric: a count (`value` None) or
/// a value.
pub struct Contribution<'a> {
    pub metric: &'a str,
    pub dimensions: Cow<'a, str>,
    pub value: Option<f64>,
}

/// Calls `sink` once for every stored metric `event` contributes to.
pub fn for_each_contribution<'a>(event: &'a Event, mut sink: impl FnMut(Contribution<'a>)) {
    sink(Contribution {
        metric: EVENTS_COUNT,
        dimensions: Cow::Borrowed(&event.event_type),
        value: None,
    });
    // One pass over the properties rather than a lookup per summarised
    // name: this runs for every event ingested.
    let mut numbers = [None; NUMERIC_PROPERTIES.len()];
    for (name, value) in event.properties.scalars() {
        if let Some(index) = numeric_property_index(name)
            && let Some(value) = value.number()
        {
            numbers[index] = Some(value);
            sink(Contribution {
                metric: PROPERTY_METRICS[index],
                dimensions: Cow::Borrowed(&event.event_type),
                value: Some(value),
            });
        }
    }
    let [price, quantity, latency_ms, ..] = numbers;
    if event.event_type.starts_with("order.")
        && let Some(latency) = latency_ms
    {
        sink(Contribution {
            metric: ORDERS_LATENCY_MS,
            dimensions: Cow::Borrowed(""),
            value: Some(latency),
        });
    }
    if event.event_type == "order.filled"
        && let (Some(price), Some(quantity)) = (price, quantity)
    {
        let notional = price * quantity;
        sink(Contribution {
            metric: FILLED_NOTIONAL,
            dimensions: Cow::Borrowed(""),
            value: Some(notional),
        });
        if let Some(symbol) = event.string("symbol") {
            sink(Contribution {
                metric: FILLED_NOTIONAL_BY_SYMBOL,
                dimensions: Cow::Borrowed(symbol),
                value: Some(notional),
            });
        }
    }
    strategy_contributions(event, &mut sink);
}

/// The strategy-performance metrics: the PnL of closed positions (all,
/// winners, losers) and the times strategies started and stopped, per
/// strategy id. Events without a strategy id contribute nothing here.
fn strategy_contributions<'a>(event: &'a Event, sink: &mut impl FnMut(Contribution<'a>)) {
    let metric = match event.event_type.as_str() {
        "position.closed" => STRATEGY_PNL,
        "strategy.started" => STRATEGY_STARTED_AT,
        "strategy.stopped" => STRATEGY_STOPPED_AT,
        _ => return,
    };
    let Some(strategy) = strategy_id(event) else {
        return;
    };
    if metric != STRATEGY_PNL {
        sink(Contribution {
            metric,
            dimensions: strategy,
            value: Some(event.timestamp_ms as f64),
        });
        return;
    }
    let Some(pnl) = event.number("pnl") else {
        return;
    };
    let outcome = if pnl > 0.0 {
        Some(STRATEGY_WINS)
    } else if pnl < 0.0 {
        Some(STRATEGY_LOSSES)
    } else {
        None
    };
    if let Some(outcome) = outcome {
        sink(Contribution {
            metric: outcome,
            dimensions: strategy.clone(),
            value: Some(pnl),
        });
    }
    sink(Contribution {
        metric: STRATEGY_PNL,
        dimensions: strategy,
        value: Some(pnl),
    });
}

/// An event's `strategy_id` property as text (a string, or a number).
pub fn strategy_id(event: &Event) -> Option<Cow<'_, str>> {
    event.properties.get("strategy_id")?.text()
}

/// Stored metric names of [`NUMERIC_PROPERTIES`], index for index.
const PROPERTY_METRICS: [&str; 8] = [
    "property.price",
    "property.quantity",
    "property.latency_ms",
    "property.commission",
    "property.pnl",
    "property.bid",
    "property.ask",
    "property.volume",
];

/// Distinct `user_id`s per minute (dashboard: active users).
pub const DISTINCT_USERS: &str = "user_id";
/// Distinct `properties.strategy_id` of `strategy.*` events per minute
/// (dashboard: active strategies).
pub const DISTINCT_STRATEGIES: &str = "strategy_id";

/// Calls `sink(dimension, value)` for every distinct-value set `event`
/// belongs to. Sets are kept per minute; adding a value twice changes
/// nothing, so redelivered events need no special care.
pub fn for_each_distinct(event: &Event, mut sink: impl FnMut(&'static str, &str)) {
    if let Some(user_id) = &event.user_id {
        sink(DISTINCT_USERS, user_id);
    }
    if event.event_type.starts_with("strategy.")
        && let Some(strategy) = strategy_id(event)
    {
        sink(DISTINCT_STRATEGIES, &strategy);
    }
}

/// A metric name a client may query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryMetric {
    /// `events.count.<event_type>`
    EventCount(String),
    /// `trading.order_fill_rate`
    OrderFillRate,
    /// `trading.total_volume`
    TotalVolume,
    /// `trading.volume.<symbol>`
    SymbolVolume(String),
    /// `orders.latency_ms`
    OrderLatency,
    /// `strategy.pnl.<strategy_id>`: realised PnL of closed positions.
    StrategyPnl(String),
    /// `<event_type>.<property>`, e.g. `order.filled.price`
    Property {
        event_type: String,
        property: String,
    },
}

impl QueryMetric {
    /// Parses a client's `metric_name`; the error explains the accepted forms.
    pub fn parse(name: &str) -> Result<QueryMetric, String> {
        if let Some(event_type) = name.strip_prefix("events.count.")
            && !event_type.is_empty()
        {
            return Ok(QueryMetric::EventCount(event_type.to_string()));
        }
        match name {
            "trading.order_fill_rate" => return Ok(QueryMetric::OrderFillRate),
            "trading.total_volume" => return Ok(QueryMetric::TotalVolume),
            ORDERS_LATENCY_MS => return Ok(QueryMetric::OrderLatency),
            _ => {}
        }
        if let Some(strategy) = name.strip_prefix("strategy.pnl.")
            && !strategy.is_empty()
        {
            return Ok(QueryMetric::StrategyPnl(strategy.to_string()));
        }
        if let Some(symbol) = name.strip_prefix("trading.volume.")
            && !symbol.is_empty()
        {
            return Ok(QueryMetric::SymbolVolume(symbol.to_string()));
        }
        for property in NUMERIC_PROPERTIES {
            if let Some(event_type) = name
                .strip_suffix(property)
                .and_then(|rest| rest.strip_suffix('.'))
                && !event_type.is_empty()
            {
                return Ok(QueryMetric::Property {
                    event_type: event_type.to_string(),
                    property: property.to_string(),
                });
            }
        }
        Err(format!(
            "unknown metric_name {name:?}; expected events.count.<event_type>, \
             trading.order_fill_rate, trading.total_volume, trading.volume.<symbol>, \
             orders.latency_ms, strategy.pnl.<strategy_id> or <event_type>.<property> with property one of {}",
            NUMERIC_PROPERTIES.join(", ")
        ))
    }

    /// The stored metric and dimension filter this query reads. For
    /// `OrderFillRate` the caller reads `events.count` for the three order
    /// types.
    pub fn stored(&self) -> (String, Option<String>) {
        match self {
            QueryMetric::EventCount(event_type) => {
                (EVENTS_COUNT.to_string(), Some(event_type.clone()))
            }
            QueryMetric::OrderFillRate => (EVENTS_COUNT.to_string(), None),
            QueryMetric::TotalVolume => (FILLED_NOTIONAL.to_string(), Some(String::new())),
            QueryMetric::SymbolVolume(symbol) => {
                (FILLED_NOTIONAL_BY_SYMBOL.to_string(), Some(symbol.clone()))
            }
            QueryMetric::OrderLatency => (ORDERS_LATENCY_MS.to_string(), Some(String::new())),
            QueryMetric::StrategyPnl(strategy) => {
                (STRATEGY_PNL.to_string(), Some(strategy.clone()))
            }
            QueryMetric::Property {
                event_type,
                property,
            } => (
                format!("{PROPERTY_PREFIX}{property}"),
                Some(event_type.clone()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The one-pass lookup knows every summarised name at its index (and
    /// `for_each_contribution` reads price, quantity and latency from the
    /// first three).
    #[test]
    fn numeric_property_indexes_follow_the_list() {
        for (index, name) in NUMERIC_PROPERTIES.iter().enumerate() {
            assert_eq!(numeric_property_index(name), Some(index), "{name}");
        }
        assert_eq!(NUMERIC_PROPERTIES[..3], ["price", "quantity", "latency_ms"]);
        assert_eq!(numeric_property_index("prices"), None);
    }

    /// `sole_source` must name the only type whose events contribute to
    /// each metric it names, or raw query edges would miss events.
    #[test]
    fn sole_sources_agree_with_the_contributions() {
        let mut seen = BTreeSet::new();
        for event_type in [
            "position.closed",
            "position.opened",
            "strategy.started",
            "strategy.stopped",
            "order.placed",
            "order.filled",
            "market.data.update",
            "page.view",
        ] {
            for pnl in [5.0, -3.0] {
                let properties = serde_json::json!({
                    "strategy_id": "s1", "pnl": pnl, "price": 10.0, "quantity": 2.0,
                    "latency_ms": 4.0, "symbol": "BTCUSDT",
                });
                let event = Event {
                    id: uuid::Uuid::nil(),
                    event_type: event_type.into(),
                    user_id: None,
                    session_id: None,
                    properties: properties.as_object().cloned().unwrap_or_default().into(),
                    timestamp_ms: 1_700_000_000_000,
                    created_at_ms: 1_700_000_000_000,
                };
                for_each_contribution(&event, |contribution| {
                    if let Some(source) = sole_source(contribution.metric) {
                        assert_eq!(source, event_type, "{}", contribution.metric);
                        seen.insert(contribution.metric.to_string());
                    }
                });
            }
        }
        let named: BTreeSet<String> = [
            STRATEGY_PNL,
            STRATEGY_WINS,
            STRATEGY_LOSSES,
            STRATEGY_STARTED_AT,
            STRATEGY_STOPPED_AT,
        ]
        .map(str::to_string)
        .into();
        assert_eq!(seen, named, "every metric with a sole source was produced");
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            QueryMetric::parse("events.count.order.placed"),
            Ok(QueryMetric::EventCount("order.placed".into()))
        );
        assert_eq!(
            QueryMetric::parse("trading.order_fill_rate"),
            Ok(QueryMetric::OrderFillRate)
        );
        assert_eq!(
            QueryMetric::parse("trading.total_volume"),
            Ok(QueryMetric::TotalVolume)
        );
        assert_eq!(
            QueryMetric::parse("trading.volume.BTCUSDT"),
            Ok(QueryMetric::SymbolVolume("BTCUSDT".into()))
        );
        assert_eq!(
            QueryMetric::parse("orders.latency_ms"),
            Ok(QueryMetric::OrderLatency)
        );
        assert_eq!(
            QueryMetric::parse("market.data.update.bid"),
            Ok(QueryMetric::Property {
                event_type: "market.data.update".into(),
                property: "bid".into()
            })
        );
        assert_eq!(
            QueryMetric::parse("strategy.pnl.momentum-1"),
            Ok(QueryMetric::StrategyPnl("momentum-1".into()))
        );
        assert!(QueryMetric::parse("events.count.").is_err());
        assert!(QueryMetric::parse("nonsense").is_err());
    }
}
