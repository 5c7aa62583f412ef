//! Per-minute and per-hour summaries of the orders and execution reports,
//! so that their cost follows the length of the range, not the number of
//! orders and fills in it.
//!
//! An order's figures change after its minute has passed (a fill or a
//! cancel arrives later), and so does a fill's slippage (a late tick
//! re-prices it). So the summaries are not written by ingest: ingest marks
//! what it touched, in the commit transaction, and [`refresh_once`]
//! recomputes the marked minutes from the trading tables, with the hours
//! that hold them:
//!
//! - *Marks* (`trading_marks`): `(kind, first minute, last minute)`, with a
//!   version that every new mark of the same span increments. An order
//!   marks its placement minute (and, when it brings a side or a strategy,
//!   the minutes of its fills, whose group it completes); a fill marks its
//!   minute; the quotes of a symbol mark the minutes from the first of them
//!   to the next later quote already stored (the fills they re-price), or
//!   to an hour past now when there is none.
//! - *Summaries* (`trading_summaries`): per kind, minute and hour, the
//!   [`Slice`] of the minute (hour), encoded by [`encode_slice`].
//! - A refresh reads marks, recomputes one hour of one kind from the raw
//!   rows (never the current minute, which ingest keeps marking again), and writes the minutes, the hour (re-merged from its stored
//!   minutes inside the write) and the removal of exactly the marks it read
//!   in one transaction, which the store refuses when any of those marks
//!   changed meanwhile (newer data arrived: the next pass redoes it).
//! - A report ([`report`]) reads the marks, then whole clean hours from
//!   hour summaries (for intervals of an hour or more), whole clean minutes
//!   from minute summaries, and the rest (dirty minutes, partial minutes at
//!   the edges) from the raw rows. So it is exact whatever the refresher's
//!   progress; the refresher only makes it cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::report::{ExecutionTally, GroupKey, OrderTally};
use super::report::{Filters, Groups, Report, Slice, Tally, minute_slices, report as assemble};
use super::{OrderDelta, TradingBatch};
use crate::rollup::{Accumulator, Interval, TimeRange};
use crate::store::{Store, StoreError};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// How far past now the quotes without a later quote mark fills: fills are
/// never stamped further ahead than the accepted future skew, which is less.
pub const QUOTE_MARK_AHEAD_MS: i64 = HOUR_MS;

/// Which report a summary or a mark belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SummaryKind {
    /// Orders, by placement minute.
    Orders,
    /// Fills, by fill minute.
    Fills,
}

impl SummaryKind {
    pub fn code(self) -> i64 {
        match self {
            SummaryKind::Orders => 0,
            SummaryKind::Fills => 1,
        }
    }

    pub fn from_code(code: i64) -> Result<SummaryKind, StoreError> {
        match code {
            0 => Ok(SummaryKind::Orders),
            1 => Ok(SummaryKind::Fills),
            other => Err(StoreError::Corrupt(format!(
                "unknown trading summary kind {other}"
            ))),
        }
    }
}

/// Minutes whose summaries are out of date: `[first_minute, last_minute]`
/// (minute starts, inclusive), as of `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mark {
    pub kind: SummaryKind,
    pub first_minute: i64,
    pub last_minute: i64,
    pub version: i64,
}

/// What the stores add to `trading_marks` in a commit: `(kind, first
/// minute, last minute)`, deduplicated.
pub type MarkSpans = BTreeSet<(SummaryKind, i64, i64)>;

/// Merges the encoded slices of the minutes of an hour into the hour's
/// (`None`: nothing in the hour). Given to the store, which calls it inside
/// its write transaction.
pub type MergeSlices = fn(&[Vec<u8>]) -> Result<Option<Vec<u8>>, StoreError>;

pub fn minute_of(ms: i64) -> i64 {
    Interval::M1.bucket_start(ms)
}

pub fn hour_of(ms: i64) -> i64 {
    Interval::H1.bucket_start(ms)
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/// Version byte of the encoded slices.
const FORMAT: u8 = 1;

/// Appends fixed-width little-endian fields.
#[derive(Default)]
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub fn f64(&mut self, value: f64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.bytes.extend_from_slice(value);
    }

    fn text(&mut self, value: Option<&str>) {
        match value {
            None => self.bytes.push(0),
            Some(text) => {
                self.bytes.push(1);
                self.bytes(text.as_bytes());
            }
        }
    }

    /// A valued accumulator: count, sum, min, max and the sketch.
    pub fn accumulator(&mut self, value: &Accumulator) {
        self.u64(value.count());
        self.f64(value.sum().unwrap_or(0.0));
        self.f64(value.min().unwrap_or(0.0));
        self.f64(value.max().unwrap_or(0.0));
        self.bytes(&value.sketch_bytes().unwrap_or_default());
    }
}

