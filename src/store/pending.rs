//! Rollup deltas that are committed but not yet folded into the rollup rows
//! (the embedded store).
//!
//! Under concurrent single-event requests a commit holds about twenty
//! events, and writing their rollups means rewriting every row they touch
//! in all seven intervals, each with its whole sketch re-encoded: most of
//! the commit's cost. So a commit that touches few finest-interval buckets
//! ([`DEFER_MAX_BUCKETS`]) writes only its deltas at the finest interval, as
//! rows of `rollup_deltas` in the same transaction as its events (durable
//! and exactly once like the events), and adds them to [`Pending`] in
//! memory. A *fold* later merges the pending deltas into the rollup rows of
//! every interval and deletes the delta rows, in one transaction, once a
//! second or when they grow large. Readers add the pending deltas to the
//! rows they read, so every answer is what it would be had each commit
//! written its rows.
//!
//! Invariants:
//! - every delta is counted by a reader exactly once: either in the rows
//!   (folded) or from [`Pending`], never both. A fold's commit and the
//!   removal of the deltas it folded happen under the write side of the
//!   fold gate; a reader holds its read side while it reads the rows and
//!   the pending deltas ([`Pending::read`]).
//! - a reader that must see the deltas of exactly the commits of its
//!   snapshot (one that checks the events of a bucket, then reads the
//!   bucket) also holds the read side of the commit gate, under whose
//!   write side a deferring commit commits and adds its deltas.
//! - the delta rows of a store instance are exactly the deltas it holds in
//!   [`Pending`] (a fold deletes its own rows only, by `owner`); the rows of
//!   an instance that stopped unfolded are folded by the next store to open
//!   the database, and by running ones every 10 s (`recover_deltas` in
//!   `sqlite.rs`).
//!
//! The PostgreSQL store defers the same commits ([`DEFER_MAX_BUCKETS`]) but
//! keeps nothing in memory: its readers read the delta rows themselves.

use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::rollup::{Interval, RollupBatch};

use super::{MetricFilter, RollupRow};

/// Most finest-interval buckets a commit may defer; a larger commit (a
/// batch of thousands of events spread over hours) writes its rollup rows
/// itself, since each of its rows gathers many events anyway.
pub const DEFER_MAX_BUCKETS: usize = 512;

/// Age of the oldest pending delta at which a fold is due.
pub const FOLD_AFTER: Duration = Duration::from_secs(1);

/// Pending finest buckets (counted as added, see `State::added`) at which a
/// fold is due at once (bounds memory).
pub const FOLD_MAX_BUCKETS: usize = 20_000;

/// The deltas committed and not folded yet, and the gate that keeps readers
/// from seeing a delta twice.
#[derive(Debug)]
pub struct Pending {
    fold_gate: RwLock<()>,
    commit_gate: RwLock<()>,
    state: Mutex<State>,
}

/// What a reader holds while it reads rows and then the pending deltas.
pub struct ReadGuard<'a> {
    _fold: RwLockReadGuard<'a, ()>,
    _commits: Option<RwLockReadGuard<'a, ()>>,
}

#[derive(Debug)]
struct State {
    /// The deltas a fold in progress is writing; still pending until its
    /// commit.
    folding: Option<Arc<RollupBatch>>,
    /// Deltas committed since the fold in progress (or the last one) began.
    current: RollupBatch,
    /// When the oldest delta of `current` was committed.
    oldest: Option<Instant>,
    /// Buckets added to `current` by the commits since (at least its
    /// size: a bucket added twice counts twice), kept so that `due` needs
    /// no walk of `current`.
    added: usize,
}

/// A fold that has taken the pending deltas; [`Pending::finish_fold`] ends it.
pub struct Fold {
    pub deltas: Arc<RollupBatch>,
}

