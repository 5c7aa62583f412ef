//! Trading analytics: per-order state, fills, mid quotes and market bars,
//! kept by the stores at ingest ([`projection`]), and the figures the
//! `/api/v1/trading/*` endpoints compute from them ([`report`]).

pub mod metrics;
pub mod projection;
pub mod report;

pub use projection::{BarDelta, FillRow, OrderDelta, QuoteRow, TradingBatch};

/// A fill as read back: the stored fill, its side and strategy completed
/// from its order when the fill did not carry them, and the mid price in
/// force at its time (the latest quote of its symbol at or before it).
#[derive(Debug, Clone, PartialEq)]
pub struct FillView {
    pub fill: FillRow,
    pub mid: Option<f64>,
}
