//! Bucket maths: rollup intervals, bucket alignment and range decomposition.
//!
//! Buckets are UTC, aligned to the Unix epoch and half-open:
//! the bucket of `interval` that starts at `start` holds the events with
//! `start <= timestamp_ms < start + interval.millis()`, and every `start` is a
//! multiple of `interval.millis()` (negative timestamps included: flooring is
//! euclidean, so `-1` belongs to the bucket starting at `-interval.millis()`).
//!
//! Every supported interval divides every coarser one (1m | 5m | 15m | 30m |
//! 1h | 4h | 1d), so a bucket boundary of a coarse interval is also a boundary
//! of every finer one. [`decompose`] relies on this to cover a query range
//! exactly with whole buckets plus, at most, one raw edge on each side.
//!
//! Invariants kept by [`decompose`] (checked by the property tests below):
//! - the pieces are ascending, disjoint and their union is exactly the range;
//! - a [`Piece::Buckets`] has both ends aligned to its interval;
//! - there are at most two [`Piece::Raw`], only before and after the buckets,
//!   and each lies inside one bucket of the finest available interval (so it
//!   is shorter than that interval);
//! - at most `2 * k + 1` pieces for `k` distinct available intervals;
//! - at most `len / coarsest + 2 * sum(coarser / finer - 1)` buckets in total,
//!   the sum over consecutive pairs of available intervals: for all seven
//!   intervals that is `len / 1d + 32`, so a query reads O(buckets).
//!
//! All arithmetic is checked: no timestamp, however extreme, panics.

use std::fmt;

/// A rollup interval, ordered finest to coarsest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    /// One minute.
    M1,
    /// Five minutes.
    M5,
    /// Fifteen minutes.
    M15,
    /// Thirty minutes.
    M30,
    /// One hour.
    H1,
    /// Four hours.
    H4,
    /// One day (UTC).
    D1,
}

const MINUTE_MS: i64 = 60_000;

impl Interval {
    /// Every supported interval, finest first.
    pub const ALL: [Interval; 7] = [
        Interval::M1,
        Interval::M5,
        Interval::M15,
        Interval::M30,
        Interval::H1,
        Interval::H4,
        Interval::D1,
    ];

    /// Parses the wire name (`"1m"`, `"5m"`, `"15m"`, `"30m"`, `"1h"`, `"4h"`,
    /// `"1d"`); anything else is `None`.
    pub fn parse(text: &str) -> Option<Interval> {
        Interval::ALL
            .into_iter()
            .find(|interval| interval.as_str() == text)
    }

    /// The wire name, the inverse of [`Interval::parse`].
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::M30 => "30m",
            Interval::H1 => "1h",
            Interval::H4 => "4h",
            Interval::D1 => "1d",
        }
    }

    /// Length of one bucket in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Interval::M1 => MINUTE_MS,
            Interval::M5 => 5 * MINUTE_MS,
            Interval::M15 => 15 * MINUTE_MS,
            Interval::M30 => 30 * MINUTE_MS,
            Interval::H1 => 60 * MINUTE_MS,
            Interval::H4 => 240 * MINUTE_MS,
            Interval::D1 => 1440 * MINUTE_MS,
        }
    }

    /// Start of the bucket holding `timestamp_ms`: the greatest multiple of
    /// [`Interval::millis`] that is `<= timestamp_ms` (euclidean floor, so
    /// correct for negative timestamps).
    ///
    /// For the handful of timestamps less than one interval above `i64::MIN`,
    /// whose bucket start is not representable, returns `i64::MIN` instead of
    /// overflowing; no real event lies there.
    pub fn bucket_start(self, timestamp_ms: i64) -> i64 {
        floor_to(timestamp_ms, self.millis()).unwrap_or(i64::MIN)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Greatest multiple of `step` that is `<= value`, or `None` if it is below
/// `i64::MIN`. `step` must be positive.
fn floor_to(value: i64, step: i64) -> Option<i64> {
    value.checked_sub(value.rem_euclid(step))
}

/// Least multiple of `step` that is `>= value`, or `None` if it is above
/// `i64::MAX`. `step` must be positive.
fn ceil_to(value: i64, step: i64) -> Option<i64> {
    match value.rem_euclid(step) {
        0 => Some(value),
        remainder => value.checked_add(step - remainder),
    }
}

/// Half-open millisecond range `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive start, epoch milliseconds.
    pub start_ms: i64,
    /// Exclusive end, epoch milliseconds.
    pub end_ms: i64,
}

