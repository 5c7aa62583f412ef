//! The mergeable summary kept per rollup row.
//!
//! An [`Accumulator`] is one of two kinds:
//! - *count-only* ([`Accumulator::new_count_only`]): counts events and keeps
//!   nothing else; for metrics that are pure event counts;
//! - *valued* ([`Accumulator::new_with_values`]): also keeps the exact sum,
//!   min and max of the recorded values and a DDSketch (relative accuracy
//!   1%) for quantiles.
//!
//! Invariants:
//! - `count()` counts events; `value_count()` counts the values behind sum,
//!   min, max, mean and quantiles, so `value_count() <= count()`. An
//!   accumulator fed only through `record_value` (the normal case for a
//!   valued metric) has `value_count() == count()`.
//! - Non-finite values (NaN, ±inf) are ignored entirely: not counted, not
//!   summed, so one bad value cannot poison a bucket.
//! - Merging is exact for count, value count, min and max, associative and
//!   commutative up to float rounding of the sum, and the merged sketch is the
//!   sketch of the union of values. Mixed kinds: merging a valued accumulator
//!   into a count-only one (or recording a value into it) turns it valued;
//!   the events counted without a value keep counting in `count()` but not in
//!   the value statistics. Nothing is dropped, and `mean()` stays the mean of
//!   the values.
//! - Quantiles are clamped to the exact `[min, max]`, which can only bring
//!   the estimate closer to the true value.
//! - Every sketch has the default configuration (alpha 0.01, 2048 bins):
//!   those built here by construction, those decoded by
//!   [`Accumulator::from_parts`] by validation. So sketch merges never fail.
//! - Decoding never panics: bytes are checked against the encoder's grammar
//!   (see `validate_sketch_bytes`) before the sketch library sees them.

use std::sync::Arc;

use sketches_ddsketch::{Config, DDSketch};

/// Errors rebuilding an accumulator from stored columns.
#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    /// The stored sketch bytes, or the columns stored beside them, are not
    /// something this module could have written.
    #[error("corrupt sketch: {0}")]
    CorruptSketch(String),
}

/// Mergeable summary of the values of one metric in one bucket: count, sum,
/// min, max and a relative-error quantile sketch (DDSketch, alpha = 0.01).
#[derive(Clone)]
pub struct Accumulator {
    /// Events counted, with or without a value.
    count: u64,
    /// `None` for count-only. Behind a pointer: most of a batch's rows may
    /// be count-only, and a sketch is a few hundred bytes to tens of KiB.
    /// Shared, copied on the first write: readers clone cached decoded
    /// rows and then mostly only read or merge them, so a clone costs a
    /// reference count, not a copy of the sketch's bins.
    values: Option<Arc<ValueSummary>>,
}

/// Exact statistics plus the sketch of the recorded values.
#[derive(Clone)]
struct ValueSummary {
    /// Values recorded; always equal to the sketch's count.
    value_count: u64,
    sum: f64,
    /// `+inf` while no value was recorded, so merging needs no special case.
    min: f64,
    /// `-inf` while no value was recorded.
    max: f64,
    sketch: DDSketch,
}

impl ValueSummary {
    fn empty() -> Self {
        ValueSummary {
            value_count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: DDSketch::new(Config::defaults()),
        }
    }

    fn merge(&mut self, other: &ValueSummary) {
        if other.value_count == 0 {
            return;
        }
        self.value_count = self.value_count.saturating_add(other.value_count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        // Cannot fail: every sketch has the default config (module invariant).
        let merged = self.sketch.merge(&other.sketch);
        debug_assert!(merged.is_ok(), "sketch configs differ");
    }
}

impl std::fmt::Debug for Accumulator {
    // Hand-written: DDSketch has no Debug, and its bins are noise anyway.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = formatter.debug_struct("Accumulator");
        debug.field("count", &self.count);
        if let Some(values) = &self.values {
            debug
                .field("value_count", &values.value_count)
                .field("sum", &self.sum())
                .field("min", &self.min())
                .field("max", &self.max());
        }
        debug.finish()
    }
}

impl Accumulator {
    /// An empty count-only accumulator: counts events, keeps no values and no
    /// sketch (count metrics).
    pub fn new_count_only() -> Self {
        Accumulator {
            count: 0,
            values: None,
        }
    }