/// Reads what [`Encoder`] wrote; every read checks the length, so no input
/// panics.
pub struct Decoder<'a> {
    input: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.input.len() < count {
            return Err(format!(
                "truncated: {count} bytes wanted, {} left",
                self.input.len()
            ));
        }
        let (taken, rest) = self.input.split_at(count);
        self.input = rest;
        Ok(taken)
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub fn f64(&mut self) -> Result<f64, String> {
        let bytes = self.take(8)?;
        Ok(f64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let length = usize::try_from(self.u64()?).map_err(|error| error.to_string())?;
        self.take(length)
    }

    fn text(&mut self) -> Result<Option<String>, String> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => String::from_utf8(self.bytes()?.to_vec())
                .map(Some)
                .map_err(|error| error.to_string()),
            other => Err(format!("bad text flag {other}")),
        }
    }

    pub fn accumulator(&mut self) -> Result<Accumulator, String> {
        let count = self.u64()?;
        let (sum, min, max) = (self.f64()?, self.f64()?, self.f64()?);
        let sketch = self.bytes()?;
        Accumulator::from_parts(count, Some(sum), Some(min), Some(max), Some(sketch))
            .map_err(|error| error.to_string())
    }
}

/// The bytes of a slice: format, group count, then each group's key and
/// tally.
pub fn encode_slice<T: Tally>(slice: &Slice<T>) -> Vec<u8> {
    let mut out = Encoder {
        bytes: vec![FORMAT],
    };
    out.u64(slice.len() as u64);
    for (key, tally) in slice {
        out.text(key.symbol.as_deref());
        out.text(key.strategy_id.as_deref());
        out.text(key.side.as_deref());
        tally.encode(&mut out);
    }
    out.bytes
}

/// The slice [`encode_slice`] wrote; anything else is `Corrupt`.
pub fn decode_slice<T: Tally>(bytes: &[u8]) -> Result<Slice<T>, StoreError> {
    let corrupt = |error: String| StoreError::Corrupt(format!("trading summary: {error}"));
    let mut input = Decoder { input: bytes };
    let format = input.take(1).map_err(corrupt)?[0];
    if format != FORMAT {
        return Err(corrupt(format!("unknown format {format}")));
    }
    let groups = input.u64().map_err(corrupt)?;
    let mut slice = Slice::new();
    for _ in 0..groups {
        let key = GroupKey {
            symbol: input.text().map_err(corrupt)?,
            strategy_id: input.text().map_err(corrupt)?,
            side: input.text().map_err(corrupt)?,
        };
        slice.insert(key, T::decode(&mut input).map_err(corrupt)?);
    }
    if !input.input.is_empty() {
        return Err(corrupt(format!("{} bytes past the end", input.input.len())));
    }
    Ok(slice)
}

fn merge_encoded<T: Tally>(minutes: &[Vec<u8>]) -> Result<Option<Vec<u8>>, StoreError> {
    let mut hour: Slice<T> = Slice::new();
    for bytes in minutes {
        for (key, tally) in decode_slice::<T>(bytes)? {
            match hour.get_mut(&key) {
                Some(existing) => existing.merge(&tally),
                None => {
                    hour.insert(key, tally);
                }
            }
        }
    }
    Ok((!hour.is_empty()).then(|| encode_slice(&hour)))
}

/// The [`MergeSlices`] of a kind.
pub fn merge_for(kind: SummaryKind) -> MergeSlices {
    match kind {
        SummaryKind::Orders => merge_encoded::<OrderTally>,
        SummaryKind::Fills => merge_encoded::<ExecutionTally>,
    }
}

// ---------------------------------------------------------------------------
// Marks written at commit
// ---------------------------------------------------------------------------

/// The minutes of `[first, last]` (epoch ms, inclusive) as a mark span.
pub fn span(kind: SummaryKind, first_ms: i64, last_ms: i64) -> (SummaryKind, i64, i64) {
    (kind, minute_of(first_ms), minute_of(last_ms.max(first_ms)))
}