impl Pending {
    pub fn new(intervals: &[Interval]) -> Self {
        Pending {
            fold_gate: RwLock::new(()),
            commit_gate: RwLock::new(()),
            state: Mutex::new(State {
                folding: None,
                current: RollupBatch::new(intervals),
                oldest: None,
                added: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a map of deltas updated in single calls; a panic
        // elsewhere cannot leave it half-merged.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `commit` (the commit of a transaction that wrote `deltas` to
    /// `rollup_deltas`) and, when it succeeds, adds `deltas`, both under
    /// the write side of the commit gate.
    pub fn commit_deltas<E>(
        &self,
        deltas: RollupBatch,
        commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let _gate = self
            .commit_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        commit()?;
        if !deltas.is_empty() {
            let buckets = deltas.finest_len();
            let mut state = self.state();
            state.current.merge(deltas);
            state.added += buckets;
            state.oldest.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Whether a fold is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        let state = self.state();
        state.added >= FOLD_MAX_BUCKETS
            || state
                .oldest
                .is_some_and(|oldest| now.duration_since(oldest) >= FOLD_AFTER)
    }

    /// Starts a fold of everything pending; `None` when nothing is. The
    /// deltas stay visible to readers until [`Pending::finish_fold`].
    pub fn start_fold(&self) -> Option<Fold> {
        let mut state = self.state();
        debug_assert!(state.folding.is_none(), "folds run one at a time");
        if state.current.is_empty() {
            return None;
        }
        let intervals = state.current.intervals().to_vec();
        let deltas = Arc::new(std::mem::replace(
            &mut state.current,
            RollupBatch::new(&intervals),
        ));
        state.oldest = None;
        state.added = 0;
        state.folding = Some(Arc::clone(&deltas));
        Some(Fold { deltas })
    }

    /// Ends `fold`: `commit` runs under the write side of the fold gate and, when
    /// it succeeds, the folded deltas stop being pending at the same time;
    /// when it fails they stay pending (their rows are still stored).
    pub fn finish_fold<E>(
        &self,
        fold: Fold,
        commit: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let _gate = self
            .fold_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let result = commit();
        let mut state = self.state();
        state.folding = None;
        if result.is_err() {
            let newer = std::mem::replace(&mut state.current, (*fold.deltas).clone());
            state.current.merge(newer);
            state.added += fold.deltas.finest_len();
            state.oldest.get_or_insert_with(Instant::now);
        }
        result
    }

    /// Holds folds off (and commits too, when `commits`) while the caller
    /// reads rows; pass the guard to [`Pending::read`].
    pub fn hold(&self, commits: bool) -> ReadGuard<'_> {
        let commits = commits.then(|| {
            self.commit_gate
                .read()
                .unwrap_or_else(PoisonError::into_inner)
        });
        ReadGuard {
            _fold: self
                .fold_gate
                .read()
                .unwrap_or_else(PoisonError::into_inner),
            _commits: commits,
        }
    }

    /// Adds to `rows` (rows of `filter` at `interval` with bucket starts in
    /// `[start_ms, end_ms)`, read under `_held`) the pending deltas of the
    /// same buckets.
    pub fn read(
        &self,
        _held: &ReadGuard<'_>,
        filter: &MetricFilter,
        interval: Interval,
        (start_ms, end_ms): (i64, i64),
        rows: &mut Vec<RollupRow>,
    ) {
        let state = self.state();
        // A bucket of `interval` starting in the range holds finest buckets
        // up to one interval past its end.
        let to_ms = end_ms.saturating_add(interval.millis());
        let deltas = state
            .folding
            .as_deref()
            .into_iter()
            .chain([&state.current])
            .flat_map(|deltas| {
                deltas.finest_of(
                    &filter.metric,
                    filter.dimensions.as_deref(),
                    start_ms,
                    to_ms,
                )
            })
            .map(|(dimensions, finest_start, delta)| {
                (dimensions, interval.bucket_start(finest_start), delta)
            })
            .filter(|(_, bucket_start_ms, _)| (start_ms..end_ms).contains(bucket_start_ms));
        super::merge_into_rows(rows, deltas);
    }
}