    /// An empty valued accumulator: keeps sum, min, max and a sketch.
    pub fn new_with_values() -> Self {
        Accumulator {
            count: 0,
            values: Some(Arc::new(ValueSummary::empty())),
        }
    }

    /// Counts one event without a value (`count += 1`).
    pub fn record_event(&mut self) {
        self.count = self.count.saturating_add(1);
    }

    /// Records one value: count, sum, min, max and the sketch. Non-finite
    /// values (NaN, ±inf) are ignored without being counted. Recording into a
    /// count-only accumulator turns it valued.
    pub fn record_value(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.count = self.count.saturating_add(1);
        let values = Arc::make_mut(
            self.values
                .get_or_insert_with(|| Arc::new(ValueSummary::empty())),
        );
        values.value_count = values.value_count.saturating_add(1);
        values.sum += value;
        values.min = values.min.min(value);
        values.max = values.max.max(value);
        values.sketch.add(value);
    }

    /// Adds `other` into `self`, as if `self` had also seen `other`'s events.
    /// Count-only merged with valued gives valued (see the module docs).
    pub fn merge(&mut self, other: &Accumulator) {
        self.count = self.count.saturating_add(other.count);
        match (&mut self.values, &other.values) {
            (_, None) => {}
            (None, Some(theirs)) => self.values = Some(Arc::clone(theirs)),
            (Some(ours), Some(theirs)) => Arc::make_mut(ours).merge(theirs),
        }
    }

    /// Events counted, with or without a value.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Values recorded (0 for count-only); `<= count()`.
    pub fn value_count(&self) -> u64 {
        self.values.as_ref().map_or(0, |values| values.value_count)
    }

    /// The summary, if at least one value was recorded.
    fn recorded(&self) -> Option<&ValueSummary> {
        self.values
            .as_deref()
            .filter(|values| values.value_count > 0)
    }

    /// Exact sum of the values; `None` when no value was recorded. Can be
    /// ±inf (or NaN after merging +inf with -inf) if finite values overflow.
    pub fn sum(&self) -> Option<f64> {
        self.recorded().map(|values| values.sum)
    }

    /// Exact minimum value; `None` when no value was recorded.
    pub fn min(&self) -> Option<f64> {
        self.recorded().map(|values| values.min)
    }

    /// Exact maximum value; `None` when no value was recorded.
    pub fn max(&self) -> Option<f64> {
        self.recorded().map(|values| values.max)
    }

    /// `sum / value_count`; `None` when no value was recorded.
    pub fn mean(&self) -> Option<f64> {
        self.recorded()
            .map(|values| values.sum / values.value_count as f64)
    }