/// What a batch marks that needs no read of the store: the minute of each
/// new fill.
pub fn fill_spans(trading: &TradingBatch, spans: &mut MarkSpans) {
    for fill in &trading.fills {
        spans.insert(span(
            SummaryKind::Fills,
            fill.timestamp_ms,
            fill.timestamp_ms,
        ));
    }
}

/// The marks of an order as stored after the batch (`placed_at`,
/// `first_fill_at`, `last_fill_at` of its row) given its change in the
/// batch: its placement minute, and the minutes of its fills when the
/// change brings a side or a strategy (which its fills take from it).
pub fn order_spans(
    change: &OrderDelta,
    placed_at: Option<i64>,
    fills: Option<(i64, i64)>,
    spans: &mut MarkSpans,
) {
    if let Some(placed_at) = placed_at {
        spans.insert(span(SummaryKind::Orders, placed_at, placed_at));
    }
    if (change.side.is_some() || change.strategy_id.is_some())
        && let Some((first, last)) = fills
    {
        spans.insert(span(SummaryKind::Fills, first, last));
    }
}

/// Per symbol, the earliest and latest of the batch's quotes; the store
/// completes each with the next later quote it holds ([`quote_span`]).
pub fn quote_ranges(trading: &TradingBatch) -> BTreeMap<&str, (i64, i64)> {
    let mut ranges: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for quote in &trading.quotes {
        let range = ranges
            .entry(quote.symbol.as_str())
            .or_insert((quote.timestamp_ms, quote.timestamp_ms));
        range.0 = range.0.min(quote.timestamp_ms);
        range.1 = range.1.max(quote.timestamp_ms);
    }
    ranges
}