impl TimeRange {
    /// True when the range holds no instant (`start_ms >= end_ms`).
    pub fn is_empty(&self) -> bool {
        self.start_ms >= self.end_ms
    }
}

/// One piece of a decomposed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Whole buckets of `interval` whose starts lie in [start_ms, end_ms);
    /// both ends are multiples of the interval.
    Buckets {
        /// The interval whose rollup rows answer this piece.
        interval: Interval,
        /// Start of the first bucket.
        start_ms: i64,
        /// End of the last bucket (exclusive).
        end_ms: i64,
    },
    /// Raw events with timestamp in [start_ms, end_ms) (only at the edges,
    /// each shorter than the finest available interval).
    Raw {
        /// Inclusive start.
        start_ms: i64,
        /// Exclusive end.
        end_ms: i64,
    },
}

impl Piece {
    /// The instants this piece covers.
    pub fn range(&self) -> TimeRange {
        match *self {
            Piece::Buckets {
                start_ms, end_ms, ..
            }
            | Piece::Raw { start_ms, end_ms } => TimeRange { start_ms, end_ms },
        }
    }

    /// How many bucket rows this piece reads (0 for raw pieces).
    pub fn bucket_count(&self) -> u64 {
        match *self {
            Piece::Buckets {
                interval,
                start_ms,
                end_ms,
            } => {
                // i128: the span of an extreme range does not fit in i64.
                let buckets =
                    (i128::from(end_ms) - i128::from(start_ms)) / i128::from(interval.millis());
                u64::try_from(buckets).unwrap_or(u64::MAX)
            }
            Piece::Raw { .. } => 0,
        }
    }
}

/// Covers `range` exactly (pieces disjoint, union == range, ascending order)
/// using the fewest/coarsest buckets of the `available` intervals (any
/// non-empty subset, in any order), raw pieces only for what no available
/// bucket covers whole.
///
/// Greedy: the coarsest interval whose aligned interior
/// `[ceil(start), floor(end))` is non-empty is taken whole, then the left and
/// right remainders (each shorter than that interval) are decomposed with the
/// finer intervals. What is left below the finest interval is raw, split at a
/// bucket boundary of the finest interval if it straddles one, so each raw
/// piece lies inside one finest bucket.
///
/// An empty range gives no pieces; an empty `available` gives one raw piece.
pub fn decompose(range: TimeRange, available: &[Interval]) -> Vec<Piece> {
    let mut pieces = Vec::new();
    if range.is_empty() {
        return pieces;
    }
    let mut coarsest_first: Vec<Interval> = available.to_vec();
    coarsest_first.sort_unstable_by(|left, right| right.cmp(left));
    coarsest_first.dedup();
    let Some(&finest) = coarsest_first.last() else {
        pieces.push(Piece::Raw {
            start_ms: range.start_ms,
            end_ms: range.end_ms,
        });
        return pieces;
    };
    decompose_into(
        range.start_ms,
        range.end_ms,
        &coarsest_first,
        finest,
        &mut pieces,
    );
    pieces
}