    /// The value at rank `floor(q * (value_count - 1))` of the sorted values,
    /// within 1% relative error (values within 1e-9 of zero read as 0),
    /// clamped to the exact `[min, max]`. `q = 0` and `q = 1` give the exact
    /// min and max. `None` when no value was recorded or `q` is outside
    /// `[0, 1]` (NaN included).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let values = self.recorded()?;
        let estimate = values.sketch.quantile(q).ok().flatten()?;
        // max/min rather than clamp: clamp panics on a NaN bound.
        Some(estimate.max(values.min).min(values.max))
    }

    /// True for a valued accumulator (it keeps sum/min/max and a sketch,
    /// possibly still empty); false for count-only. Equivalently:
    /// `sketch_bytes().is_some()`.
    pub fn has_values(&self) -> bool {
        self.values.is_some()
    }

    /// Compact binary of the sketch (DataDog's Java-compatible encoding, only
    /// non-empty bins); `None` for count-only.
    pub fn sketch_bytes(&self) -> Option<Vec<u8>> {
        self.values
            .as_ref()
            .map(|values| values.sketch.to_java_bytes())
    }

    /// Rebuild from stored columns (what a store row holds): count, sum, min,
    /// max, sketch bytes.
    ///
    /// - `sketch` `None`: a count-only accumulator; `sum`/`min`/`max` are
    ///   ignored (a store may keep them NULL or 0).
    /// - `sketch` `Some`: a valued accumulator whose value count is the
    ///   sketch's. The sketch must decode, hold at most `count` values and have
    ///   the default configuration. If it holds values, `sum`, `min` and `max`
    ///   must be present, `min`/`max` finite with `min <= max`; if it holds
    ///   none, they are ignored.
    ///
    /// Anything else is [`RollupError::CorruptSketch`]; no input panics.
    pub fn from_parts(
        count: u64,
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        sketch: Option<&[u8]>,
    ) -> Result<Accumulator, RollupError> {
        let Some(bytes) = sketch else {
            return Ok(Accumulator {
                count,
                values: None,
            });
        };
        let value_count = validate_sketch_bytes(bytes)?;
        let decoded = DDSketch::from_java_bytes(bytes)
            .map_err(|error| RollupError::CorruptSketch(error.to_string()))?;
        // Re-home the decoded bins in a sketch built here: the merge doubles
        // as the check that the configuration is exactly the default one.
        let mut rebuilt = DDSketch::new(Config::defaults());
        rebuilt.merge(&decoded).map_err(|error| {
            RollupError::CorruptSketch(format!("sketch configuration: {error}"))
        })?;
        if rebuilt.count() as u64 != value_count {
            return Err(RollupError::CorruptSketch(format!(
                "sketch decodes to {} values, its bins hold {value_count}",
                rebuilt.count()
            )));
        }
        if value_count > count {
            return Err(RollupError::CorruptSketch(format!(
                "sketch holds {value_count} values but the row counts only {count} events"
            )));
        }
        let mut values = ValueSummary {
            value_count,
            sketch: rebuilt,
            ..ValueSummary::empty()
        };
        if value_count > 0 {
            let (Some(sum), Some(min), Some(max)) = (sum, min, max) else {
                return Err(RollupError::CorruptSketch(format!(
                    "sketch holds {value_count} values but sum/min/max are missing"
                )));
            };
            if !(min.is_finite() && max.is_finite() && min <= max) {
                return Err(RollupError::CorruptSketch(format!(
                    "invalid min/max columns: min {min}, max {max}"
                )));
            }
            values.sum = sum;
            values.min = min;
            values.max = max;
        }
        Ok(Accumulator {
            count,
            values: Some(Arc::new(values)),
        })
    }
}

// ---------------------------------------------------------------------------
// Sketch byte validation.
//
// `DDSketch::from_java_bytes` trusts its input: index deltas are summed in
// i64 and cast to i32, bin counts are cast from f64, and the dense store does
// unchecked i32/u64 arithmetic, so crafted bytes can overflow (a panic in
// debug builds, garbage in release). We therefore accept only the grammar our
// own encoder (`to_java_bytes` of a default-config sketch) produces, with
// every number in the range real values can yield, and only then decode.
//
// Grammar (flag byte, then payload), each flag at most once, any order:
//   0xA0 count  varDouble   must equal the total of the bins
//   0x88 min    f64 LE      (any; our columns are authoritative)
//   0x8C max    f64 LE
//   0x84 sum    f64 LE
//   0x02 index mapping: gamma f64 LE (== default gamma), offset f64 LE (== 0); required
//   0x04 zero count varDouble
//   0x05 / 0x07 positive / negative store, IndexDeltasAndCounts:
//        varLong bin count, then per bin zigzag varLong index delta, varDouble count
// ---------------------------------------------------------------------------

const FLAG_COUNT: u8 = 0xA0;
const FLAG_MIN: u8 = 0x88;
const FLAG_MAX: u8 = 0x8C;
const FLAG_SUM: u8 = 0x84;
const FLAG_INDEX_MAPPING_LOG: u8 = 0x02;
const FLAG_ZERO_COUNT: u8 = 0x04;
const FLAG_POSITIVE_STORE_DELTAS_AND_COUNTS: u8 = 0x05;
const FLAG_NEGATIVE_STORE_DELTAS_AND_COUNTS: u8 = 0x07;

/// Counts above 2^53 are not exact in the f64 the encoding uses; no bucket
/// comes near, and the bound keeps every u64 sum in the store from
/// overflowing.
const MAX_SKETCH_COUNT: u64 = 1 << 53;