/// The fills that quotes from `first_ms` on may re-price: up to the next
/// later quote already stored, or up to [`QUOTE_MARK_AHEAD_MS`] past now.
pub fn quote_span(
    first_ms: i64,
    next_quote_ms: Option<i64>,
    now_ms: i64,
) -> (SummaryKind, i64, i64) {
    let last = next_quote_ms.unwrap_or(now_ms.saturating_add(QUOTE_MARK_AHEAD_MS));
    span(SummaryKind::Fills, first_ms, last)
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// How a report reads a kind's rows from the store.
trait Source: Tally {
    const KIND: SummaryKind;
    fn read_raw(
        store: &dyn Store,
        start_ms: i64,
        end_ms: i64,
    ) -> impl Future<Output = Result<Vec<Self::Item>, StoreError>> + Send;
}

impl Source for OrderTally {
    const KIND: SummaryKind = SummaryKind::Orders;
    async fn read_raw(
        store: &dyn Store,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Self::Item>, StoreError> {
        store.read_orders(start_ms, end_ms).await
    }
}

impl Source for ExecutionTally {
    const KIND: SummaryKind = SummaryKind::Fills;
    async fn read_raw(
        store: &dyn Store,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Self::Item>, StoreError> {
        store.read_fills(start_ms, end_ms).await
    }
}

/// How a report's range splits: raw spans, minutes and hours read from
/// summaries.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Half-open spans read from the raw rows, in order, merged where they
    /// touch.
    raw: Vec<(i64, i64)>,
    /// Half-open spans of whole clean minutes read from minute summaries.
    minutes: Vec<(i64, i64)>,
    /// Half-open span of whole hours (some may be dirty: those are in
    /// `minutes` or `raw` instead, and listed here).
    hours: Option<(i64, i64)>,
    dirty_hours: BTreeSet<i64>,
}

fn push_span(spans: &mut Vec<(i64, i64)>, start: i64, end: i64) {
    if start >= end {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.1 == start => last.1 = end,
        _ => spans.push((start, end)),
    }
}

/// Splits `range` given the dirty minutes (starts) of the kind.
fn plan(range: TimeRange, hourly: bool, dirty: &BTreeSet<i64>) -> Plan {
    let mut plan = Plan::default();
    let (start, end) = (range.start_ms, range.end_ms);
    let first_minute = minute_of(start)
        + if minute_of(start) == start {
            0
        } else {
            MINUTE_MS
        };
    let end_minute = minute_of(end);
    if first_minute >= end_minute {
        push_span(&mut plan.raw, start, end);
        return plan;
    }
    push_span(&mut plan.raw, start, first_minute);
    let (first_hour, end_hour) = if hourly {
        let first_hour = hour_of(first_minute)
            + if hour_of(first_minute) == first_minute {
                0
            } else {
                HOUR_MS
            };
        let end_hour = hour_of(end_minute);
        if first_hour < end_hour {
            (first_hour, end_hour)
        } else {
            (end_minute, end_minute)
        }
    } else {
        (end_minute, end_minute)
    };
    if first_hour < end_hour {
        plan.hours = Some((first_hour, end_hour));
        plan.dirty_hours = dirty
            .range(first_hour..end_hour)
            .map(|minute| hour_of(*minute))
            .collect();
    }
    // The minutes not covered by clean hours.
    let mut minute = first_minute;
    while minute < end_minute {
        if minute == first_hour && first_hour < end_hour {
            // Skip the clean hours; walk the minutes of the dirty ones.
            let mut hour = first_hour;
            while hour < end_hour {
                if plan.dirty_hours.contains(&hour) {
                    for m in (hour..hour + HOUR_MS).step_by(MINUTE_MS as usize) {
                        if dirty.contains(&m) {
                            push_span(&mut plan.raw, m, m + MINUTE_MS);
                        } else {
                            push_span(&mut plan.minutes, m, m + MINUTE_MS);
                        }
                    }
                }
                hour += HOUR_MS;
            }
            minute = end_hour;
            continue;
        }
        if dirty.contains(&minute) {
            push_span(&mut plan.raw, minute, minute + MINUTE_MS);
        } else {
            push_span(&mut plan.minutes, minute, minute + MINUTE_MS);
        }
        minute += MINUTE_MS;
    }
    push_span(&mut plan.raw, end_minute, end);
    plan.raw.sort_unstable();
    plan
}

/// The dirty minutes of `kind` within `[start, end)`.
fn dirty_minutes(marks: &[Mark], kind: SummaryKind, start: i64, end: i64) -> BTreeSet<i64> {
    let mut dirty = BTreeSet::new();
    for mark in marks.iter().filter(|mark| mark.kind == kind) {
        let first = mark.first_minute.max(minute_of(start));
        let last = mark.last_minute.min(end);
        let mut minute = first;
        while minute <= last {
            dirty.insert(minute);
            minute += MINUTE_MS;
        }
    }
    dirty
}

async fn summarised_report<T: Source>(
    store: &dyn Store,
    range: TimeRange,
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> Result<Report<T::Figures>, StoreError> {
    if range.is_empty() {
        return Ok(assemble::<T>(Vec::new(), interval, filters, groups));
    }
    let marks = store.trading_marks().await?;
    let dirty = dirty_minutes(&marks, T::KIND, range.start_ms, range.end_ms);
    let hourly = interval.millis() >= HOUR_MS;
    let plan = plan(range, hourly, &dirty);
    let mut slices: Vec<(i64, Slice<T>)> = Vec::new();
    if let Some((start, end)) = plan.hours {
        for (hour, bytes) in store
            .read_trading_summaries(T::KIND, true, start, end)
            .await?
        {
            if !plan.dirty_hours.contains(&hour) {
                slices.push((hour, decode_slice(&bytes)?));
            }
        }
    }
    for (start, end) in plan.minutes {
        for (minute, bytes) in store
            .read_trading_summaries(T::KIND, false, start, end)
            .await?
        {
            slices.push((minute, decode_slice(&bytes)?));
        }
    }
    for (start, end) in plan.raw {
        let items = T::read_raw(store, start, end).await?;
        slices.extend(minute_slices::<T>(&items));
    }
    Ok(assemble(slices, interval, filters, groups))
}

/// The orders report (orders placed in `range`).
pub async fn orders_report(
    store: &dyn Store,
    range: TimeRange,
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> Result<Report<super::report::OrderFigures>, StoreError> {
    summarised_report::<OrderTally>(store, range, interval, filters, groups).await
}

/// The execution report (fills stamped in `range`).
pub async fn execution_report(
    store: &dyn Store,
    range: TimeRange,
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> Result<Report<super::report::ExecutionFigures>, StoreError> {
    summarised_report::<ExecutionTally>(store, range, interval, filters, groups).await
}

// ---------------------------------------------------------------------------
// Refresh
// ---------------------------------------------------------------------------

/// What one refresh pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Minutes recomputed.
    pub minutes: u64,
    /// Marks outstanding before the pass.
    pub marks_before: u64,
    /// False when the store refused the write (a mark changed meanwhile).
    pub written: bool,
}

/// Whether a refresh takes up `mark` at `now_minute`: not while its first
/// minute is the current one, which ingest keeps marking again (reports
/// read that minute raw meanwhile).
fn ready(mark: &Mark, now_minute: i64) -> bool {
    mark.first_minute < now_minute
}

/// Recomputes the earliest marked hour of `T`'s kind, up to the current
/// minute.
async fn refresh_kind<T: Source>(
    store: &dyn Store,
    marks: &[Mark],
    now_minute: i64,
) -> Result<Refreshed, StoreError> {
    let mine: Vec<&Mark> = marks
        .iter()
        .filter(|mark| mark.kind == T::KIND && ready(mark, now_minute))
        .collect();
    let Some(earliest) = mine.iter().map(|mark| mark.first_minute).min() else {
        return Ok(Refreshed::default());
    };
    let hour = hour_of(earliest);
    let limit = (hour + HOUR_MS).min(now_minute);
    let mut minutes = BTreeSet::new();
    let mut cleared = Vec::new();
    let mut remainders = Vec::new();
    for mark in mine {
        if mark.first_minute >= limit {
            continue;
        }
        cleared.push(*mark);
        let mut minute = mark.first_minute.max(hour);
        while minute <= mark.last_minute && minute < limit {
            minutes.insert(minute);
            minute += MINUTE_MS;
        }
        if mark.last_minute >= limit {
            remainders.push((T::KIND, limit, mark.last_minute));
        }
    }
    let (Some(&first), Some(&last)) = (minutes.first(), minutes.last()) else {
        return Ok(Refreshed::default());
    };
    let items = T::read_raw(store, first, last + MINUTE_MS).await?;
    let mut computed = minute_slices::<T>(&items);
    let writes: Vec<(i64, Option<Vec<u8>>)> = minutes
        .iter()
        .map(|minute| {
            let body = computed
                .remove(minute)
                .filter(|slice| !slice.is_empty())
                .map(|slice| encode_slice(&slice));
            (*minute, body)
        })
        .collect();
    let written = store
        .write_trading_summaries(T::KIND, writes, cleared, remainders, merge_for(T::KIND))
        .await?;
    Ok(Refreshed {
        minutes: minutes.len() as u64,
        marks_before: 0,
        written,
    })
}

/// One refresh pass: the earliest marked hour of each kind.
/// `marks_before` counts the marks it could take up.
pub async fn refresh_once(store: &dyn Store) -> Result<Refreshed, StoreError> {
    let marks = store.trading_marks().await?;
    let now_minute = minute_of(crate::model::event::now_ms());
    let orders = refresh_kind::<OrderTally>(store, &marks, now_minute).await?;
    let fills = refresh_kind::<ExecutionTally>(store, &marks, now_minute).await?;
    Ok(Refreshed {
        minutes: orders.minutes + fills.minutes,
        marks_before: marks.iter().filter(|mark| ready(mark, now_minute)).count() as u64,
        written: orders.written || fills.written,
    })
}

/// Refreshes until no mark is left but those of the current minute (or
/// `limit` passes ran); for the `trading rebuild` command. Returns the
/// passes run.
pub async fn refresh_all(store: &dyn Store, limit: u64) -> Result<u64, StoreError> {
    for pass in 0..limit {
        let done = refresh_once(store).await?;
        if done.marks_before == 0 {
            return Ok(pass);
        }
    }
    Ok(limit)
}

/// The pause after a pass that took `took`: at least `idle`, and three
/// times the pass, so a backlog (a backfill) takes at most a quarter of a
/// core from ingest.
pub fn pause_after(took: Duration, idle: Duration, backlog: bool) -> Duration {
    if backlog {
        (took * 3).max(Duration::from_millis(20))
    } else {
        idle.max(took * 3)
    }
}

/// Runs refresh passes until `shutdown`: one pass, then [`pause_after`].
/// Reports the outstanding marks through `on_pass`.
pub async fn run_refresher(
    store: std::sync::Arc<dyn Store>,
    idle: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    on_pass: impl Fn(u64) + Send + 'static,
) {
    loop {
        let started = Instant::now();
        let backlog = match refresh_once(&*store).await {
            Ok(done) => {
                on_pass(done.marks_before);
                done.marks_before > 0
            }
            Err(error) => {
                tracing::warn!(%error, "trading summary refresh failed; retrying");
                false
            }
        };
        let pause = pause_after(started.elapsed(), idle, backlog);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000 / HOUR_MS * HOUR_MS;

    #[test]
    fn a_plan_covers_the_range_once() {
        let dirty: BTreeSet<i64> = [T0 + HOUR_MS + 5 * MINUTE_MS].into();
        let range = TimeRange {
            start_ms: T0 - 90_500,
            end_ms: T0 + 3 * HOUR_MS + 61_000,
        };
        for hourly in [false, true] {
            let plan = plan(range, hourly, &dirty);
            let mut covered: Vec<(i64, i64)> = plan.raw.clone();
            covered.extend(plan.minutes.iter().copied());
            if let Some((start, end)) = plan.hours {
                let mut hour = start;
                while hour < end {
                    if !plan.dirty_hours.contains(&hour) {
                        covered.push((hour, hour + HOUR_MS));
                    }
                    hour += HOUR_MS;
                }
            }
            covered.sort_unstable();
            let mut at = range.start_ms;
            for (start, end) in covered {
                assert_eq!(start, at, "hourly {hourly}: gap or overlap at {start}");
                at = end;
            }
            assert_eq!(at, range.end_ms);
            assert!(
                plan.raw
                    .contains(&(T0 + HOUR_MS + 5 * MINUTE_MS, T0 + HOUR_MS + 6 * MINUTE_MS))
            );
            assert_eq!(plan.hours.is_some(), hourly);
        }
    }

    #[test]
    fn a_range_inside_one_minute_is_raw() {
        let range = TimeRange {
            start_ms: T0 + 1_000,
            end_ms: T0 + 2_000,
        };
        let plan = plan(range, true, &BTreeSet::new());
        assert_eq!(plan.raw, vec![(T0 + 1_000, T0 + 2_000)]);
        assert!(plan.minutes.is_empty() && plan.hours.is_none());
    }

    #[test]
    fn slices_round_trip_and_reject_garbage() {
        use crate::trading::{FillRow, FillView};
        let views: Vec<FillView> = (0..50)
            .map(|i| FillView {
                fill: FillRow {
                    event_id: uuid::Uuid::from_u128(i),
                    order_id: Some(format!("o{i}")),
                    symbol: Some(["BTCUSDT", "ETHUSDT"][i as usize % 2].into()),
                    side: Some(["buy", "sell"][i as usize % 3 % 2].into()),
                    strategy_id: (i % 5 != 0).then(|| "s1".to_string()),
                    timestamp_ms: T0 + i as i64 * 1_000,
                    price: 100.0 + i as f64,
                    quantity: 1.0,
                    is_maker: Some(i % 2 == 0),
                    commission: Some(0.1),
                },
                mid: Some(100.0 + i as f64 * 0.9),
            })
            .collect();
        let slices = minute_slices::<ExecutionTally>(&views);
        for slice in slices.values() {
            let bytes = encode_slice(slice);
            let decoded: Slice<ExecutionTally> = decode_slice(&bytes).unwrap();
            assert_eq!(encode_slice(&decoded), bytes);
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                assert!(decode_slice::<ExecutionTally>(&bytes[..cut]).is_err());
            }
        }
        // The merged report of the minutes equals the report of the rows.
        let direct = crate::trading::report::report_of::<ExecutionTally>(
            &views,
            Interval::H1,
            &Filters::default(),
            Groups::With,
        );
        let encoded: Vec<Vec<u8>> = slices.values().map(encode_slice).collect();
        let hour = merge_encoded::<ExecutionTally>(&encoded).unwrap().unwrap();
        let merged = assemble::<ExecutionTally>(
            vec![(T0, decode_slice(&hour).unwrap())],
            Interval::H1,
            &Filters::default(),
            Groups::With,
        );
        assert_eq!(
            serde_json::to_value(&merged.by_symbol).unwrap(),
            serde_json::to_value(&direct.by_symbol).unwrap()
        );
        assert_eq!(merged.summary.fills, 50);
        assert_eq!(merged.summary.slippage_bps.count, 50);
    }
}
