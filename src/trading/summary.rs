//! Summaries of the orders and execution reports per minute, five minutes,
//! fifteen minutes and hour ([`LEVELS`]), so that their cost follows the
//! length of the range, not the number of orders and fills in it.
//!
//! An order's figures change after its minute has passed (a fill or a
//! cancel arrives later), and so does a fill's slippage (a late tick
//! re-prices it). So the summaries are not written by ingest: ingest marks
//! what it touched, in the commit transaction, and [`refresh_once`]
//! recomputes the marked minutes from the trading tables, with the coarser
//! blocks that hold them:
//!
//! - *Marks* (`trading_marks`): `(kind, first minute, last minute)`, with a
//!   version that every new mark of the same span increments. An order
//!   marks its placement minute (and, when it brings a side or a strategy,
//!   the minutes of its fills, whose group it completes); a fill marks its
//!   minute; the quotes of a symbol mark the minutes from the first of them
//!   to the next later quote already stored (the fills they re-price), or
//!   to an hour past now when there is none.
//! - *Summaries* (`trading_summaries`): per kind and block (a minute, five
//!   or fifteen minutes, an hour), the [`Slice`] of the block, encoded by
//!   [`encode_slice`].
//! - A refresh reads marks, recomputes one hour of one kind from the raw
//!   rows (never the current minute, which ingest keeps marking again), and
//!   writes the minutes, the blocks above them (each re-merged from the
//!   stored blocks of the level below, inside the write) and the removal of
//!   exactly the marks it read, in one transaction, which the store refuses
//!   when any of those marks changed meanwhile (newer data arrived: the next
//!   pass redoes it).
//! - A report ([`orders_report`], [`execution_report`]) reads the marks,
//!   then the largest whole clean blocks of the levels that divide its
//!   interval, and the rest (marked minutes, partial minutes at the edges)
//!   from the raw rows. So it is exact whatever the refresher's progress;
//!   the refresher only makes it cheap.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::report::{
    Coarse, Filters, Groups, Merged, Piece, Report, Slice, Tally, add_to_minute_slices,
    minute_coarse, report as assemble,
};
use super::report::{ExecutionTally, GroupKey, OrderTally};
use super::{OrderDelta, TradingBatch};
use crate::rollup::{Accumulator, Interval, TimeRange};
use crate::store::{Store, StoreError};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// The summary levels (block lengths, ms), finest first, each a multiple of
/// the one before: a block of a coarser level is the merge of the blocks of
/// the finer one inside it. The levels between a minute and an hour keep the
/// edges of an hourly report to at most 3 + 2 + 4 blocks at each end.
pub const LEVELS: [i64; 4] = [MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS, HOUR_MS];

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

/// A block's summary as stored: the encoded [`Slice`] (`fine`), its encoded
/// [`Coarse`] part (`coarse`, all an unfiltered report reads) and a digest
/// of `coarse` (what the decoded-block caches compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryBody {
    pub digest: Vec<u8>,
    pub coarse: Vec<u8>,
    pub fine: Vec<u8>,
}

/// Which part of the stored summaries a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryPart {
    Digest,
    Coarse,
    Fine,
}

impl SummaryPart {
    pub fn column(self) -> &'static str {
        match self {
            SummaryPart::Digest => "digest",
            SummaryPart::Coarse => "coarse",
            SummaryPart::Fine => "fine",
        }
    }
}

/// Merges the `fine` parts of the blocks inside a coarser block into its
/// body (`None`: nothing in it). Given to the store, which calls it inside
/// its write transaction.
pub type MergeSlices = fn(&[Vec<u8>]) -> Result<Option<SummaryBody>, StoreError>;

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
const FORMAT: u8 = 2;

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

/// The stored parts of a block's slice. `fine`: the format, the group
/// count, then each group's key and tally. `coarse`: the format, then its
/// [`Coarse`] (`all`, then the tallies per symbol, strategy, side, and
/// symbol and side), which an unfiltered report reads instead.
pub fn encode_slice<T: Tally>(slice: &Slice<T>) -> SummaryBody {
    let mut fine = Encoder {
        bytes: vec![FORMAT],
    };
    fine.u64(slice.len() as u64);
    for (key, tally) in slice {
        fine.text(key.symbol.as_deref());
        fine.text(key.strategy_id.as_deref());
        fine.text(key.side.as_deref());
        tally.encode(&mut fine);
    }
    let mut out = Encoder {
        bytes: vec![FORMAT],
    };
    let coarse = Coarse::of(slice, &Filters::default());
    coarse.all.encode(&mut out);
    for map in [&coarse.by_symbol, &coarse.by_strategy, &coarse.by_side] {
        out.u64(map.len() as u64);
        for (key, tally) in map {
            out.text(Some(key));
            tally.encode(&mut out);
        }
    }
    out.u64(coarse.by_symbol_side.len() as u64);
    for ((symbol, side), tally) in &coarse.by_symbol_side {
        out.text(Some(symbol));
        out.text(Some(side));
        tally.encode(&mut out);
    }
    SummaryBody {
        digest: digest(&out.bytes),
        coarse: out.bytes,
        fine: fine.bytes,
    }
}

/// The first 16 bytes of the SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)[..16].to_vec()
}

fn corrupt(error: String) -> StoreError {
    StoreError::Corrupt(format!("trading summary: {error}"))
}

/// A decoder past the format byte of `bytes`.
fn open(bytes: &[u8]) -> Result<Decoder<'_>, StoreError> {
    let mut input = Decoder { input: bytes };
    let format = input.take(1).map_err(corrupt)?[0];
    if format != FORMAT {
        return Err(corrupt(format!("unknown format {format}")));
    }
    Ok(input)
}