/// Checks `bytes` against the encoder's grammar (see the comment above) and
/// returns the number of values the sketch holds.
fn validate_sketch_bytes(bytes: &[u8]) -> Result<u64, RollupError> {
    let corrupt = |message: &str| RollupError::CorruptSketch(message.to_owned());
    // The library skips a leading 0x02 when a valid flag follows (Java's v2
    // prefix). We never write it; refuse it so both parsers read the same
    // bytes the same way. Our own output only starts with 0x02 for an empty
    // sketch, where the next byte is the first byte of gamma (0xFD).
    if let [FLAG_INDEX_MAPPING_LOG, next, ..] = bytes
        && is_library_flag_byte(*next)
    {
        return Err(corrupt("unexpected version prefix"));
    }
    let (min_key, max_key) = key_bounds();
    let mut input = bytes;
    let mut seen: Vec<u8> = Vec::with_capacity(8);
    let mut declared_count: Option<f64> = None;
    let mut total: u64 = 0;
    while let Some((&flag, rest)) = input.split_first() {
        input = rest;
        if seen.contains(&flag) {
            return Err(RollupError::CorruptSketch(format!(
                "flag 0x{flag:02X} repeated"
            )));
        }
        seen.push(flag);
        match flag {
            FLAG_COUNT => declared_count = Some(read_var_double(&mut input)?),
            FLAG_MIN | FLAG_MAX | FLAG_SUM => {
                read_f64_le(&mut input)?;
            }
            FLAG_INDEX_MAPPING_LOG => {
                let gamma = read_f64_le(&mut input)?;
                let index_offset = read_f64_le(&mut input)?;
                if gamma.to_bits() != Config::defaults().gamma.to_bits() || index_offset != 0.0 {
                    return Err(corrupt("sketch configuration is not the default"));
                }
            }
            FLAG_ZERO_COUNT => {
                let zero_count = read_count(&mut input)?;
                total = add_count(total, zero_count)?;
            }
            FLAG_POSITIVE_STORE_DELTAS_AND_COUNTS | FLAG_NEGATIVE_STORE_DELTAS_AND_COUNTS => {
                let bins = read_unsigned_var_long(&mut input)?;
                let mut index: i64 = 0;
                for _ in 0..bins {
                    let delta = read_signed_var_long(&mut input)?;
                    index = index
                        .checked_add(delta)
                        .filter(|index| (min_key..=max_key).contains(index))
                        .ok_or_else(|| corrupt("bin index out of range"))?;
                    total = add_count(total, read_count(&mut input)?)?;
                }
            }
            _ => {
                return Err(RollupError::CorruptSketch(format!(
                    "unexpected flag 0x{flag:02X}"
                )));
            }
        }
    }
    if !seen.contains(&FLAG_INDEX_MAPPING_LOG) {
        return Err(corrupt("missing index mapping"));
    }
    match declared_count {
        // Exact: total <= 2^53.
        Some(declared) if declared != total as f64 => Err(RollupError::CorruptSketch(format!(
            "declared count {declared} but bins hold {total}"
        ))),
        None if total != 0 => Err(corrupt("missing count")),
        _ => Ok(total),
    }
}

/// Bin indexes a finite value can map to, with a margin of one: values at or
/// below the sketch's minimum (1e-9) go to the zero count, the largest is
/// `f64::MAX`.
fn key_bounds() -> (i64, i64) {
    let config = Config::defaults();
    let lowest = config.key(config.min_possible());
    let highest = config.key(f64::MAX);
    (i64::from(lowest) - 1, i64::from(highest) + 1)
}

fn add_count(total: u64, count: u64) -> Result<u64, RollupError> {
    total
        .checked_add(count)
        .filter(|total| *total <= MAX_SKETCH_COUNT)
        .ok_or_else(|| RollupError::CorruptSketch("sketch count too large".to_owned()))
}

/// A bin count: a varDouble holding a whole number in `[0, 2^53]`.
fn read_count(input: &mut &[u8]) -> Result<u64, RollupError> {
    let count = read_var_double(input)?;
    if !(count.is_finite()
        && count >= 0.0
        && count.fract() == 0.0
        && count <= MAX_SKETCH_COUNT as f64)
    {
        return Err(RollupError::CorruptSketch(format!(
            "invalid bin count {count}"
        )));
    }
    // Exact: a whole number in [0, 2^53].
    Ok(count as u64)
}

/// Whether the library's decoder treats `byte` as a flag (mirrors its
/// `is_valid_flag_byte`), to detect the prefix it would skip.
fn is_library_flag_byte(byte: u8) -> bool {
    if matches!(
        byte,
        FLAG_ZERO_COUNT | FLAG_COUNT | FLAG_SUM | FLAG_MIN | FLAG_MAX | FLAG_INDEX_MAPPING_LOG
    ) {
        return true;
    }
    let subflag = byte >> 2;
    match byte & 0x03 {
        1 | 3 => (1..=3).contains(&subflag),
        2 => subflag <= 4,
        _ => false,
    }
}

