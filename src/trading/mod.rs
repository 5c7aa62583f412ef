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

/// What [`rebuild`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    pub events_read: u64,
    pub orders: u64,
    pub fills: u64,
    pub quotes: u64,
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