/// Appends the pieces of `[start_ms, end_ms)` in ascending order. `levels` is
/// coarsest first; the recursion depth is at most `levels.len()` and each
/// level adds at most one bucket piece per side.
fn decompose_into(
    start_ms: i64,
    end_ms: i64,
    levels: &[Interval],
    finest: Interval,
    pieces: &mut Vec<Piece>,
) {
    if start_ms >= end_ms {
        return;
    }
    for (index, &interval) in levels.iter().enumerate() {
        let step = interval.millis();
        let (Some(interior_start), Some(interior_end)) =
            (ceil_to(start_ms, step), floor_to(end_ms, step))
        else {
            continue;
        };
        if interior_start < interior_end {
            let finer = levels.get(index + 1..).unwrap_or(&[]);
            decompose_into(start_ms, interior_start, finer, finest, pieces);
            pieces.push(Piece::Buckets {
                interval,
                start_ms: interior_start,
                end_ms: interior_end,
            });
            decompose_into(interior_end, end_ms, finer, finest, pieces);
            return;
        }
    }
    // No available bucket fits whole. The range holds at most one boundary of
    // the finest interval (else a whole finest bucket would fit); split there
    // so each raw piece stays inside one finest bucket.
    match ceil_to(start_ms, finest.millis()) {
        Some(boundary) if start_ms < boundary && boundary < end_ms => {
            pieces.push(Piece::Raw {
                start_ms,
                end_ms: boundary,
            });
            pieces.push(Piece::Raw {
                start_ms: boundary,
                end_ms,
            });
        }
        _ => pieces.push(Piece::Raw { start_ms, end_ms }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn parse_and_as_str_round_trip() {
        for interval in Interval::ALL {
            assert_eq!(Interval::parse(interval.as_str()), Some(interval));
            assert_eq!(interval.to_string(), interval.as_str());
        }
        for bad in ["", "1M", "2m", "60m", "1 m", "1d ", "1w"] {
            assert_eq!(Interval::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn all_is_ordered_finest_first_and_each_divides_the_next() {
        for pair in Interval::ALL.windows(2) {
            let [finer, coarser] = pair else {
                unreachable!("windows(2)")
            };
            assert!(finer < coarser);
            assert_eq!(coarser.millis() % finer.millis(), 0);
        }
        assert_eq!(Interval::D1.millis(), DAY_MS);
    }

    #[test]
    fn bucket_start_floors_including_negative_and_exact_edges() {
        let minute = Interval::M1;
        assert_eq!(minute.bucket_start(0), 0);
        assert_eq!(minute.bucket_start(59_999), 0);
        assert_eq!(minute.bucket_start(60_000), 60_000);
        assert_eq!(minute.bucket_start(-1), -60_000);
        assert_eq!(minute.bucket_start(-60_000), -60_000);
        assert_eq!(minute.bucket_start(-60_001), -120_000);
        assert_eq!(Interval::D1.bucket_start(-1), -DAY_MS);
        // 2024-01-01T13:37:42.123Z
        let timestamp = 1_704_116_262_123;
        assert_eq!(Interval::D1.bucket_start(timestamp), 1_704_067_200_000);
        assert_eq!(Interval::H4.bucket_start(timestamp), 1_704_110_400_000);
        assert_eq!(Interval::M15.bucket_start(timestamp), 1_704_115_800_000);
    }

    #[test]
    fn bucket_start_at_i64_extremes_does_not_panic() {
        for interval in Interval::ALL {
            assert_eq!(interval.bucket_start(i64::MIN), i64::MIN);
            let top = interval.bucket_start(i64::MAX);
            assert!(i64::MAX - top < interval.millis());
            assert_eq!(top.rem_euclid(interval.millis()), 0);
        }
    }

    #[test]
    fn empty_range_and_empty_available() {
        let empty = TimeRange {
            start_ms: 10,
            end_ms: 10,
        };
        assert!(decompose(empty, &Interval::ALL).is_empty());
        let inverted = TimeRange {
            start_ms: 10,
            end_ms: 5,
        };
        assert!(decompose(inverted, &Interval::ALL).is_empty());
        let range = TimeRange {
            start_ms: 5,
            end_ms: 3 * DAY_MS,
        };
        assert_eq!(
            decompose(range, &[]),
            vec![Piece::Raw {
                start_ms: 5,
                end_ms: 3 * DAY_MS
            }]
        );
    }

    #[test]
    fn greedy_example_uses_coarsest_buckets() {
        // 1970-01-01T00:59:30Z .. 1970-01-03T04:07:10.500Z
        let hour = 3_600_000;
        let start = 59 * 60_000 + 30_000;
        let end = 2 * DAY_MS + 4 * hour + 7 * 60_000 + 10_500;
        let pieces = decompose(
            TimeRange {
                start_ms: start,
                end_ms: end,
            },
            &Interval::ALL,
        );
        let buckets = |interval, start_ms, end_ms| Piece::Buckets {
            interval,
            start_ms,
            end_ms,
        };
        let right_edge = 2 * DAY_MS + 4 * hour;
        assert_eq!(
            pieces,
            vec![
                Piece::Raw {
                    start_ms: start,
                    end_ms: hour
                },
                buckets(Interval::H1, hour, 4 * hour),
                buckets(Interval::H4, 4 * hour, DAY_MS),
                buckets(Interval::D1, DAY_MS, 2 * DAY_MS),
                buckets(Interval::H4, 2 * DAY_MS, right_edge),
                buckets(Interval::M5, right_edge, right_edge + 5 * 60_000),
                buckets(
                    Interval::M1,
                    right_edge + 5 * 60_000,
                    right_edge + 7 * 60_000
                ),
                Piece::Raw {
                    start_ms: right_edge + 7 * 60_000,
                    end_ms: end
                },
            ]
        );
        // Without 1d the same range is read from 4h buckets.
        let without_days = decompose(
            TimeRange {
                start_ms: start,
                end_ms: end,
            },
            &[Interval::H4, Interval::M1, Interval::H1],
        );
        assert!(without_days.contains(&buckets(Interval::H4, 4 * hour, right_edge)));
    }

    #[test]
    fn no_whole_bucket_splits_raw_at_the_finest_boundary() {
        let pieces = decompose(
            TimeRange {
                start_ms: 1,
                end_ms: 2 * 60_000 - 1,
            },
            &[Interval::M1],
        );
        assert_eq!(
            pieces,
            vec![
                Piece::Raw {
                    start_ms: 1,
                    end_ms: 60_000
                },
                Piece::Raw {
                    start_ms: 60_000,
                    end_ms: 2 * 60_000 - 1
                },
            ]
        );
    }

    #[test]
    fn extreme_ranges_do_not_panic() {
        for (start_ms, end_ms) in [
            (i64::MIN, i64::MAX),
            (i64::MIN, i64::MIN + 1),
            (i64::MAX - 1, i64::MAX),
            (i64::MIN, i64::MIN + 3 * DAY_MS),
            (i64::MAX - 3 * DAY_MS, i64::MAX),
        ] {
            let range = TimeRange { start_ms, end_ms };
            let pieces = decompose(range, &Interval::ALL);
            check_decomposition(range, &Interval::ALL, &pieces);
        }
    }

    /// Asserts every invariant promised in the module docs.
    fn check_decomposition(range: TimeRange, available: &[Interval], pieces: &[Piece]) {
        if range.is_empty() {
            assert!(pieces.is_empty());
            return;
        }
        // Ascending, disjoint, covering exactly.
        let mut cursor = range.start_ms;
        for piece in pieces {
            let covered = piece.range();
            assert_eq!(covered.start_ms, cursor, "gap or overlap in {pieces:?}");
            assert!(
                covered.start_ms < covered.end_ms,
                "empty piece in {pieces:?}"
            );
            cursor = covered.end_ms;
        }
        assert_eq!(cursor, range.end_ms, "does not reach the end: {pieces:?}");

        let mut distinct: Vec<Interval> = available.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let Some(&finest) = distinct.first() else {
            assert_eq!(pieces.len(), 1);
            return;
        };

        // Buckets aligned and of an available interval; raws small and only
        // at the ends.
        let first_bucket = pieces
            .iter()
            .position(|piece| matches!(piece, Piece::Buckets { .. }));
        let last_bucket = pieces
            .iter()
            .rposition(|piece| matches!(piece, Piece::Buckets { .. }));
        let mut raws_before = 0;
        let mut raws_after = 0;
        for (index, piece) in pieces.iter().enumerate() {
            match *piece {
                Piece::Buckets {
                    interval,
                    start_ms,
                    end_ms,
                } => {
                    assert!(distinct.contains(&interval));
                    assert_eq!(start_ms.rem_euclid(interval.millis()), 0);
                    assert_eq!(end_ms.rem_euclid(interval.millis()), 0);
                }
                Piece::Raw { start_ms, end_ms } => {
                    assert_eq!(
                        finest.bucket_start(start_ms),
                        finest.bucket_start(end_ms - 1),
                        "raw piece crosses a {finest} boundary: {pieces:?}"
                    );
                    match (first_bucket, last_bucket) {
                        (Some(first), Some(last)) => {
                            assert!(index < first || index > last, "raw in the middle");
                            if index < first {
                                raws_before += 1;
                            } else {
                                raws_after += 1;
                            }
                        }
                        _ => raws_before += 1,
                    }
                }
            }
        }
        if first_bucket.is_some() {
            assert!(raws_before <= 1 && raws_after <= 1, "{pieces:?}");
        } else {
            assert!(raws_before <= 2, "{pieces:?}");
        }

        // Piece-count bound: one top piece, one piece per finer level per
        // side, one raw per side.
        assert!(pieces.len() <= 2 * distinct.len() + 1, "{pieces:?}");

        // Bucket-count bound.
        let length = i128::from(range.end_ms) - i128::from(range.start_ms);
        let coarsest = distinct.last().map_or(1, |interval| interval.millis());
        let side_slack: i128 = distinct
            .windows(2)
            .map(|pair| match pair {
                [finer, coarser] => i128::from(coarser.millis() / finer.millis() - 1),
                _ => 0,
            })
            .sum();
        let bound = length / i128::from(coarsest) + 2 * side_slack;
        let buckets: i128 = pieces
            .iter()
            .map(|piece| i128::from(piece.bucket_count()))
            .sum();
        assert!(buckets <= bound, "{buckets} > {bound}: {pieces:?}");
    }

    fn interval_subset() -> impl Strategy<Value = Vec<Interval>> {
        // Bit mask over ALL, non-empty; shuffled order and duplicates are
        // allowed by the API, so add both.
        (1u8..128, any::<bool>()).prop_map(|(mask, duplicate)| {
            let mut chosen: Vec<Interval> = Interval::ALL
                .into_iter()
                .enumerate()
                .filter(|(bit, _)| mask & (1 << bit) != 0)
                .map(|(_, interval)| interval)
                .collect();
            chosen.reverse();
            if duplicate && let Some(&first) = chosen.first() {
                chosen.push(first);
            }
            chosen
        })
    }

    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            // Around the epoch, negative included.
            -400 * DAY_MS..400 * DAY_MS,
            // Present day.
            1_600_000_000_000i64..1_800_000_000_000,
            // Exactly on, or a millisecond off, some bucket edge.
            (-2_000i64..30_000, 0usize..7, -1i64..=1).prop_map(|(count, which, nudge)| {
                count * Interval::ALL[which].millis() + nudge
            }),
        ]
    }

    fn length() -> impl Strategy<Value = i64> {
        prop_oneof![
            0i64..=120_000,
            0i64..=2 * DAY_MS,
            0i64..=400 * DAY_MS,
            (0i64..2_000, 0usize..7, -1i64..=1)
                .prop_map(|(count, which, nudge)| count * Interval::ALL[which].millis() + nudge),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn decompose_covers_exactly_with_few_buckets(
            start_ms in timestamp(),
            length_ms in length(),
            available in interval_subset(),
        ) {
            let range = TimeRange { start_ms, end_ms: start_ms + length_ms };
            let pieces = decompose(range, &available);
            check_decomposition(range, &available, &pieces);
        }

        #[test]
        fn decompose_with_all_intervals_reads_at_most_days_plus_32_buckets(
            start_ms in timestamp(),
            length_ms in length(),
        ) {
            let range = TimeRange { start_ms, end_ms: start_ms + length_ms };
            let pieces = decompose(range, &Interval::ALL);
            let buckets: u64 = pieces.iter().map(Piece::bucket_count).sum();
            prop_assert!(buckets <= u64::try_from(length_ms / DAY_MS).unwrap_or(0) + 32);
            prop_assert!(pieces.len() <= 15);
        }
    }
}