fn eof() -> RollupError {
    RollupError::CorruptSketch("unexpected end of sketch bytes".to_owned())
}

fn read_byte(input: &mut &[u8]) -> Result<u8, RollupError> {
    let (&byte, rest) = input.split_first().ok_or_else(eof)?;
    *input = rest;
    Ok(byte)
}

fn read_f64_le(input: &mut &[u8]) -> Result<f64, RollupError> {
    let (bytes, rest) = input.split_first_chunk::<8>().ok_or_else(eof)?;
    *input = rest;
    Ok(f64::from_le_bytes(*bytes))
}

/// Same algorithm as the library's `decode_unsigned_var_long`.
fn read_unsigned_var_long(input: &mut &[u8]) -> Result<u64, RollupError> {
    let mut value: u64 = 0;
    let mut shift: u32 = 0;
    loop {
        let next = read_byte(input)?;
        if next < 0x80 || shift == 56 {
            return Ok(value | (u64::from(next) << shift));
        }
        value |= (u64::from(next) & 0x7F) << shift;
        shift += 7;
    }
}

/// Zigzag-decoded [`read_unsigned_var_long`].
fn read_signed_var_long(input: &mut &[u8]) -> Result<i64, RollupError> {
    let encoded = read_unsigned_var_long(input)?;
    Ok(((encoded >> 1) as i64) ^ -((encoded & 1) as i64))
}

