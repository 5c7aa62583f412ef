//! Strategy performance against an independent computation: a few thousand
//! closed positions of several strategies (numbers and numeric strings,
//! shuffled, part of them delivered twice) plus starts and stops; every
//! figure of `/api/v1/trading/strategies` is computed here from the raw list
//! by the plain definitions and compared, for several intervals and ranges.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::exactness::Rng;
use crate::helpers::{now_ms, rfc3339, spawn_app};

const STRATEGIES: [&str; 4] = ["s-alpha", "s-beta", "s-gamma", "7"];
const HOUR: i64 = 3_600_000;

#[derive(Clone)]
struct Trade {
    strategy: &'static str,
    timestamp_ms: i64,
    pnl: f64,
}

/// The figures of one strategy over `[start, end)` in buckets of `interval`
/// ms, by the definitions in README (plain loops, no shared code).
fn expected(trades: &[Trade], strategy: &str, start: i64, end: i64, interval: i64) -> Value {
    let selected: Vec<&Trade> = trades
        .iter()
        .filter(|t| t.strategy == strategy && t.timestamp_ms >= start && t.timestamp_ms < end)
        .collect();
    let wins: Vec<f64> = selected
        .iter()
        .map(|t| t.pnl)
        .filter(|p| *p > 0.0)
        .collect();
    let losses: Vec<f64> = selected
        .iter()
        .map(|t| t.pnl)
        .filter(|p| *p < 0.0)
        .collect();
    let gross_profit: f64 = wins.iter().sum();
    let gross_loss: f64 = -losses.iter().sum::<f64>();
    let first = start.div_euclid(interval) * interval;
    let mut per_bucket = Vec::new();
    let mut bucket = first;
    while bucket < end {
        per_bucket.push(
            selected
                .iter()
                .filter(|t| t.timestamp_ms >= bucket && t.timestamp_ms < bucket + interval)
                .map(|t| t.pnl)
                .sum::<f64>(),
        );
        bucket += interval;
    }
    let (mut cumulative, mut peak, mut drawdown) = (0.0_f64, 0.0_f64, 0.0_f64);
    for pnl in &per_bucket {
        cumulative += pnl;
        peak = peak.max(cumulative);
        drawdown = drawdown.max(peak - cumulative);
    }
    let n = per_bucket.len() as f64;
    let mean = per_bucket.iter().sum::<f64>() / n;
    let deviation = (per_bucket.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let sharpe = (per_bucket.len() >= 2 && deviation > 0.0)
        .then(|| mean / deviation * (365.25 * 86_400_000.0 / interval as f64).sqrt());
    let trades = selected.len() as f64;
    json!({
        "trades": selected.len(),
        "winners": wins.len(),
        "losers": losses.len(),
        "total_pnl": selected.iter().map(|t| t.pnl).sum::<f64>(),
        "gross_profit": gross_profit,
        "gross_loss": gross_loss,
        "win_rate": (trades > 0.0).then(|| wins.len() as f64 / trades),
        "profit_factor": (gross_loss > 0.0).then(|| gross_profit / gross_loss),
        "average_win": (!wins.is_empty()).then(|| gross_profit / wins.len() as f64),
        "average_loss": (!losses.is_empty()).then(|| -gross_loss / losses.len() as f64),
        "largest_win": wins.iter().copied().reduce(f64::max),
        "largest_loss": losses.iter().copied().reduce(f64::min),
        "max_drawdown": drawdown,
        "sharpe": sharpe,
        "buckets": per_bucket.len(),
        "bucket_pnl": per_bucket,
    })
}

/// Equal, allowing for the order of floating-point additions.
fn close(actual: &Value, expected: &Value, what: &str) {
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(e)) => {
            let tolerance = 1e-9 * e.abs().max(1.0);
            assert!((a - e).abs() <= tolerance, "{what}: got {a}, expected {e}");
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

#[tokio::test]
async fn strategy_performance_equals_an_independent_computation() {
    let app = spawn_app().await;
    let mut rng = Rng(0x57a7);
    let now = now_ms();
    let span = 5 * HOUR;
    let mut trades = Vec::new();
    let mut events = Vec::new();
    for index in 0..2400 {
        let strategy = STRATEGIES[rng.random_range(0..STRATEGIES.len())];
        // Cents, so a few come out exactly 0 (neither win nor loss).
        let pnl = (rng.random_range(0..20_001u64) as f64 - 10_000.0) / 100.0;
        let timestamp_ms = now - span + rng.random_range(0..span as u64) as i64;
        trades.push(Trade {
            strategy,
            timestamp_ms,
            pnl,
        });
        let pnl_value = if index % 3 == 0 {
            json!(pnl.to_string())
        } else {
            json!(pnl)
        };
        let strategy_value = if strategy == "7" {
            json!(7)
        } else {
            json!(strategy)
        };
        events.push(json!({
            "id": uuid::Uuid::now_v7().to_string(),
            "event_type": "position.closed",
            "timestamp": timestamp_ms,
            "properties": {"strategy_id": strategy_value, "pnl": pnl_value, "symbol": "BTCUSDT"},
        }));
    }
    // Not counted: no strategy id, or no pnl.
    events.push(
        json!({"event_type": "position.closed", "timestamp": now - HOUR, "properties": {"pnl": 5}}),
    );
    events.push(json!({"event_type": "position.closed", "timestamp": now - HOUR, "properties": {"strategy_id": "s-alpha"}}));
    // s-alpha started then stopped; s-beta started; s-gamma stopped then
    // started again; "7" never started.
    for (strategy, event_type, ago) in [
        ("s-alpha", "strategy.started", 4 * HOUR),
        ("s-alpha", "strategy.stopped", HOUR),
        ("s-beta", "strategy.started", 3 * HOUR),
        ("s-gamma", "strategy.stopped", 2 * HOUR),
        ("s-gamma", "strategy.started", HOUR / 2),
    ] {
        events.push(json!({"event_type": event_type, "timestamp": now - ago, "properties": {"strategy_id": strategy}}));
    }
    // Shuffle (late and out-of-order delivery), send, then send a part again.
    for index in (1..events.len()).rev() {
        let other = rng.random_range(0..index + 1);
        events.swap(index, other);
    }
    for chunk in events.chunks(500) {
        let (status, body) = app.post_json("/api/v1/events/batch", &json!(chunk)).await;
        assert_eq!(status, 200, "{body}");
    }
    let resent: Vec<&Value> = events[..300]
        .iter()
        .filter(|event| event.get("id").is_some())
        .collect();
    let (_, again) = app.post_json("/api/v1/events/batch", &json!(resent)).await;
    assert_eq!(
        (again["accepted"].clone(), again["duplicates"].clone()),
        (json!(0), json!(resent.len())),
        "{again}"
    );

    let ranges = [
        (now - span - 60_000, now),
        (now - 3 * HOUR + 17_123, now - HOUR - 23_456),
    ];
    for (interval_name, interval_ms) in [("1m", 60_000), ("5m", 300_000), ("1h", HOUR)] {
        for (start, end) in ranges {
            let query = [
                ("start_time", rfc3339(start)),
                ("end_time", rfc3339(end)),
                ("interval", interval_name.to_string()),
            ];
            let (status, listed) = app.get_query("/api/v1/trading/strategies", &query).await;
            assert_eq!(status, 200, "{listed}");
            let by_id: BTreeMap<String, Value> = listed["strategies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|summary| {
                    (
                        summary["strategy_id"].as_str().unwrap().to_string(),
                        summary.clone(),
                    )
                })
                .collect();
            assert_eq!(by_id.len(), STRATEGIES.len(), "{listed}");
            for strategy in STRATEGIES {
                // The wire range is inclusive of end_time.
                let want = expected(&trades, strategy, start, end + 1, interval_ms);
                let got = &by_id[strategy];
                for field in [
                    "trades",
                    "winners",
                    "losers",
                    "total_pnl",
                    "gross_profit",
                    "gross_loss",
                    "win_rate",
                    "profit_factor",
                    "average_win",
                    "average_loss",
                    "largest_win",
                    "largest_loss",
                    "max_drawdown",
                    "sharpe",
                ] {
                    close(
                        &got[field],
                        &want[field],
                        &format!("{strategy} {field} at {interval_name} over {start}..{end}"),
                    );
                }
                let (status, one) = app
                    .get_query(&format!("/api/v1/trading/strategies/{strategy}"), &query)
                    .await;
                assert_eq!(status, 200, "{one}");
                let series = one["series"].as_array().unwrap();
                assert_eq!(
                    series.len(),
                    want["buckets"].as_u64().unwrap() as usize,
                    "{strategy} {interval_name}"
                );
                for (point, pnl) in series.iter().zip(want["bucket_pnl"].as_array().unwrap()) {
                    close(
                        &point["pnl"],
                        pnl,
                        &format!("{strategy} bucket {}", point["timestamp"]),
                    );
                }
                close(
                    &series.last().unwrap()["cumulative_pnl"],
                    &want["total_pnl"],
                    &format!("{strategy} cumulative"),
                );
            }
            let running: BTreeMap<&str, bool> = STRATEGIES
                .iter()
                .map(|strategy| (*strategy, by_id[*strategy]["running"].as_bool().unwrap()))
                .collect();
            assert_eq!(
                running,
                BTreeMap::from([
                    ("s-alpha", false),
                    ("s-beta", true),
                    ("s-gamma", true),
                    ("7", false)
                ])
            );
        }
    }

    // The same PnL through /api/v1/metrics, and errors that name the field.
    let query = [
        ("metric_name", "strategy.pnl.s-beta".to_string()),
        ("interval", "1h".to_string()),
        ("start_time", rfc3339(now - span - 60_000)),
        ("end_time", rfc3339(now)),
    ];
    let (status, metrics) = app.get_query("/api/v1/metrics", &query).await;
    assert_eq!(status, 200, "{metrics}");
    let total: f64 = metrics["result"]["data_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["value"].as_f64().unwrap())
        .sum();
    close(
        &json!(total),
        &expected(&trades, "s-beta", now - span - 60_000, now + 1, HOUR)["total_pnl"],
        "metrics strategy.pnl",
    );
    let (status, body) = app
        .get_query(
            "/api/v1/trading/strategies",
            &[("interval", "2m".to_string())],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"]["field"], "interval", "{body}");
    let (status, body) = app
        .get_query(
            "/api/v1/trading/strategies",
            &[
                ("interval", "1m".to_string()),
                ("start_time", rfc3339(now - 30 * 86_400_000)),
            ],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.get("/api/v1/trading/strategies/unknown-strategy").await;
    assert_eq!(status, 404, "{body}");
}