fn finished(input: &Decoder<'_>) -> Result<(), StoreError> {
    if input.input.is_empty() {
        Ok(())
    } else {
        Err(corrupt(format!("{} bytes past the end", input.input.len())))
    }
}

/// The slice whose `fine` part [`encode_slice`] wrote; anything else is
/// `Corrupt`.
pub fn decode_slice<T: Tally>(fine: &[u8]) -> Result<Slice<T>, StoreError> {
    let mut input = open(fine)?;
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
    finished(&input)?;
    Ok(slice)
}

/// The `coarse` part [`encode_slice`] wrote.
pub fn decode_coarse<T: Tally>(coarse: &[u8]) -> Result<Coarse<T>, StoreError> {
    let mut input = open(coarse)?;
    let mut coarse = Coarse {
        all: T::decode(&mut input).map_err(corrupt)?,
        ..Coarse::default()
    };
    let text = |input: &mut Decoder<'_>| -> Result<String, StoreError> {
        input
            .text()
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("missing group key".into()))
    };
    for map in [
        &mut coarse.by_symbol,
        &mut coarse.by_strategy,
        &mut coarse.by_side,
    ] {
        for _ in 0..input.u64().map_err(corrupt)? {
            let key = text(&mut input)?;
            map.insert(key, T::decode(&mut input).map_err(corrupt)?);
        }
    }
    for _ in 0..input.u64().map_err(corrupt)? {
        let key = (text(&mut input)?, text(&mut input)?);
        coarse
            .by_symbol_side
            .insert(key, T::decode(&mut input).map_err(corrupt)?);
    }
    finished(&input)?;
    Ok(coarse)
}

fn merge_encoded<T: Tally>(minutes: &[Vec<u8>]) -> Result<Option<SummaryBody>, StoreError> {
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

/// The blocks above the written `minutes` that a summary write re-merges,
/// level by level, finest first: `(finer span, span, block start)`, each
/// block the merge of the stored blocks of `finer` inside it.
pub fn blocks_above(minutes: impl IntoIterator<Item = i64>) -> Vec<(i64, i64, i64)> {
    let mut touched: BTreeSet<i64> = minutes.into_iter().collect();
    let mut blocks = Vec::new();
    for pair in LEVELS.windows(2) {
        let (finer, span) = (pair[0], pair[1]);
        touched = touched
            .iter()
            .map(|start| start - start.rem_euclid(span))
            .collect();
        blocks.extend(touched.iter().map(|block| (finer, span, *block)));
    }
    blocks
}

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
    fn cache() -> &'static BlockCache<Self>;
    fn read_raw(
        store: &dyn Store,
        start_ms: i64,
        end_ms: i64,
    ) -> impl Future<Output = Result<Vec<Self::Item>, StoreError>> + Send;
}

impl Source for OrderTally {
    const KIND: SummaryKind = SummaryKind::Orders;
    fn cache() -> &'static BlockCache<Self> {
        static CACHE: LazyLock<BlockCache<OrderTally>> = LazyLock::new(BlockCache::default);
        &CACHE
    }
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
    fn cache() -> &'static BlockCache<Self> {
        static CACHE: LazyLock<BlockCache<ExecutionTally>> = LazyLock::new(BlockCache::default);
        &CACHE
    }
    async fn read_raw(
        store: &dyn Store,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Self::Item>, StoreError> {
        store.read_fills(start_ms, end_ms).await
    }
}

/// Blocks whose decoded coarse part a [`BlockCache`] keeps, per kind: a
/// day of hours and the edges of a few ranges. A decoded block holds dense
/// sketches, about half a MiB for a busy hour, so this bounds the cache to
/// a few tens of MiB per kind.
const BLOCK_CACHE_ENTRIES: usize = 64;

/// The decoded coarse parts of the blocks read lately, per kind and
/// process: unfiltered reports of overlapping ranges (a dashboard polling
/// the last day) decode each block once. An entry serves a read only when
/// the stored bytes are the very bytes it was decoded from, so it can never
/// be stale, whatever store or instance wrote them. Least recently used
/// entries go first.
pub struct BlockCache<T: Tally> {
    entries: Mutex<HashMap<(i64, i64), CachedBlock<T>>>,
    /// Runs of consecutive blocks of one span merged: the last few asked
    /// for, each with the digests of its blocks.
    runs: Mutex<Vec<CachedRun<T>>>,
    /// The raw items of clean minutes at the edges of ranges, each with
    /// the digest of the minute's stored summary.
    minutes: Mutex<Vec<CachedMinute<T>>>,
}

/// Edge minutes whose raw items a [`BlockCache`] keeps: a range ending now
/// starts inside another minute every minute, and a few ranges (reports of
/// the last hour, day, week) are polled at once. A minute holds a few
/// hundred orders or fills at 10 million events over three days.
const MINUTE_CACHE_ENTRIES: usize = 8;

struct CachedMinute<T: Tally> {
    minute: i64,
    digest: Vec<u8>,
    items: Arc<Vec<T::Item>>,
    used: u64,
}

/// Runs whose merge a [`BlockCache`] keeps: a report of the last day needs
/// its run of hours and, at each edge, a run of 15-, 5- and 1-minute blocks
/// (which change every minute); room for a few such reports.
const RUN_CACHE_ENTRIES: usize = 24;

struct CachedRun<T> {
    span: i64,
    blocks: Vec<(i64, Vec<u8>)>,
    merged: Arc<Merged<T>>,
    used: u64,
}

struct CachedBlock<T> {
    digest: Vec<u8>,
    coarse: Arc<Coarse<T>>,
    used: u64,
}

