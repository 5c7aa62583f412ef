//! Time series of one metric (`GET /api/v1/metrics`).
//!
//! Each data point is one bucket of the requested interval (only buckets
//! with data). `value` is the bucket's mean where the metric has values,
//! else its count, unless an `aggregation` picks another statistic; the
//! legacy trading metrics keep the old service's meaning (fill rate in
//! percent, volume as a sum).

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Grouped, MetricFilter, QueryEngine};
use crate::model::event::format_timestamp;
use crate::model::metric::{EVENTS_COUNT, QueryMetric};
use crate::rollup::{Accumulator, Interval, TimeRange};
use crate::store::StoreError;

/// Which statistic `value` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Avg,
    Count,
    Sum,
    Min,
    Max,
    P50,
    P95,
    P99,
    /// Filled ÷ placed × 100 (`trading.order_fill_rate` only).
    Rate,
}

impl Aggregation {
    /// Parses the `aggregation` query parameter.
    pub fn parse(text: &str) -> Option<Aggregation> {
        Some(match text {
            "avg" | "mean" => Aggregation::Avg,
            "count" => Aggregation::Count,
            "sum" => Aggregation::Sum,
            "min" => Aggregation::Min,
            "max" => Aggregation::Max,
            "p50" => Aggregation::P50,
            "p95" => Aggregation::P95,
            "p99" => Aggregation::P99,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Avg => "avg",
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::P50 => "p50",
            Aggregation::P95 => "p95",
            Aggregation::P99 => "p99",
            Aggregation::Rate => "rate",
        }
    }

    fn of(self, accumulator: &Accumulator) -> f64 {
        let value = match self {
            Aggregation::Avg => accumulator.mean(),
            Aggregation::Count => Some(accumulator.count() as f64),
            Aggregation::Sum => accumulator.sum(),
            Aggregation::Min => accumulator.min(),
            Aggregation::Max => accumulator.max(),
            Aggregation::P50 => accumulator.quantile(0.5),
            Aggregation::P95 => accumulator.quantile(0.95),
            Aggregation::P99 => accumulator.quantile(0.99),
            Aggregation::Rate => None,
        };
        value.unwrap_or(0.0)
    }
}

/// One bucket of a series.
#[derive(Debug, Clone, Serialize)]
pub struct DataPoint {
    pub timestamp: String,
    pub value: f64,
    pub dimensions: Map<String, Value>,
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}

impl DataPoint {
    /// A point with `value` and `count` and nothing else.
    pub fn new(timestamp: String, value: f64, count: u64) -> DataPoint {
        DataPoint {
            timestamp,
            value,
            dimensions: Map::new(),
            count,
            sum: None,
            min: None,
            max: None,
            p50: None,
            p95: None,
            p99: None,
        }
    }
}

/// A computed series.
#[derive(Debug, Clone)]
pub struct Series {
    pub data_points: Vec<DataPoint>,
    /// Events behind the series (for the fill rate: orders placed).
    pub total_count: u64,
    pub aggregation: Aggregation,
}

/// Why a series cannot be computed as asked.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("aggregation {0} does not apply to {1}")]
    AggregationNotApplicable(&'static str, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn point(
    bucket_start_ms: i64,
    value: f64,
    accumulator: &Accumulator,
    dimensions: Map<String, Value>,
) -> DataPoint {
    let values = accumulator.has_values();
    DataPoint {
        timestamp: format_timestamp(bucket_start_ms),
        value,
        dimensions,
        count: accumulator.count(),
        sum: accumulator.sum().filter(|_| values),
        min: accumulator.min().filter(|_| values),
        max: accumulator.max().filter(|_| values),
        p50: accumulator.quantile(0.5).filter(|_| values),
        p95: accumulator.quantile(0.95).filter(|_| values),
        p99: accumulator.quantile(0.99).filter(|_| values),
    }
}

/// One accumulator per group, all dimension values merged (moved, not
/// copied, when a group holds a single value, as most series do).
fn merged(groups: Grouped) -> impl Iterator<Item = (i64, Accumulator)> {
    groups.into_iter().map(|(bucket_start_ms, accumulators)| {
        let mut values = accumulators.into_values();
        let mut total = values.next().unwrap_or_else(Accumulator::new_count_only);
        for accumulator in values {
            total.merge(&accumulator);
        }
        (bucket_start_ms, total)
    })
}

/// Computes the series of `metric` over `range` in buckets of `interval`.
pub async fn metric_series(
    engine: &QueryEngine,
    metric: &QueryMetric,
    metric_name: &str,
    interval: Interval,
    range: TimeRange,
    aggregation: Option<Aggregation>,
) -> Result<Series, SeriesError> {
    if *metric == QueryMetric::OrderFillRate {
        if let Some(aggregation) = aggregation {
            return Err(SeriesError::AggregationNotApplicable(
                aggregation.as_str(),
                metric_name.into(),
            ));
        }
        return fill_rate(engine, interval, range).await;
    }
    let (stored_metric, dimensions) = metric.stored();
    let filter = MetricFilter::new(&stored_metric, dimensions.as_deref());
    let grouped = engine.aggregate(&[filter], range, Some(interval)).await?;
    let groups = grouped.into_iter().next().unwrap_or_default();
    let valued = !matches!(metric, QueryMetric::EventCount(_));
    let default = match metric {
        QueryMetric::EventCount(_) => Aggregation::Count,
        QueryMetric::TotalVolume | QueryMetric::SymbolVolume(_) | QueryMetric::StrategyPnl(_) => {
            Aggregation::Sum
        }
        _ => Aggregation::Avg,
    };
    let aggregation = aggregation.unwrap_or(default);
    if !valued && aggregation != Aggregation::Count {
        return Err(SeriesError::AggregationNotApplicable(
            aggregation.as_str(),
            metric_name.into(),
        ));
    }
    let volume = matches!(
        metric,
        QueryMetric::TotalVolume | QueryMetric::SymbolVolume(_)
    );
    let mut total_count = 0;
    let data_points = merged(groups)
        .filter(|(_, accumulator)| accumulator.count() > 0)
        .map(|(bucket_start_ms, accumulator)| {
            total_count += accumulator.count();
            let mut dimensions = Map::new();
            if volume {
                dimensions.insert("volume".into(), json!(accumulator.sum().unwrap_or(0.0)));
            }
            point(
                bucket_start_ms,
                aggregation.of(&accumulator),
                &accumulator,
                dimensions,
            )
        })
        .collect();
    Ok(Series {
        data_points,
        total_count,
        aggregation,
    })
}

async fn fill_rate(
    engine: &QueryEngine,
    interval: Interval,
    range: TimeRange,
) -> Result<Series, SeriesError> {
    let filters = [
        MetricFilter::new(EVENTS_COUNT, Some("order.placed")),
        MetricFilter::new(EVENTS_COUNT, Some("order.filled")),
        MetricFilter::new(EVENTS_COUNT, Some("order.canceled")),
    ];
    let grouped = engine.aggregate(&filters, range, Some(interval)).await?;
    let count_at = |index: usize, bucket: i64| -> u64 {
        grouped
            .get(index)
            .and_then(|groups| groups.get(&bucket))
            .map(|accumulators| accumulators.values().map(Accumulator::count).sum())
            .unwrap_or(0)
    };
    let mut buckets: Vec<i64> = grouped
        .iter()
        .flat_map(|groups| groups.keys().copied())
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    let mut total_count = 0;
    let mut data_points = Vec::new();
    for bucket in buckets {
        let (placed, filled, canceled) = (
            count_at(0, bucket),
            count_at(1, bucket),
            count_at(2, bucket),
        );
        if placed + filled + canceled == 0 {
            continue;
        }
        total_count += placed;
        let rate = if placed == 0 {
            0.0
        } else {
            filled as f64 / placed as f64 * 100.0
        };
        let mut dimensions = Map::new();
        dimensions.insert("orders_placed".into(), json!(placed));
        dimensions.insert("orders_filled".into(), json!(filled));
        dimensions.insert("orders_canceled".into(), json!(canceled));
        let mut data_point = DataPoint::new(format_timestamp(bucket), rate, placed);
        data_point.dimensions = dimensions;
        data_points.push(data_point);
    }
    Ok(Series {
        data_points,
        total_count,
        aggregation: Aggregation::Rate,
    })
}