/// Same algorithm as the library's `decode_var_double`.
fn read_var_double(input: &mut &[u8]) -> Result<f64, RollupError> {
    let mut bits: u64 = 0;
    let mut shift: i32 = 57;
    loop {
        let next = read_byte(input)?;
        if shift == 1 {
            bits |= u64::from(next);
            break;
        }
        if next < 0x80 {
            bits |= u64::from(next) << shift;
            break;
        }
        bits |= (u64::from(next) & 0x7F) << shift;
        shift -= 7;
    }
    Ok(f64::from_bits(bits.rotate_right(6).wrapping_add(1.0f64.to_bits())) - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valued(values: &[f64]) -> Accumulator {
        let mut accumulator = Accumulator::new_with_values();
        for &value in values {
            accumulator.record_value(value);
        }
        accumulator
    }

    /// The sketch's rank definition: index `floor(q * (n - 1))` of the sorted values.
    fn exact_quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = (q * (sorted.len() as f64 - 1.0)) as usize;
        sorted[rank]
    }

    fn round_trip(accumulator: &Accumulator) -> Result<Accumulator, RollupError> {
        let bytes = accumulator.sketch_bytes();
        Accumulator::from_parts(
            accumulator.count(),
            accumulator.sum(),
            accumulator.min(),
            accumulator.max(),
            bytes.as_deref(),
        )
    }

    const QUANTILES: [f64; 9] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

    #[test]
    fn count_only_counts_and_keeps_no_values() {
        let mut accumulator = Accumulator::new_count_only();
        accumulator.record_event();
        accumulator.record_event();
        assert_eq!(accumulator.count(), 2);
        assert_eq!(accumulator.value_count(), 0);
        assert!(!accumulator.has_values());
        assert_eq!(accumulator.sketch_bytes(), None);
        assert_eq!(
            (accumulator.sum(), accumulator.min(), accumulator.max()),
            (None, None, None)
        );
        assert_eq!(accumulator.mean(), None);
        assert_eq!(accumulator.quantile(0.5), None);
    }

    #[test]
    fn valued_tracks_exact_statistics() {
        let accumulator = valued(&[3.0, -1.5, 10.0, 0.0]);
        assert_eq!(accumulator.count(), 4);
        assert_eq!(accumulator.value_count(), 4);
        assert_eq!(accumulator.sum(), Some(11.5));
        assert_eq!(accumulator.min(), Some(-1.5));
        assert_eq!(accumulator.max(), Some(10.0));
        assert_eq!(accumulator.mean(), Some(11.5 / 4.0));
        assert_eq!(accumulator.quantile(0.0), Some(-1.5));
        assert_eq!(accumulator.quantile(1.0), Some(10.0));
        for bad in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert_eq!(accumulator.quantile(bad), None, "{bad}");
        }
    }

    #[test]
    fn empty_valued_has_values_but_no_statistics() {
        let accumulator = Accumulator::new_with_values();
        assert!(accumulator.has_values());
        assert!(accumulator.sketch_bytes().is_some());
        assert_eq!((accumulator.sum(), accumulator.mean()), (None, None));
        assert_eq!(accumulator.quantile(0.5), None);
        let decoded = round_trip(&accumulator).expect("decodes");
        assert!(decoded.has_values());
        assert_eq!(decoded.count(), 0);
    }

    #[test]
    fn non_finite_values_are_ignored_without_counting() {
        let mut accumulator = valued(&[1.0]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            accumulator.record_value(bad);
        }
        assert_eq!(accumulator.count(), 1);
        assert_eq!(accumulator.sum(), Some(1.0));
        let mut count_only = Accumulator::new_count_only();
        count_only.record_value(f64::NAN);
        assert_eq!(count_only.count(), 0);
        assert!(!count_only.has_values());
    }

    #[test]
    fn count_only_merged_with_valued_gives_valued_and_keeps_every_event() {
        let mut count_only = Accumulator::new_count_only();
        count_only.record_event();
        count_only.record_event();
        let values = valued(&[2.0, 4.0]);

        let mut left = count_only.clone();
        left.merge(&values);
        let mut right = values.clone();
        right.merge(&count_only);
        for merged in [&left, &right] {
            assert!(merged.has_values());
            assert_eq!(merged.count(), 4);
            assert_eq!(merged.value_count(), 2);
            assert_eq!(merged.mean(), Some(3.0));
            assert_eq!(merged.min(), Some(2.0));
        }
        let decoded = round_trip(&left).expect("decodes");
        assert_eq!((decoded.count(), decoded.value_count()), (4, 2));

        // Recording a value turns a count-only accumulator valued the same way.
        let mut upgraded = count_only;
        upgraded.record_value(5.0);
        assert_eq!((upgraded.count(), upgraded.value_count()), (3, 1));
        assert_eq!(upgraded.mean(), Some(5.0));
    }

    #[test]
    fn values_spanning_the_whole_f64_range_do_not_panic() {
        let mut accumulator = Accumulator::new_with_values();
        let mut value = 1e-300;
        while value < 1e300 {
            accumulator.record_value(value);
            accumulator.record_value(-value);
            value *= 7.3;
        }
        accumulator.record_value(f64::MAX);
        accumulator.record_value(f64::MIN_POSITIVE);
        assert_eq!(accumulator.max(), Some(f64::MAX));
        for q in QUANTILES {
            let estimate = accumulator.quantile(q).expect("has values");
            assert!((-1e300..=f64::MAX).contains(&estimate));
        }
        let decoded = round_trip(&accumulator).expect("decodes");
        for q in QUANTILES {
            assert_eq!(decoded.quantile(q), accumulator.quantile(q));
        }
    }

    #[test]
    fn corrupt_sketch_bytes_are_errors() {
        let bytes = valued(&[1.0, 2.0, 300.0, -4.0, 0.0])
            .sketch_bytes()
            .expect("valued");
        let decode = |bytes: &[u8]| {
            Accumulator::from_parts(5, Some(299.0), Some(-4.0), Some(300.0), Some(bytes))
        };
        assert!(decode(&bytes).is_ok());
        assert!(decode(&[]).is_err());
        assert!(decode(b"not a sketch").is_err());
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0xFF);
        assert!(decode(&trailing).is_err());
    }

    #[test]
    fn inconsistent_columns_are_errors() {
        let accumulator = valued(&[1.0, 2.0, 3.0]);
        let bytes = accumulator.sketch_bytes().expect("valued");
        let sketch = Some(bytes.as_slice());
        // More values in the sketch than events in the row.
        assert!(Accumulator::from_parts(2, Some(6.0), Some(1.0), Some(3.0), sketch).is_err());
        // Values without their statistics.
        assert!(Accumulator::from_parts(3, None, Some(1.0), Some(3.0), sketch).is_err());
        assert!(Accumulator::from_parts(3, Some(6.0), Some(3.0), Some(1.0), sketch).is_err());
        assert!(Accumulator::from_parts(3, Some(6.0), Some(f64::NAN), Some(3.0), sketch).is_err());
        // Count-only rows ignore value columns.
        let count_only =
            Accumulator::from_parts(7, Some(0.0), None, None, None).expect("count-only");
        assert_eq!((count_only.count(), count_only.has_values()), (7, false));
    }

    #[test]
    fn sketch_with_other_configuration_is_rejected() {
        let mut other = DDSketch::new(Config::new(0.05, 2048, 1e-9));
        other.add(1.0);
        let bytes = other.to_java_bytes();
        assert!(Accumulator::from_parts(1, Some(1.0), Some(1.0), Some(1.0), Some(&bytes)).is_err());
    }

    // Encoders mirroring the library's, to craft grammatical but hostile bytes.
    fn push_unsigned_var_long(out: &mut Vec<u8>, mut value: u64) {
        let length = ((63 - value.leading_zeros() as i32) / 7).clamp(0, 8);
        for _ in 0..length {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn push_var_double(out: &mut Vec<u8>, value: f64) {
        let mut bits = (value + 1.0)
            .to_bits()
            .wrapping_sub(1.0f64.to_bits())
            .rotate_left(6);
        for _ in 0..8 {
            let next = (bits >> 57) as u8;
            bits <<= 7;
            if bits == 0 {
                out.push(next);
                return;
            }
            out.push(next | 0x80);
        }
        out.push((bits >> 56) as u8);
    }

    /// A sketch holding one count per `(key, count)` bin, keys in any order.
    fn crafted_sketch(bins: &[(i64, u32)], negative: bool) -> Vec<u8> {
        let total: u64 = bins.iter().map(|&(_, count)| u64::from(count)).sum();
        let mut out = vec![FLAG_COUNT];
        push_var_double(&mut out, total as f64);
        out.push(FLAG_INDEX_MAPPING_LOG);
        out.extend_from_slice(&Config::defaults().gamma.to_le_bytes());
        out.extend_from_slice(&0.0f64.to_le_bytes());
        out.push(if negative {
            FLAG_NEGATIVE_STORE_DELTAS_AND_COUNTS
        } else {
            FLAG_POSITIVE_STORE_DELTAS_AND_COUNTS
        });
        push_unsigned_var_long(&mut out, bins.len() as u64);
        let mut previous = 0i64;
        for &(key, count) in bins {
            let delta = key - previous;
            push_unsigned_var_long(&mut out, ((delta >> 63) ^ (delta << 1)) as u64);
            push_var_double(&mut out, f64::from(count));
            previous = key;
        }
        out
    }

    fn finite_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6f64..1e6,
            (-1000i32..1000).prop_map(f64::from),
            Just(0.0),
            -1e-12f64..1e-12,
            0.5f64..2.0,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn merge_equals_accumulator_of_concatenation(
            left in prop::collection::vec(finite_value(), 0..200),
            right in prop::collection::vec(finite_value(), 0..200),
        ) {
            let mut merged = valued(&left);
            merged.merge(&valued(&right));
            let all: Vec<f64> = left.iter().chain(&right).copied().collect();
            let direct = valued(&all);

            prop_assert_eq!(merged.count(), all.len() as u64);
            prop_assert_eq!(merged.count(), direct.count());
            prop_assert_eq!(merged.min(), direct.min());
            prop_assert_eq!(merged.max(), direct.max());
            match (merged.sum(), direct.sum()) {
                (Some(merged_sum), Some(direct_sum)) => {
                    let magnitude: f64 = all.iter().map(|value| value.abs()).sum();
                    prop_assert!((merged_sum - direct_sum).abs() <= 1e-9 * magnitude.max(1.0));
                }
                (None, None) => prop_assert!(all.is_empty()),
                other => prop_assert!(false, "sum presence differs: {:?}", other),
            }
            if all.is_empty() {
                prop_assert_eq!(merged.quantile(0.5), None);
            }
            for q in QUANTILES {
                let Some(estimate) = merged.quantile(q) else { continue };
                // Same bins, same ranks: merging is invisible to quantiles.
                prop_assert_eq!(Some(estimate), direct.quantile(q));
                let exact = exact_quantile(&all, q);
                let tolerance = 0.01 * exact.abs() * (1.0 + 1e-12) + 1e-9;
                prop_assert!(
                    (estimate - exact).abs() <= tolerance,
                    "q {}: estimate {} exact {}", q, estimate, exact
                );
            }
        }

        #[test]
        fn merge_is_associative(
            first in prop::collection::vec(finite_value(), 0..50),
            second in prop::collection::vec(finite_value(), 0..50),
            third in prop::collection::vec(finite_value(), 0..50),
            events in 0u64..5,
        ) {
            let mut count_only = Accumulator::new_count_only();
            for _ in 0..events {
                count_only.record_event();
            }
            let (a, b, c) = (valued(&first), count_only, valued(&third));
            let mut b = b;
            for &value in &second {
                b.record_value(value);
            }
            let mut left = a.clone();
            left.merge(&b);
            left.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut right = a.clone();
            right.merge(&bc);
            prop_assert_eq!(left.count(), right.count());
            prop_assert_eq!(left.value_count(), right.value_count());
            prop_assert_eq!(left.min(), right.min());
            prop_assert_eq!(left.max(), right.max());
            for q in QUANTILES {
                prop_assert_eq!(left.quantile(q), right.quantile(q));
            }
        }

        #[test]
        fn sketch_bytes_round_trip(values in prop::collection::vec(finite_value(), 0..300), extra_events in 0u64..3) {
            let mut accumulator = valued(&values);
            for _ in 0..extra_events {
                accumulator.record_event();
            }
            let decoded = round_trip(&accumulator).expect("our own bytes decode");
            prop_assert_eq!(decoded.count(), accumulator.count());
            prop_assert_eq!(decoded.value_count(), accumulator.value_count());
            prop_assert_eq!(decoded.sum(), accumulator.sum());
            prop_assert_eq!(decoded.min(), accumulator.min());
            prop_assert_eq!(decoded.max(), accumulator.max());
            for q in QUANTILES {
                prop_assert_eq!(decoded.quantile(q), accumulator.quantile(q));
            }
            prop_assert_eq!(decoded.sketch_bytes(), accumulator.sketch_bytes());
            // A decoded accumulator keeps merging like the original.
            let mut merged_decoded = decoded;
            merged_decoded.merge(&accumulator);
            let mut merged = accumulator.clone();
            merged.merge(&accumulator);
            for q in QUANTILES {
                prop_assert_eq!(merged_decoded.quantile(q), merged.quantile(q));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), count in any::<u64>()) {
            let _ = Accumulator::from_parts(count, Some(1.0), Some(0.0), Some(1.0), Some(&bytes));
        }

        #[test]
        fn mutated_sketch_bytes_never_panic(
            values in prop::collection::vec(finite_value(), 1..50),
            position in any::<prop::sample::Index>(),
            replacement in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let accumulator = valued(&values);
            let mut bytes = accumulator.sketch_bytes().expect("valued");
            let at = position.index(bytes.len());
            bytes[at] = replacement;
            let decode = |bytes: &[u8]| Accumulator::from_parts(
                u64::MAX, accumulator.sum(), accumulator.min(), accumulator.max(), Some(bytes));
            if let Ok(decoded) = decode(&bytes) {
                for q in QUANTILES {
                    let _ = decoded.quantile(q);
                }
            }
            let _ = decode(&bytes[..cut.index(bytes.len())]);
        }

        #[test]
        fn hostile_bins_in_range_decode_without_panic(
            bins in prop::collection::vec((-1100i64..36_000, 1u32..1000), 0..300),
            negative in any::<bool>(),
        ) {
            let bytes = crafted_sketch(&bins, negative);
            let total: u64 = bins.iter().map(|&(_, count)| u64::from(count)).sum();
            let decoded = Accumulator::from_parts(total, Some(0.0), Some(-1.0), Some(1.0), Some(&bytes));
            if let Ok(decoded) = decoded {
                prop_assert_eq!(decoded.value_count(), total);
                for q in QUANTILES {
                    let _ = decoded.quantile(q);
                }
            }
        }

        #[test]
        fn hostile_bins_out_of_range_are_errors(
            key in prop_oneof![i64::MIN..-2_000, 40_000i64..i64::MAX],
            count in 1u32..10,
        ) {
            let bytes = crafted_sketch(&[(key, count)], false);
            prop_assert!(Accumulator::from_parts(u64::from(count), Some(1.0), Some(1.0), Some(1.0), Some(&bytes)).is_err());
        }
    }
}