impl<T: Tally> Default for BlockCache<T> {
    fn default() -> Self {
        BlockCache {
            entries: Mutex::new(HashMap::new()),
            runs: Mutex::new(Vec::new()),
            minutes: Mutex::new(Vec::new()),
        }
    }
}

/// Orders the uses of cache entries (least recently used goes first).
static CACHE_CLOCK: AtomicU64 = AtomicU64::new(0);

/// Makes room for one more of `entries` (at most `capacity`): drops the
/// least recently `used` when full.
fn make_room<E>(entries: &mut Vec<E>, capacity: usize, used: impl Fn(&E) -> u64) {
    if entries.len() >= capacity
        && let Some(oldest) = (0..entries.len()).min_by_key(|index| used(&entries[*index]))
    {
        entries.swap_remove(oldest);
    }
}

impl<T: Tally> BlockCache<T> {
    /// The decoded block `(span, start)` if its stored coarse part has
    /// `digest`.
    fn get(&self, span: i64, start: i64, digest: &[u8]) -> Option<Arc<Coarse<T>>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries
            .get_mut(&(span, start))
            .filter(|entry| entry.digest == digest)?;
        entry.used = CACHE_CLOCK.fetch_add(1, Ordering::Relaxed);
        Some(Arc::clone(&entry.coarse))
    }

    /// The merge of the blocks of `span` `blocks` (start and digest of
    /// each, in order), if kept.
    fn run(&self, span: i64, blocks: &[(i64, Vec<u8>)]) -> Option<Arc<Merged<T>>> {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let run = runs
            .iter_mut()
            .find(|run| run.span == span && run.blocks == blocks)?;
        run.used = CACHE_CLOCK.fetch_add(1, Ordering::Relaxed);
        Some(Arc::clone(&run.merged))
    }

    fn keep_run(&self, span: i64, blocks: Vec<(i64, Vec<u8>)>, merged: Arc<Merged<T>>) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        make_room(&mut runs, RUN_CACHE_ENTRIES, |run| run.used);
        runs.push(CachedRun {
            span,
            blocks,
            merged,
            used: CACHE_CLOCK.fetch_add(1, Ordering::Relaxed),
        });
    }

    /// The raw items of `minute` if kept for its summary `digest`.
    fn minute(&self, minute: i64, digest: &[u8]) -> Option<Arc<Vec<T::Item>>> {
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = minutes
            .iter_mut()
            .find(|entry| entry.minute == minute && entry.digest == digest)?;
        entry.used = CACHE_CLOCK.fetch_add(1, Ordering::Relaxed);
        Some(Arc::clone(&entry.items))
    }

    fn keep_minute(&self, minute: i64, digest: Vec<u8>, items: Arc<Vec<T::Item>>) {
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        minutes.retain(|entry| entry.minute != minute);
        make_room(&mut minutes, MINUTE_CACHE_ENTRIES, |entry| entry.used);
        minutes.push(CachedMinute {
            minute,
            digest,
            items,
            used: CACHE_CLOCK.fetch_add(1, Ordering::Relaxed),
        });
    }

    /// Decodes the coarse part `bytes` of block `(span, start)` and keeps
    /// it under the digest of those very bytes.
    fn decode(&self, span: i64, start: i64, bytes: &[u8]) -> Result<Arc<Coarse<T>>, StoreError> {
        let coarse = Arc::new(decode_coarse(bytes)?);
        let key = (span, start);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= BLOCK_CACHE_ENTRIES
            && !entries.contains_key(&key)
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| *key)
        {
            entries.remove(&oldest);
        }
        entries.insert(
            key,
            CachedBlock {
                digest: digest(bytes),
                coarse: Arc::clone(&coarse),
                used: CACHE_CLOCK.fetch_add(1, Ordering::Relaxed),
            },
        );
        Ok(coarse)
    }
}

/// How a report's range splits: spans of whole clean blocks per summary
/// level (an index into [`LEVELS`]), and spans read from the raw rows
/// (marked minutes, partial minutes at the edges). Spans are half-open, in
/// order, merged where they touch.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    raw: Vec<(i64, i64)>,
    levels: Vec<Vec<(i64, i64)>>,
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

fn ceil_to(ms: i64, step: i64) -> i64 {
    let floor = ms - ms.rem_euclid(step);
    if floor == ms { ms } else { floor + step }
}

/// Splits `range` given the dirty minutes (starts) of the kind, using the
/// levels `LEVELS[..usable]` (each a multiple of the one before).
fn plan(range: TimeRange, usable: usize, dirty: &BTreeSet<i64>) -> Plan {
    let mut plan = Plan {
        raw: Vec::new(),
        levels: vec![Vec::new(); usable],
    };
    let (start, end) = (range.start_ms, range.end_ms);
    let first_minute = ceil_to(start, MINUTE_MS);
    let end_minute = minute_of(end);
    if first_minute >= end_minute {
        push_span(&mut plan.raw, start, end);
        return plan;
    }
    push_span(&mut plan.raw, start, first_minute);
    cover(&mut plan, first_minute, end_minute, usable - 1, dirty);
    push_span(&mut plan.raw, end_minute, end);
    plan
}

