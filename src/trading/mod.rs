//! Trading analytics: per-order state, fills, mid quotes and market bars,
//! kept by the stores at ingest ([`projection`]), and the figures the
//! `/api/v1/trading/*` endpoints compute from them ([`report`]).

pub mod metrics;
pub mod projection;
pub mod report;
pub mod summary;

pub use projection::{BarDelta, FillRow, OrderDelta, QuoteRow, TradingBatch};

/// A fill as read back: the stored fill, its side and strategy completed
/// from its order when the fill did not carry them, and the mid price in
/// force at its time (the latest quote of its symbol at or before it).
#[derive(Debug, Clone, PartialEq)]
pub struct FillView {
    pub fill: FillRow,
    pub mid: Option<f64>,
}

/// The symbols of `fills`, for [`price_fills`].
pub fn fill_symbols(fills: &[FillView]) -> std::collections::BTreeSet<String> {
    fills
        .iter()
        .filter_map(|view| view.fill.symbol.clone())
        .collect()
}

/// Sets each fill's mid to that of the latest quote of its symbol at or
/// before it. `quotes`: per symbol, `(time, mid)` sorted by time and then
/// event id (so among quotes of the same time the last one wins), from the
/// latest quote before the fills' range on.
pub fn price_fills(
    fills: &mut [FillView],
    quotes: &std::collections::HashMap<String, Vec<(i64, f64)>>,
) {
    for view in fills {
        view.mid = view
            .fill
            .symbol
            .as_ref()
            .and_then(|symbol| quotes.get(symbol))
            .and_then(|quotes| {
                let at_or_before = quotes.partition_point(|(at, _)| *at <= view.fill.timestamp_ms);
                at_or_before.checked_sub(1).map(|index| quotes[index].1)
            });
    }
}

/// The quotes [`price_fills`] needs for fills stamped in `[start, end)`
/// (`?1`/`$1` symbol, `?2`/`$2` start, `?3`/`$3` end): from the latest
/// quote before `start` (all of that time) to the last before `end`.
pub const QUOTES_FOR_FILLS: &str = "SELECT ts, mid FROM market_quotes
     WHERE symbol = $1 AND ts < $3
       AND ts >= COALESCE((SELECT MAX(ts) FROM market_quotes WHERE symbol = $1 AND ts < $2), $2)
     ORDER BY ts, event_id";

/// What [`rebuild`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    pub events_read: u64,
    /// Order upserts: an order whose events fall in several of the
    /// one-hour pieces read counts once per piece.
    pub orders: u64,
    pub fills: u64,
    pub quotes: u64,
    /// Minute-bar upserts, counted like `orders`.
    pub bar_updates: u64,
}

/// Refresh passes a rebuild runs at most (one hour of each kind per pass).
const REBUILD_REFRESH_PASSES: u64 = 1_000_000;

/// How much of the events a rebuild reads at once.
const REBUILD_SPAN_MS: i64 = 3_600_000;

/// Rebuilds the trading tables from the raw events stamped in
/// `[start_ms, end_ms)`: empties them, then projects the events an hour at a
/// time. The merges do not depend on the order of the events, so the result
/// is what ingest would have written. Meant for a stopped service (events
/// committed during a rebuild could be counted twice or not at all);
/// running it again starts over, so an interrupted rebuild is mended by
/// running it again.
pub async fn rebuild(
    store: &dyn crate::store::Store,
    start_ms: i64,
    end_ms: i64,
) -> Result<RebuildReport, crate::store::StoreError> {
    store.clear_trading().await?;
    let mut report = RebuildReport::default();
    let mut from = start_ms;
    while from < end_ms {
        let to = from.saturating_add(REBUILD_SPAN_MS).min(end_ms);
        let events = store.scan_events(from, to, true).await?;
        report.events_read += events.len() as u64;
        let batch = TradingBatch::of(&events);
        report.orders += batch.orders.len() as u64;
        report.fills += batch.fills.len() as u64;
        report.quotes += batch.quotes.len() as u64;
        report.bar_updates += batch.bars.len() as u64;
        if !batch.is_empty() {
            store.write_trading(batch).await?;
        }
        from = to;
    }
    // The summaries of everything written, so reports are cheap at once.
    summary::refresh_all(store, REBUILD_REFRESH_PASSES).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_takes_the_mid_of_the_latest_quote_at_or_before_it() {
        let fill = |at: i64, symbol: &str| FillView {
            fill: FillRow {
                event_id: uuid::Uuid::nil(),
                order_id: None,
                symbol: Some(symbol.into()),
                side: None,
                strategy_id: None,
                timestamp_ms: at,
                price: 1.0,
                quantity: 1.0,
                is_maker: None,
                commission: None,
            },
            mid: Some(-1.0),
        };
        let mut fills = vec![
            fill(5, "A"),
            fill(10, "A"),
            fill(11, "A"),
            fill(30, "A"),
            fill(10, "B"),
        ];
        // Two quotes at 10, in event id order: the second wins.
        let quotes = [(
            "A".to_string(),
            vec![(8, 1.0), (10, 2.0), (10, 3.0), (20, 4.0)],
        )]
        .into_iter()
        .collect();
        price_fills(&mut fills, &quotes);
        let mids: Vec<Option<f64>> = fills.iter().map(|view| view.mid).collect();
        assert_eq!(mids, vec![None, Some(3.0), Some(3.0), Some(4.0), None]);
    }
}