/// Covers the whole minutes `[start, end)` with the largest clean blocks of
/// `LEVELS[..=level]`, marked minutes raw.
fn cover(plan: &mut Plan, start: i64, end: i64, level: usize, dirty: &BTreeSet<i64>) {
    if start >= end {
        return;
    }
    if level == 0 {
        for minute in (start..end).step_by(MINUTE_MS as usize) {
            if dirty.contains(&minute) {
                push_span(&mut plan.raw, minute, minute + MINUTE_MS);
            } else {
                push_span(&mut plan.levels[0], minute, minute + MINUTE_MS);
            }
        }
        return;
    }
    let size = LEVELS[level];
    let (first, last) = (ceil_to(start, size), end - end.rem_euclid(size));
    if first >= last {
        cover(plan, start, end, level - 1, dirty);
        return;
    }
    cover(plan, start, first, level - 1, dirty);
    for block in (first..last).step_by(size as usize) {
        if dirty.range(block..block + size).next().is_some() {
            cover(plan, block, block + size, level - 1, dirty);
        } else {
            push_span(&mut plan.levels[level], block, block + size);
        }
    }
    cover(plan, last, end, level - 1, dirty);
}

/// How many of [`LEVELS`] a report by `interval` can use: those that
/// divide it, so every block lies inside one bucket.
fn usable_levels(interval: Interval) -> usize {
    LEVELS
        .iter()
        .take_while(|size| interval.millis() % **size == 0)
        .count()
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

/// The coarse parts of the blocks of `span` in `[start, end)` whose
/// digests are `digests`, each with the digest of exactly what was decoded:
/// from `cache` where it holds the same bytes, else read and decoded (and
/// kept).
async fn cached_coarse<T: Source>(
    store: &dyn Store,
    cache: &BlockCache<T>,
    span: i64,
    (start, end): (i64, i64),
    digests: Vec<(i64, Vec<u8>)>,
) -> Result<BTreeMap<i64, (Vec<u8>, Arc<Coarse<T>>)>, StoreError> {
    let wanted = digests.len();
    let mut decoded: BTreeMap<i64, (Vec<u8>, Arc<Coarse<T>>)> = digests
        .into_iter()
        .filter_map(|(block, digest)| {
            let coarse = cache.get(span, block, &digest)?;
            Some((block, (digest, coarse)))
        })
        .collect();
    if decoded.len() < wanted {
        for (block, coarse) in store
            .read_trading_summaries(T::KIND, span, start, end, SummaryPart::Coarse)
            .await?
        {
            if let std::collections::btree_map::Entry::Vacant(entry) = decoded.entry(block) {
                entry.insert((digest(&coarse), cache.decode(span, block, &coarse)?));
            }
        }
    }
    Ok(decoded)
}

/// The clean blocks of `plan` (unfiltered), as runs of merged blocks: the
/// coarse parts, decoded once per process, and each run of blocks of one
/// span merged once while its blocks stay the same (the runs at the edges
/// of a range ending now change once a minute). Only the digests are read
/// each time. The largest blocks come first, so that a report adds smaller
/// sketches into larger ones, which seldom have to widen their bins.
async fn unfiltered_runs<T: Source>(
    store: &dyn Store,
    plan: &Plan,
) -> Result<Vec<Arc<Merged<T>>>, StoreError> {
    let cache = T::cache();
    let mut runs = Vec::new();
    for (level, ranges) in plan.levels.iter().enumerate().rev() {
        let span = LEVELS[level];
        for &(start, end) in ranges {
            let digests = store
                .read_trading_summaries(T::KIND, span, start, end, SummaryPart::Digest)
                .await?;
            if let Some(run) = cache.run(span, &digests) {
                runs.push(run);
                continue;
            }
            let decoded = cached_coarse(store, cache, span, (start, end), digests).await?;
            let merged = Arc::new(Merged::of(
                decoded
                    .iter()
                    .map(|(block, (_, coarse))| (*block, &**coarse)),
            ));
            let blocks = decoded
                .into_iter()
                .map(|(block, (digest, _))| (block, digest))
                .collect();
            cache.keep_run(span, blocks, Arc::clone(&merged));
            runs.push(merged);
        }
    }
    Ok(runs)
}

/// The raw items of `[start, end)`, or of a superset of it (the caller
/// keeps those inside). Part of a clean minute (the edge of a range) comes
/// from the items of the whole minute, read once and then kept while the
/// minute's stored summary has the digest it had when they were read: a
/// report of the last day starts inside another minute on every request,
/// and at 10 million events reading that part of a minute was what grew
/// with the store. Whatever changes a minute's rows marks it in the same
/// transaction (a marked minute is not taken from here) and has its
/// summary rewritten before the mark goes, with a new digest: an order
/// changes one of its minute's counts, a fill its minute's fill count or
/// the tallies of its side and strategy, a late quote the slippage of the
/// fills it re-prices. Anything else is read.
async fn raw_items<T: Source>(
    store: &dyn Store,
    (start, end): (i64, i64),
    dirty: &BTreeSet<i64>,
) -> Result<Arc<Vec<T::Item>>, StoreError> {
    let minute = minute_of(start);
    let part_of_clean_minute = end <= minute + MINUTE_MS && !dirty.contains(&minute);
    if !part_of_clean_minute {
        return Ok(Arc::new(T::read_raw(store, start, end).await?));
    }
    let summary = store
        .read_trading_summaries(
            T::KIND,
            MINUTE_MS,
            minute,
            minute + MINUTE_MS,
            SummaryPart::Digest,
        )
        .await?;
    let Some((_, digest)) = summary.into_iter().next() else {
        // Nothing summarised: an empty minute, or one not summarised yet.
        return Ok(Arc::new(T::read_raw(store, start, end).await?));
    };
    let cache = T::cache();
    if let Some(items) = cache.minute(minute, &digest) {
        return Ok(items);
    }
    let items = Arc::new(T::read_raw(store, minute, minute + MINUTE_MS).await?);
    cache.keep_minute(minute, digest, Arc::clone(&items));
    Ok(items)
}

async fn summarised_report<T: Source>(
    store: &dyn Store,
    range: TimeRange,
    interval: Interval,
    filters: &Filters,
    groups: Groups,
) -> Result<Report<T::Figures>, StoreError> {
    if range.is_empty() {
        return Ok(assemble::<T>(std::iter::empty(), interval, groups));
    }
    let marks = store
        .trading_marks(Some((T::KIND, range.start_ms, range.end_ms)))
        .await?;
    let dirty = dirty_minutes(&marks, T::KIND, range.start_ms, range.end_ms);
    let plan = plan(range, usable_levels(interval), &dirty);
    let mut blocks: Vec<(i64, Arc<Coarse<T>>)> = Vec::new();
    let runs: Vec<Arc<Merged<T>>> = if filters.is_empty() {
        unfiltered_runs::<T>(store, &plan).await?
    } else {
        for (level, spans) in plan.levels.iter().enumerate() {
            let span = LEVELS[level];
            for &(start, end) in spans {
                // The groups themselves, to select from.
                for (block, fine) in store
                    .read_trading_summaries(T::KIND, span, start, end, SummaryPart::Fine)
                    .await?
                {
                    blocks.push((block, Arc::new(Coarse::of(&decode_slice(&fine)?, filters))));
                }
            }
        }
        Vec::new()
    };
    for (start, end) in plan.raw {
        let items = raw_items::<T>(store, (start, end), &dirty).await?;
        let inside = items
            .iter()
            .filter(|item| T::at(item).is_some_and(|at| start <= at && at < end));
        blocks.extend(
            minute_coarse::<T>(inside, filters)
                .into_iter()
                .map(|(minute, coarse)| (minute, Arc::new(coarse))),
        );
    }
    let pieces = runs.iter().map(|run| Piece::Merged(&**run)).chain(
        blocks
            .iter()
            .map(|(start, coarse)| Piece::Block(*start, &**coarse)),
    );
    Ok(assemble(pieces, interval, groups))
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

/// What a refresh pass leaves alone: the versions of the marks it saw that
/// touch the last two minutes. Ingest keeps marking those minutes again
/// while it runs (an order placed a few seconds before the minute turned is
/// filled after it), so recomputing them at once is mostly work the next
/// commit undoes: the store refuses the write when a mark changed
/// meanwhile. Such a mark is taken up once a pass finds it at the version
/// the previous pass saw: settled. Reports read those minutes raw
/// meanwhile, so they stay exact.
#[derive(Debug, Default)]
pub struct Settling {
    seen: HashMap<(SummaryKind, i64, i64), i64>,
}

/// The marks one pass may take up, and those it waits for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Marks taken up.
    pub ready: u64,
    /// Marks of past minutes left for a later pass (not yet settled).
    pub waiting: u64,
}

/// The version [`Settling`] records for a mark a pass wrote itself (the
/// rest of a longer mark, past the hour it recomputed): ingest did not
/// make it, so the next pass takes it up whatever its version.
const TRUSTED: i64 = i64::MIN;

impl Settling {
    /// Records the marks a pass wrote itself (see [`TRUSTED`]).
    fn trust(&mut self, written: Vec<(SummaryKind, i64, i64)>) {
        for key in written {
            self.seen.insert(key, TRUSTED);
        }
    }

    /// Splits `marks` at `now_minute` into those a pass takes up and the
    /// count of those it leaves for later; never the current minute's,
    /// which ingest keeps marking (reports read that minute raw).
    fn sort(&mut self, marks: Vec<Mark>, now_minute: i64) -> (Vec<Mark>, u64) {
        let previous = std::mem::take(&mut self.seen);
        let mut ready = Vec::with_capacity(marks.len());
        let mut waiting = 0;
        for mark in marks {
            if mark.first_minute >= now_minute {
                continue;
            }
            if mark.last_minute < now_minute - MINUTE_MS {
                ready.push(mark);
                continue;
            }
            let key = (mark.kind, mark.first_minute, mark.last_minute);
            let seen = previous.get(&key);
            if seen == Some(&mark.version) || seen == Some(&TRUSTED) {
                ready.push(mark);
            } else {
                waiting += 1;
            }
            self.seen.insert(key, mark.version);
        }
        (ready, waiting)
    }
}

/// About how many rows [`refresh_kind`] reads at once. Summaries are per
/// minute, and any part of a minute can be read on its own: the rows are
/// read a piece of time at a time, each piece's span chosen from the
/// density of the last one (see [`next_piece`]). Under a sustained 20 000
/// events/s, 10-second pieces (some 36 000 orders each) raised the
/// service's RSS by 60-90 MiB after every minute, settling higher each
/// time; pieces of a few thousand rows keep it flat, and a sparse backfill
/// still reads a whole minute at once (BENCHMARKS, session 12).
const PIECE_ROWS: usize = 4_000;
/// The span of a pass's first piece.
const FIRST_PIECE_MS: i64 = 2_000;
/// The shortest span of a piece.
const MIN_PIECE_MS: i64 = 250;

/// The span of the next piece, after a piece meant to span `piece_ms` read
/// `rows` rows in `read_ms` (less than `piece_ms` at the end of a minute):
/// the span that would have held about [`PIECE_ROWS`] at that density, at
/// most four times `piece_ms` (a denser stretch ahead is met by a piece of
/// moderate size) and at most a minute.
fn next_piece(piece_ms: i64, read_ms: i64, rows: usize) -> i64 {
    let fitting = match i64::try_from(rows) {
        Ok(rows) if rows > 0 => read_ms.max(1).saturating_mul(PIECE_ROWS as i64) / rows,
        _ => i64::MAX,
    };
    fitting
        .min(piece_ms.max(1).saturating_mul(4))
        .clamp(MIN_PIECE_MS, MINUTE_MS)
}

/// Recomputes the earliest marked hour of `T`'s kind in `marks` (the
/// marks a pass takes up), up to the current minute. Returns the marks it
/// wrote for what lies past that hour (the rest of longer marks).
async fn refresh_kind<T: Source>(
    store: &dyn Store,
    marks: &[Mark],
    now_minute: i64,
) -> Result<Vec<(SummaryKind, i64, i64)>, StoreError> {
    let mine: Vec<&Mark> = marks.iter().filter(|mark| mark.kind == T::KIND).collect();
    let Some(earliest) = mine.iter().map(|mark| mark.first_minute).min() else {
        return Ok(Vec::new());
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
    if minutes.is_empty() {
        return Ok(Vec::new());
    }
    // The rows are read and tallied a piece at a time, each piece dropped
    // before the next is read: a busy minute holds some hundred thousand
    // orders or fills, and a pass after a backlog takes up to an hour.
    let mut computed = BTreeMap::new();
    let mut piece = FIRST_PIECE_MS;
    for &minute in &minutes {
        let mut from = minute;
        while from < minute + MINUTE_MS {
            let to = (from + piece).min(minute + MINUTE_MS);
            let items = T::read_raw(store, from, to).await?;
            add_to_minute_slices::<T>(&mut computed, &items);
            piece = next_piece(piece, to - from, items.len());
            from = to;
        }
    }
    let writes: Vec<(i64, Option<SummaryBody>)> = minutes
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
        .write_trading_summaries(
            T::KIND,
            writes,
            cleared,
            remainders.clone(),
            merge_for(T::KIND),
        )
        .await?;
    if !written {
        tracing::debug!(
            kind = ?T::KIND,
            hour,
            "trading summary write refused: a mark changed meanwhile; the next pass redoes it"
        );
        return Ok(Vec::new());
    }
    Ok(remainders)
}

/// One refresh pass: the earliest marked hour of each kind, of the marks
/// `settling` lets it take up.
pub async fn refresh_once(store: &dyn Store, settling: &mut Settling) -> Result<Pass, StoreError> {
    let marks = store.trading_marks(None).await?;
    let now_minute = minute_of(crate::model::event::now_ms());
    let (ready, waiting) = settling.sort(marks, now_minute);
    let mut remainders = refresh_kind::<OrderTally>(store, &ready, now_minute).await?;
    remainders.extend(refresh_kind::<ExecutionTally>(store, &ready, now_minute).await?);
    settling.trust(remainders);
    Ok(Pass {
        ready: ready.len() as u64,
        waiting,
    })
}

/// Refreshes until no mark is left but those of the current minute, or
/// until two passes in a row found only marks still changing (ingest is
/// running; the service's refresher takes them up), or `limit` passes ran;
/// for the `trading rebuild` command. Returns the passes run.
pub async fn refresh_all(store: &dyn Store, limit: u64) -> Result<u64, StoreError> {
    let mut settling = Settling::default();
    let mut unsettled = 0;
    for pass in 0..limit {
        let Pass { ready, waiting } = refresh_once(store, &mut settling).await?;
        unsettled = if ready == 0 { unsettled + 1 } else { 0 };
        if ready == 0 && (waiting == 0 || unsettled >= 2) {
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

/// How often the refresher has the store reclaim the dead rows of the
/// marks (see [`Store::reclaim_trading_marks`]): a busy ingest leaves some
/// thousands a second.
const MARKS_RECLAIM_INTERVAL: Duration = Duration::from_secs(10);

/// Runs refresh passes until `shutdown`: one pass, then [`pause_after`].
/// Reports the outstanding marks through `on_pass`.
pub async fn run_refresher(
    store: std::sync::Arc<dyn Store>,
    idle: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    on_pass: impl Fn(u64) + Send + 'static,
) {
    let mut reclaimed = Instant::now();
    let mut settling = Settling::default();
    loop {
        let started = Instant::now();
        if reclaimed.elapsed() >= MARKS_RECLAIM_INTERVAL {
            reclaimed = started;
            if let Err(error) = store.reclaim_trading_marks().await {
                tracing::warn!(%error, "reclaiming the trading marks' dead rows failed; retrying later");
            }
        }
        let backlog = match refresh_once(&*store, &mut settling).await {
            Ok(pass) => {
                on_pass(pass.ready + pass.waiting);
                pass.ready > 0
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

    #[test]
    fn pieces_hold_about_the_target_rows_within_their_bounds() {
        // Dense: shrinks to the span that holds the target.
        assert_eq!(next_piece(2_000, 2_000, 8_000), 1_000);
        assert_eq!(next_piece(2_000, 2_000, 1_000_000), MIN_PIECE_MS);
        // Sparse or empty: grows at most fourfold a step, up to a minute.
        assert_eq!(next_piece(2_000, 2_000, 1), 8_000);
        assert_eq!(next_piece(2_000, 2_000, 0), 8_000);
        assert_eq!(next_piece(32_000, 32_000, 0), MINUTE_MS);
        // The short remainder of a minute: its density counts, its span
        // does not hold the next piece back.
        assert_eq!(next_piece(8_000, 10, 0), 32_000);
        assert_eq!(next_piece(2_000, 500, 2_000), 1_000);
        // About right: stays.
        assert_eq!(next_piece(2_000, 2_000, PIECE_ROWS), 2_000);
    }
    use crate::trading::report::minute_slices;

    const T0: i64 = 1_700_000_000_000 / HOUR_MS * HOUR_MS;

    /// A fill of one BTCUSDT buy at `price`, quantity 1, mid 100, with the
    /// event id `i`; tests change what they need.
    fn fill_view(i: u128, timestamp_ms: i64, price: f64) -> crate::trading::FillView {
        crate::trading::FillView {
            fill: crate::trading::FillRow {
                event_id: uuid::Uuid::from_u128(i),
                order_id: None,
                symbol: Some("BTCUSDT".into()),
                side: Some("buy".into()),
                strategy_id: None,
                timestamp_ms,
                price,
                quantity: 1.0,
                is_maker: None,
                commission: None,
            },
            mid: Some(100.0),
        }
    }

    #[test]
    fn marks_of_the_last_minutes_wait_until_they_stop_changing() {
        let now_minute = T0 + 10 * HOUR_MS;
        let mark = |kind, first_minute, last_minute, version| Mark {
            kind,
            first_minute,
            last_minute,
            version,
        };
        let old = mark(
            SummaryKind::Fills,
            now_minute - 5 * MINUTE_MS,
            now_minute - 2 * MINUTE_MS,
            7,
        );
        let previous = mark(SummaryKind::Orders, now_minute - MINUTE_MS, now_minute, 0);
        let current = mark(SummaryKind::Fills, now_minute, now_minute, 3);
        let mut settling = Settling::default();
        // First sight: the old mark is taken up, the previous minute's waits,
        // the current minute's is never counted.
        let (ready, waiting) = settling.sort(vec![old, previous, current], now_minute);
        assert_eq!((ready, waiting), (vec![old], 1));
        // Changed since: it waits again.
        let bumped = Mark {
            version: 1,
            ..previous
        };
        let (ready, waiting) = settling.sort(vec![bumped, current], now_minute);
        assert_eq!((ready, waiting), (vec![], 1));
        // Unchanged since the last pass: settled, taken up.
        let (ready, waiting) = settling.sort(vec![bumped, current], now_minute);
        assert_eq!((ready, waiting), (vec![bumped], 0));
        // A pass that did not see a mark forgets it.
        let (_, waiting) = settling.sort(vec![], now_minute);
        assert_eq!(waiting, 0);
        let (ready, waiting) = settling.sort(vec![bumped], now_minute);
        assert_eq!((ready, waiting), (vec![], 1));
        // The rest of a longer mark, written by a pass itself, is taken up
        // by the next pass without waiting.
        let rest = mark(
            SummaryKind::Fills,
            now_minute - MINUTE_MS,
            now_minute + HOUR_MS,
            0,
        );
        settling.trust(vec![(rest.kind, rest.first_minute, rest.last_minute)]);
        let (ready, waiting) = settling.sort(vec![rest], now_minute);
        assert_eq!((ready, waiting), (vec![rest], 0));
    }

    #[test]
    fn a_plan_covers_the_range_once() {
        let marked = T0 + HOUR_MS + 7 * MINUTE_MS;
        let dirty: BTreeSet<i64> = [marked].into();
        let range = TimeRange {
            start_ms: T0 - 90_500,
            end_ms: T0 + 3 * HOUR_MS + 61_000,
        };
        for usable in 1..=LEVELS.len() {
            let plan = plan(range, usable, &dirty);
            let mut covered: Vec<(i64, i64)> = plan.raw.clone();
            for (level, spans) in plan.levels.iter().enumerate() {
                for (start, end) in spans {
                    assert_eq!(start.rem_euclid(LEVELS[level]), 0);
                    assert_eq!(end.rem_euclid(LEVELS[level]), 0);
                    assert!(!dirty.iter().any(|m| m >= start && m < end));
                }
                covered.extend(spans.iter().copied());
            }
            covered.sort_unstable();
            let mut at = range.start_ms;
            for (start, end) in covered {
                assert_eq!(start, at, "{usable} levels: gap or overlap at {start}");
                at = end;
            }
            assert_eq!(at, range.end_ms);
            assert!(plan.raw.contains(&(marked, marked + MINUTE_MS)));
            // The coarsest level usable holds the clean whole blocks.
            let coarsest = &plan.levels[usable - 1];
            if usable == LEVELS.len() {
                assert!(coarsest.contains(&(T0, T0 + HOUR_MS)), "{coarsest:?}");
                assert!(coarsest.contains(&(T0 + 2 * HOUR_MS, T0 + 3 * HOUR_MS)));
                assert!(plan.levels[1].contains(&(T0 + HOUR_MS, T0 + HOUR_MS + 5 * MINUTE_MS)));
                assert!(
                    plan.levels[2].contains(&(T0 + HOUR_MS + 15 * MINUTE_MS, T0 + 2 * HOUR_MS))
                );
            }
        }
        assert_eq!(usable_levels(Interval::M1), 1);
        assert_eq!(usable_levels(Interval::M5), 2);
        assert_eq!(usable_levels(Interval::M15), 3);
        assert_eq!(usable_levels(Interval::H4), 4);
    }

    #[test]
    fn tallying_the_rows_a_piece_at_a_time_encodes_the_same_minutes() {
        // Fills over three minutes, across symbols and sides, some minutes
        // split over several pieces as `refresh_kind` reads them.
        let views: Vec<crate::trading::FillView> = (0..240)
            .map(|i| {
                let mut view = fill_view(i, T0 + i as i64 * 750, 100.0 + (i % 13) as f64);
                let fill = &mut view.fill;
                fill.order_id = Some(format!("o-{}", i % 17));
                fill.symbol = Some(["BTCUSDT", "ETHUSDT"][(i % 2) as usize].into());
                fill.side = Some(["buy", "sell"][(i % 3 % 2) as usize].into());
                fill.strategy_id = (i % 5 == 0).then(|| "s-1".into());
                fill.quantity = 0.5 + (i % 7) as f64;
                fill.is_maker = Some(i % 4 == 0);
                fill.commission = Some(0.01 * i as f64);
                view.mid = Some(100.5);
                view
            })
            .collect();
        let whole = minute_slices::<ExecutionTally>(&views);
        assert_eq!(whole.len(), 3);
        let mut pieces = BTreeMap::new();
        for piece in views.chunks(7) {
            add_to_minute_slices::<ExecutionTally>(&mut pieces, piece);
        }
        let encoded = |slices: &BTreeMap<i64, Slice<ExecutionTally>>| -> Vec<(i64, Vec<u8>)> {
            slices
                .iter()
                .map(|(minute, slice)| (*minute, encode_slice(slice).fine))
                .collect()
        };
        assert_eq!(encoded(&pieces), encoded(&whole));
    }

    #[test]
    fn the_block_cache_serves_only_the_bytes_it_decoded() {
        let views: Vec<crate::trading::FillView> = (0..3)
            .map(|i| fill_view(i, T0 + i as i64, 100.0 + i as f64))
            .collect();
        let one = encode_slice(&minute_slices::<ExecutionTally>(&views[..1])[&T0]);
        let three = encode_slice(&minute_slices::<ExecutionTally>(&views)[&T0]);
        let cache = BlockCache::<ExecutionTally>::default();
        assert!(cache.get(HOUR_MS, T0, &one.digest).is_none());
        let first = cache.decode(HOUR_MS, T0, &one.coarse).unwrap();
        assert!(Arc::ptr_eq(
            &first,
            &cache.get(HOUR_MS, T0, &one.digest).unwrap()
        ));
        // Rewritten block: a miss, never the old entry.
        assert!(cache.get(HOUR_MS, T0, &three.digest).is_none());
        let again = cache.decode(HOUR_MS, T0, &three.coarse).unwrap();
        assert_eq!(again.all.finish().fills, 3);
        assert!(cache.get(HOUR_MS, T0, &one.digest).is_none());
        for hour in 0..(BLOCK_CACHE_ENTRIES as i64 + 5) {
            cache
                .decode(HOUR_MS, T0 + hour * HOUR_MS, &three.coarse)
                .unwrap();
        }
        assert_eq!(cache.entries.lock().unwrap().len(), BLOCK_CACHE_ENTRIES);
        assert!(cache.decode(HOUR_MS, T0, &[2, 0]).is_err());
    }

    #[test]
    fn a_range_inside_one_minute_is_raw() {
        let range = TimeRange {
            start_ms: T0 + 1_000,
            end_ms: T0 + 2_000,
        };
        let plan = plan(range, LEVELS.len(), &BTreeSet::new());
        assert_eq!(plan.raw, vec![(T0 + 1_000, T0 + 2_000)]);
        assert!(plan.levels.iter().all(Vec::is_empty));
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
            let body = encode_slice(slice);
            let decoded: Slice<ExecutionTally> = decode_slice(&body.fine).unwrap();
            assert_eq!(encode_slice(&decoded), body);
            for cut in [0, 1, 9, body.coarse.len() / 2, body.coarse.len() - 1] {
                assert!(decode_coarse::<ExecutionTally>(&body.coarse[..cut]).is_err());
            }
            for cut in [0, 1, 9, body.fine.len() / 2, body.fine.len() - 1] {
                assert!(decode_slice::<ExecutionTally>(&body.fine[..cut]).is_err());
            }
            let mut longer = body.coarse.clone();
            longer.push(0);
            assert!(decode_coarse::<ExecutionTally>(&longer).is_err());
        }
        // The merged report of the minutes equals the report of the rows.
        let direct = crate::trading::report::report_of::<ExecutionTally>(
            &views,
            Interval::H1,
            &Filters::default(),
            Groups::With,
        );
        let encoded: Vec<Vec<u8>> = slices
            .values()
            .map(|slice| encode_slice(slice).fine)
            .collect();
        let hour = merge_encoded::<ExecutionTally>(&encoded).unwrap().unwrap();
        let merged = assemble::<ExecutionTally>(
            [Piece::Block(T0, &decode_coarse(&hour.coarse).unwrap())],
            Interval::H1,
            Groups::With,
        );
        let filtered = Filters {
            symbol: Some("BTCUSDT".into()),
            ..Filters::default()
        };
        let from_fine = assemble::<ExecutionTally>(
            [Piece::Block(
                T0,
                &Coarse::of(&decode_slice(&hour.fine).unwrap(), &filtered),
            )],
            Interval::H1,
            Groups::With,
        );
        assert_eq!(from_fine.summary.fills, 25);
        assert_eq!(from_fine.by_symbol.len(), 1);
        // The same figures, up to the order of floating-point additions
        // (sketch bins merge exactly, so the percentiles are equal).
        assert_eq!(merged.by_symbol.len(), direct.by_symbol.len());
        for (got, want) in merged.by_symbol.iter().zip(&direct.by_symbol) {
            assert_eq!(got.key, want.key);
            let (got, want) = (&got.figures, &want.figures);
            assert_eq!((got.fills, got.maker_fills), (want.fills, want.maker_fills));
            assert_eq!(got.slippage_bps.p50, want.slippage_bps.p50);
            assert_eq!(got.slippage_bps.p99, want.slippage_bps.p99);
            assert!((got.commission - want.commission).abs() < 1e-9);
            assert!((got.notional - want.notional).abs() < 1e-9);
        }
        assert_eq!(merged.summary.fills, 50);
        assert_eq!(merged.summary.slippage_bps.count, 50);
    }
}
