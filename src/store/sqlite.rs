//! The embedded store: one SQLite file in WAL mode.
//!
//! One writer connection (SQLite allows one writer at a time) serves the
//! pipeline's group commits; a small pool of reader connections serves
//! queries concurrently with the writer, which WAL permits. All SQLite work
//! runs on the blocking thread pool so async tasks never block.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use super::checkpoint::{self, Checkpointer};
use super::decoded_cache::{DecodedCache, RowKey};
use super::distinct_cache::StoredDistinct;
use super::pending::{self, Pending};
use super::rollup_cache::RollupCache;
use super::{
    DeadLetter, DeadLetterQuery, EventQuery, MetricFilter, PreparedBatch, PreparingBatch,
    RetentionCutoffs, RetentionReport, RollupRow, Store, StoreError, StoredDeadLetter,
    TradingCutoff,
};
use crate::model::{CustomEventDefinition, Event, Properties};
use crate::rollup::{Accumulator, Interval, RollupBatch, RollupKey};
use crate::trading::summary::{
    self, Mark, MarkSpans, MergeSlices, SummaryBody, SummaryKind, SummaryPart,
};
use crate::trading::{BarDelta, FillRow, FillView, OrderDelta, TradingBatch};

/// Versioned migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/sqlite/0001_init.sql")),
    (
        2,
        "distinct_values",
        include_str!("migrations/sqlite/0002_distinct_values.sql"),
    ),
    (
        3,
        "dead_letters",
        include_str!("migrations/sqlite/0003_dead_letters.sql"),
    ),
    (
        4,
        "trading",
        include_str!("migrations/sqlite/0004_trading.sql"),
    ),
    (
        5,
        "trading_summaries",
        include_str!("migrations/sqlite/0005_trading_summaries.sql"),
    ),
    (
        6,
        "rollup_deltas",
        include_str!("migrations/sqlite/0006_rollup_deltas.sql"),
    ),
    (
        7,
        "rollup_deltas_unindexed",
        include_str!("migrations/sqlite/0007_rollup_deltas_unindexed.sql"),
    ),
];

const DEAD_LETTER_COLUMNS: &str = "id, source, topic, message_partition, message_offset, message_key, \
     payload, payload_truncated, event_id, error, attempts, received_at";

fn read_dead_letter(row: &rusqlite::Row<'_>) -> Result<StoredDeadLetter, StoreError> {
    let event_id: Vec<u8> = row.get(8)?;
    let event_id = uuid::Uuid::from_slice(&event_id)
        .map_err(|error| StoreError::Corrupt(format!("dead letter event id: {error}")))?;
    Ok(StoredDeadLetter {
        id: row.get(0)?,
        letter: DeadLetter {
            source: row.get(1)?,
            topic: row.get(2)?,
            partition: row.get(3)?,
            offset: row.get(4)?,
            key: row.get(5)?,
            payload: row.get(6)?,
            payload_truncated: row.get(7)?,
            event_id,
            error: row.get(9)?,
            received_at_ms: row.get(11)?,
        },
        attempts: row.get(10)?,
    })
}

/// Decoded value rows the readers keep (a few tens of MiB at most).
const DECODED_CACHE_ROWS: usize = 10_000;

/// Rows one retention transaction deletes at most.
const RETENTION_CHUNK_ROWS: usize = 5_000;

/// Value rows the writer keeps in memory (see [`RollupCache`]); a few MiB.
const ROLLUP_CACHE_ROWS: usize = 20_000;

/// Distinct values the writer remembers as stored (see [`StoredDistinct`]);
/// a few MiB.
const DISTINCT_CACHE_VALUES: usize = 50_000;

/// The one writer connection and what it knows about the rows it wrote.
struct Writer {
    connection: Connection,
    cache: RollupCache,
    /// Distinct values this writer committed and knows are still stored.
    distinct: StoredDistinct,
    /// The deltas this instance committed and has not folded yet.
    pending: Arc<Pending>,
    /// This instance's id in `rollup_deltas.owner`.
    owner: i64,
}

/// Reader connections kept open between queries.
const MAX_IDLE_READERS: usize = 8;

/// How durable an acknowledged commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// Durable against a crash of the process; the WAL reaches the disk at
    /// checkpoints, so a power loss may lose the last commits.
    Normal,
    /// Durable against power loss: the WAL is fsynced before a batch is
    /// acknowledged.
    Full,
}

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    /// `Some(path of the WAL file)` when [`Store::sync`] must fsync it.
    wal_to_sync: Option<PathBuf>,
    /// Decoded value rows for the readers (see [`DecodedCache`]).
    decoded: Arc<DecodedCache>,
    /// Whether the WAL's directory entry has been fsynced once.
    wal_directory_synced: Arc<AtomicBool>,
    writer: Arc<Mutex<Writer>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    intervals: Arc<[Interval]>,
    /// The deltas committed and not folded yet, which readers add to the
    /// rows they read.
    pending: Arc<Pending>,
    /// Folds the pending deltas in the background (and once more when the
    /// store is dropped); `None` when folds are left to the caller.
    folder: Option<Folder>,
    /// The lock on this instance's owner file, held while it lives, so
    /// that another process can tell its delta rows are not abandoned.
    _owner_lock: OwnerLock,
    /// Copies the WAL into the database in the background; stops with the
    /// store.
    _checkpointer: Checkpointer,
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match &error {
            rusqlite::Error::SqliteFailure(failure, _)
                if failure.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(error.to_string())
            }
            // A stored value that does not read as what was written.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(error.to_string()),
            _ => StoreError::Unavailable(error.to_string()),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The last fold; what it leaves (Manual, or a failure) is folded by
        // the next instance to open the database, once the owner file is
        // gone.
        if let Some(folder) = self.folder.take() {
            drop(folder);
            if let Ok(mut writer) = self.writer.lock()
                && let Err(error) = fold(&mut writer)
            {
                tracing::warn!(%error, "the last fold of the rollup deltas failed; the next start folds them");
            }
        }
    }
}

/// Who folds the pending rollup deltas of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Folding {
    /// A thread of the store, and the store's drop.
    Background,
    /// Only explicit calls (tests that stop a store as a crash would).
    #[cfg(test)]
    Manual,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending
    /// migrations.
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
        intervals: &[Interval],
    ) -> Result<Self, StoreError> {
        Self::open_with(path, synchronous, intervals, Folding::Background)
    }

    pub(crate) fn open_with(
        path: &Path,
        synchronous: Synchronous,
        intervals: &[Interval],
        folding: Folding,
    ) -> Result<Self, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|error| {
                StoreError::Unavailable(format!("cannot create {}: {error}", parent.display()))
            })?;
        }
        let mut writer = Connection::open(path)?;
        plan_once(&writer)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // SQLite itself never fsyncs at commit (NORMAL); with `Full` the
        // store fsyncs the WAL in `sync`, outside the writer lock, so the
        // next transaction commits while the previous one reaches the disk.
        // A transaction whose WAL frames are on disk survives power loss:
        // recovery replays every checksummed frame, and a checkpoint fsyncs
        // the WAL before copying it and the database before reusing it.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.pragma_update(None, "busy_timeout", 5000)?;
        writer.pragma_update(None, "cache_size", -65536)?;
        // Checkpoints run beside the commits, not inside them (see
        // `checkpoint`).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A batch's commit runs about twenty statements (one- and multi-row
        // inserts and upserts, reads back, the fold's): with rusqlite's
        // default of 16 cached, each batch prepared some again.
        writer.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        migrate(&mut writer)?;
        let owner_lock = OwnerLock::take(path)?;
        recover_deltas(
            &mut writer,
            &mut RollupCache::new(0),
            path,
            owner_lock.owner,
            intervals,
        )?;
        let checkpointer = Checkpointer::start(path, checkpoint::RESTART_FRAMES)?;
        let wal_to_sync = (synchronous == Synchronous::Full).then(|| {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            PathBuf::from(wal)
        });
        let pending = Arc::new(Pending::new(intervals));
        let writer = Arc::new(Mutex::new(Writer {
            connection: writer,
            cache: RollupCache::new(ROLLUP_CACHE_ROWS),
            distinct: StoredDistinct::new(DISTINCT_CACHE_VALUES),
            pending: Arc::clone(&pending),
            owner: owner_lock.owner,
        }));
        let folder = if folding == Folding::Background {
            Some(Folder::start(
                &writer,
                path.to_path_buf(),
                intervals.to_vec(),
            )?)
        } else {
            None
        };
        Ok(SqliteStore {
            path: path.to_path_buf(),
            wal_to_sync,
            wal_directory_synced: Arc::new(AtomicBool::new(false)),
            decoded: Arc::new(DecodedCache::new(DECODED_CACHE_ROWS)),
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            intervals: intervals.into(),
            pending,
            folder,
            _owner_lock: owner_lock,
            _checkpointer: checkpointer,
        })
    }

    /// Runs `work` on the writer connection on the blocking pool.
    async fn with_writer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = Arc::clone(&self.writer);
        run_blocking(move || {
            let mut writer = writer
                .lock()
                .map_err(|_| StoreError::Unavailable("writer connection poisoned".into()))?;
            work(&mut writer)
        })
        .await
    }

    /// Runs `delete` (parameters: ?1 cutoff, ?2 chunk size, ?3 `extra`)
    /// until it deletes less than a chunk; each chunk is its own short
    /// transaction, so ingest commits interleave with a long retention run.
    async fn delete_in_chunks(
        &self,
        delete: &'static str,
        extra: Option<String>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        loop {
            let extra = extra.clone();
            let chunk = self
                .with_writer(move |writer| {
                    let changed = match &extra {
                        Some(extra) => writer.connection.execute(
                            delete,
                            params![before_ms, RETENTION_CHUNK_ROWS as i64, extra],
                        )?,
                        None => writer
                            .connection
                            .execute(delete, params![before_ms, RETENTION_CHUNK_ROWS as i64])?,
                    };
                    if changed > 0 {
                        // Deleted rows must not live on in the caches (a late
                        // event could otherwise resurrect a deleted bucket,
                        // or skip a distinct value deleted under it).
                        writer.cache.clear();
                        writer.distinct.clear();
                    }
                    Ok(changed)
                })
                .await?;
            deleted += chunk as u64;
            if chunk < RETENTION_CHUNK_ROWS {
                return Ok(deleted);
            }
        }
    }

    /// Runs `work` on a reader connection on the blocking pool.
    async fn with_reader<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let path = self.path.clone();
        run_blocking(move || {
            let idle = readers.lock().ok().and_then(|mut idle| idle.pop());
            let connection = match idle {
                Some(connection) => connection,
                None => open_reader(&path)?,
            };
            let result = work(&connection);
            if let Ok(mut idle) = readers.lock()
                && idle.len() < MAX_IDLE_READERS
            {
                idle.push(connection);
            }
            result
        })
        .await
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Unavailable(format!("storage task failed: {error}")))?
}

/// fdatasync of `path`, and with `sync_directory` of its directory too (so
/// the WAL's directory entry is durable; once is enough, the writer keeps
/// the WAL open for the store's lifetime). Opened afresh each time, so it
/// always reaches the file SQLite writes.
fn sync_file(path: &Path, sync_directory: bool) -> Result<(), StoreError> {
    let fail = |error: std::io::Error| {
        StoreError::Unavailable(format!("fsync {}: {error}", path.display()))
    };
    std::fs::File::open(path)
        .and_then(|file| file.sync_data())
        .map_err(fail)?;
    if sync_directory {
        let directory = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(directory)
            .and_then(|file| file.sync_all())
            .map_err(fail)?;
    }
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "busy_timeout", 5000)?;
    connection.pragma_update(None, "query_only", 1)?;
    plan_once(&connection)?;
    Ok(connection)
}

/// Plans each cached statement once, whatever its parameters. Without the
/// query planner stability guarantee, SQLite compiles a statement again
/// when a new value is bound to a parameter its plan depended on: a bound
/// `LIMIT`, a value checked against a partial index's condition, an
/// equality with a bound 0 or 1 (a summary kind). Profiles of the trading
/// reports found a tenth of their CPU in such recompiles, inside
/// `sqlite3_step`; with the guarantee there are none. Each statement then
/// keeps the plan made without knowing its values (none here filters with
/// `LIKE` on a bound pattern, the one case that plan would be worse).
fn plan_once(connection: &Connection) -> Result<(), StoreError> {
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = transaction.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    for (version, name, sql) in MIGRATIONS
        .iter()
        .filter(|(version, _, _)| *version > applied)
    {
        transaction.execute_batch(sql)?;
        transaction.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, crate::model::event::now_ms()],
        )?;
        tracing::info!(version, name, "applied sqlite migration");
    }
    transaction.commit()?;
    Ok(())
}

/// Rows per execution of a multi-row insert (see [`values_rows`]): one
/// execution opens the table's and indexes' cursors, and steps, once for
/// them all. Batches go in by such runs, their remainder row by row.
const ROWS_PER_INSERT: usize = 32;

/// Statements the writer connection keeps prepared.
const WRITER_STATEMENTS: usize = 64;

/// `(?1, …, ?n), (?n+1, …)`: `rows` rows of `parameters` numbered
/// parameters each, for a multi-row `INSERT … VALUES`.
fn values_rows(parameters: usize, rows: usize) -> String {
    (0..rows)
        .map(|row| {
            let first = row * parameters + 1;
            let numbered: Vec<String> = (first..first + parameters)
                .map(|index| format!("?{index}"))
                .collect();
            format!("({})", numbered.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An `INSERT … VALUES` of one row and of [`ROWS_PER_INSERT`] rows, for
/// [`insert_in_runs`], with the parameters of a row they were built for.
struct RowInsert {
    single: String,
    multi: String,
    parameters: usize,
}

impl RowInsert {
    /// `INSERT OR FAIL INTO table (columns) VALUES (…)tail`, a parameter
    /// per column (`columns` separated by commas).
    ///
    /// `OR FAIL`, not the default `ABORT`: a statement that writes several
    /// rows and may abort makes SQLite copy every page it changes into a
    /// statement journal first, to undo only that statement; past 64 KiB
    /// the journal goes to a temporary file, so a 10 000-event commit wrote
    /// its pages twice (BENCHMARKS.md, session 20). A failed statement
    /// fails the whole transaction here (the writer rolls it back), so
    /// what `FAIL` leaves of it is never committed. An `ON CONFLICT` clause
    /// in `tail` still decides the conflicts of its own target.
    fn new(table: &str, columns: &str, tail: &str) -> RowInsert {
        let parameters = columns.split(',').count();
        let insert = |rows| {
            format!(
                "INSERT OR FAIL INTO {table} ({columns}) VALUES {}{tail}",
                values_rows(parameters, rows)
            )
        };
        RowInsert {
            single: insert(1),
            multi: insert(ROWS_PER_INSERT),
            parameters,
        }
    }
}

/// The insert of events; an id stored already is skipped.
static INSERT_EVENTS: LazyLock<RowInsert> =
    LazyLock::new(|| RowInsert::new("events", EVENT_COLUMNS, " ON CONFLICT (id) DO NOTHING"));

/// Binds each value to the next parameter from `first` (1-based) on: one
/// row of a [`RowInsert`], with no parameter index written out. A macro, not
/// a function over `&[&dyn ToSql]`: that one cost 2 % more instructions on
/// batch ingest.
macro_rules! bind_row {
    ($statement:expr, $first:expr, [$($value:expr),+ $(,)?] $(,)?) => {{
        let statement = $statement;
        let mut parameter = $first;
        $(
            statement.raw_bind_parameter(parameter, $value)?;
            parameter += 1;
        )+
        let _ = parameter;
        Ok(())
    }};
}

/// Binds `event` as the row whose first parameter is `first` (1-based).
fn bind_event(
    statement: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    event: &Event,
) -> rusqlite::Result<()> {
    bind_row!(
        statement,
        first,
        [
            &event.id.as_bytes().as_slice(),
            &event.timestamp_ms,
            &event.event_type,
            &event.user_id,
            &event.session_id,
            &event.properties.as_json(),
            &event.created_at_ms,
        ],
    )
}

/// Inserts `events`, skipping ids stored already; says which were new.
///
/// When a run of [`INSERT_EVENTS`] inserts some but not all of its rows (an
/// id stored already, or twice in the run), the rows it did insert are told
/// apart by their `seq`: each new row takes the next rowid, so they are
/// exactly the ones from `last_insert_rowid - changes + 1` on; of an id
/// given twice only the first is new.
fn insert_events(
    transaction: &rusqlite::Transaction<'_>,
    events: &[Event],
) -> Result<Vec<bool>, StoreError> {
    let mut inserted = Vec::with_capacity(events.len());
    let mut seq_of = None;
    insert_in_runs(
        transaction,
        &INSERT_EVENTS,
        events,
        bind_event,
        |run, changed| {
            if changed == run.len() || changed == 0 {
                inserted.extend(std::iter::repeat_n(changed > 0, run.len()));
                return Ok(());
            }
            let seq_of = match &mut seq_of {
                Some(statement) => statement,
                None => seq_of
                    .insert(transaction.prepare_cached("SELECT seq FROM events WHERE id = ?1")?),
            };
            let changed = i64::try_from(changed).unwrap_or(i64::MAX);
            let first_new = transaction.last_insert_rowid() - changed + 1;
            for (row, event) in run.iter().enumerate() {
                let seq: i64 =
                    seq_of.query_row([event.id.as_bytes().as_slice()], |row| row.get(0))?;
                let repeated = run[..row].iter().any(|earlier| earlier.id == event.id);
                inserted.push(seq >= first_new && !repeated);
            }
            Ok(())
        },
    )?;
    Ok(inserted)
}

/// Inserts `rows` by `insert`'s multi-row statement per full run of
/// [`ROWS_PER_INSERT`] and by its one-row statement for the rest; `bind`
/// binds one row from the parameter it is given (1-based) on, and
/// `inserted` hears each execution's rows and how many of them it stored.
fn insert_in_runs<T>(
    transaction: &rusqlite::Transaction<'_>,
    insert: &RowInsert,
    rows: &[T],
    bind: impl Fn(&mut rusqlite::CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
    mut inserted: impl FnMut(&[T], usize) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut runs = rows.chunks_exact(ROWS_PER_INSERT);
    if rows.len() >= ROWS_PER_INSERT {
        let mut multi = transaction.prepare_cached(&insert.multi)?;
        for run in &mut runs {
            for (row, item) in run.iter().enumerate() {
                bind(&mut multi, row * insert.parameters + 1, item)?;
            }
            let changed = multi.raw_execute()?;
            inserted(run, changed)?;
        }
    }
    let mut single = transaction.prepare_cached(&insert.single)?;
    for item in runs.remainder() {
        bind(&mut single, 1, item)?;
        let changed = single.raw_execute()?;
        inserted(std::slice::from_ref(item), changed)?;
    }
    Ok(())
}

const UPSERT_COUNT: &str = "INSERT INTO rollups (metric, interval, bucket_start, dimensions, count)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (metric, interval, bucket_start, dimensions) DO UPDATE SET count = count + excluded.count";

const SELECT_ROLLUP: &str = "SELECT count, sum, min, max, sketch FROM rollups
     WHERE metric = ?1 AND interval = ?2 AND bucket_start = ?3 AND dimensions = ?4";

const UPSERT_VALUES: &str =
    "INSERT INTO rollups (metric, interval, bucket_start, dimensions, count, sum, min, max, sketch)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
     ON CONFLICT (metric, interval, bucket_start, dimensions) DO UPDATE SET
         count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
         sketch = excluded.sketch";

const EVENT_COLUMNS: &str = "id, ts, event_type, user_id, session_id, properties, created_at";

const INSERT_DISTINCT: &str = "INSERT INTO distinct_values (dimension, bucket_start, value) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";

const INSERT_DELTA: &str = "INSERT INTO rollup_deltas
         (owner, metric, bucket_start, dimensions, count, sum, min, max, sketch)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Rollups prepared for other intervals than the store's would leave its
/// intervals inconsistent with each other.
fn check_intervals(rolled_up: &[Interval], intervals: &[Interval]) -> Result<(), StoreError> {
    if rolled_up != intervals {
        return Err(StoreError::Corrupt(format!(
            "batch rolled up into {rolled_up:?}, the store keeps {intervals:?}"
        )));
    }
    Ok(())
}

/// A batch for the writer: prepared, or still being prepared (its events
/// are inserted while the rest is computed).
enum Incoming {
    Prepared(PreparedBatch),
    Preparing(PreparingBatch),
}

fn commit_blocking(writer: &mut Writer, batch: Incoming) -> Result<Vec<bool>, StoreError> {
    let result = commit_transaction(writer, batch);
    if result.is_err() {
        // Rows merged in memory for the failed transaction were never
        // stored; start from the database again.
        writer.cache.clear();
    } else if writer.pending.due(Instant::now()) {
        // Folded here under load, by the folder thread when idle; a failed
        // fold leaves the deltas pending (and stored) for the next one.
        if let Err(error) = fold(writer) {
            tracing::warn!(%error, "folding the pending rollup deltas failed; retrying later");
        }
    }
    result
}

/// Starts a write transaction, first dropping what the caches hold when
/// another connection has written since they were filled.
fn begin_writing<'a>(
    connection: &'a mut Connection,
    cache: &mut RollupCache,
    distinct: &mut StoredDistinct,
) -> Result<rusqlite::Transaction<'a>, StoreError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Cached like every statement of a commit: preparing one costs about
    // as much as running it, and a single-event group commits hundreds of
    // times a second.
    let data_version: i64 = transaction
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?;
    cache.validate(data_version);
    distinct.validate(data_version);
    Ok(transaction)
}

fn commit_transaction(writer: &mut Writer, batch: Incoming) -> Result<Vec<bool>, StoreError> {
    let Writer {
        connection,
        cache,
        distinct: stored_distinct,
        pending,
        owner,
    } = writer;
    let transaction = begin_writing(connection, cache, stored_distinct)?;
    let (inserted, batch) = match batch {
        Incoming::Prepared(batch) => (insert_events(&transaction, &batch.events)?, batch),
        Incoming::Preparing(batch) => {
            let inserted = insert_events(&transaction, batch.events())?;
            (inserted, batch.finish_blocking()?)
        }
    };
    if let Some(prepared) = &batch.trading {
        let trading = TradingBatch::of_inserted_given(prepared, &batch.events, &inserted);
        write_trading(&transaction, &trading)?;
    }
    let (rollups, distinct) = batch.into_rollups_of_inserted(&inserted);
    // The values this transaction inserts, for the cache once committed.
    let mut new_distinct = Vec::new();
    {
        let mut insert_distinct = transaction.prepare_cached(INSERT_DISTINCT)?;
        for (dimension, minute, value) in distinct.iter() {
            if !stored_distinct.contains(dimension, minute, value) {
                insert_distinct.execute(params![dimension, minute, value])?;
                new_distinct.push((dimension, minute, value));
            }
        }
    }
    if rollups.finest_len() <= pending::DEFER_MAX_BUCKETS {
        // Few buckets: store the deltas, fold them later (see `pending`).
        {
            let mut insert = transaction.prepare_cached(INSERT_DELTA)?;
            for (metric, dimensions, bucket_start_ms, delta) in rollups.finest() {
                insert.execute(params![
                    *owner,
                    metric,
                    bucket_start_ms,
                    dimensions,
                    delta.count() as i64,
                    delta.sum(),
                    delta.min(),
                    delta.max(),
                    delta.sketch_bytes(),
                ])?;
            }
        }
        pending.commit_deltas(rollups, || transaction.commit())?;
        stored_distinct.insert_committed(new_distinct);
        return Ok(inserted);
    }
    let written = write_rollup_rows(&transaction, cache, rollups.into_sorted())?;
    transaction.commit()?;
    cache.insert_committed(written);
    stored_distinct.insert_committed(new_distinct);
    Ok(inserted)
}

/// Adds `rows` (deltas, in key order) to the stored rollup rows, merging
/// through `cache`; returns the merged rows for the cache once committed.
fn write_rollup_rows(
    transaction: &rusqlite::Transaction<'_>,
    cache: &mut RollupCache,
    rows: Vec<(RollupKey, Accumulator)>,
) -> Result<Vec<(RollupKey, Accumulator)>, StoreError> {
    let mut upsert_count = transaction.prepare_cached(UPSERT_COUNT)?;
    let mut select = transaction.prepare_cached(SELECT_ROLLUP)?;
    let mut upsert_values = transaction.prepare_cached(UPSERT_VALUES)?;
    let mut written = Vec::with_capacity(rows.len());
    for (key, delta) in rows {
        let interval = key.interval.as_str();
        if !delta.has_values() {
            upsert_count.execute(params![
                key.metric,
                interval,
                key.bucket_start_ms,
                key.dimensions,
                delta.count() as i64
            ])?;
            continue;
        }
        let merged = match cache.take(&key) {
            Some(mut accumulator) => {
                accumulator.merge(&delta);
                accumulator
            }
            None => {
                let stored = select
                    .query_row(
                        params![key.metric, interval, key.bucket_start_ms, key.dimensions],
                        read_accumulator_columns,
                    )
                    .optional()?;
                match stored {
                    Some(parts) => {
                        let mut accumulator = parts.into_accumulator()?;
                        accumulator.merge(&delta);
                        accumulator
                    }
                    None => delta,
                }
            }
        };
        upsert_values.execute(params![
            key.metric,
            interval,
            key.bucket_start_ms,
            key.dimensions,
            merged.count() as i64,
            merged.sum(),
            merged.min(),
            merged.max(),
            merged.sketch_bytes(),
        ])?;
        written.push((key, merged));
    }
    Ok(written)
}

/// Folds every pending delta of `writer`'s instance into the rollup rows
/// and deletes its delta rows, in one transaction (see `pending`). When it
/// fails the deltas stay pending, and stored.
fn fold(writer: &mut Writer) -> Result<(), StoreError> {
    let Writer {
        connection,
        cache,
        distinct,
        pending,
        owner,
    } = writer;
    let Some(fold) = pending.start_fold() else {
        return Ok(());
    };
    let prepared = prepare_fold(connection, cache, distinct, &fold.deltas, *owner);
    let mut written = Vec::new();
    let result = pending.finish_fold(fold, || {
        let (transaction, rows) = prepared?;
        transaction.commit()?;
        written = rows;
        Ok::<(), StoreError>(())
    });
    match result {
        Ok(()) => cache.insert_committed(written),
        Err(_) => cache.clear(),
    }
    result
}

/// The transaction of a fold, ready to commit, and the rows it wrote.
type PreparedFold<'a> = (rusqlite::Transaction<'a>, Vec<(RollupKey, Accumulator)>);

fn prepare_fold<'a>(
    connection: &'a mut Connection,
    cache: &mut RollupCache,
    distinct: &mut StoredDistinct,
    deltas: &RollupBatch,
    owner: i64,
) -> Result<PreparedFold<'a>, StoreError> {
    let transaction = begin_writing(connection, cache, distinct)?;
    let written = write_rollup_rows(&transaction, cache, deltas.clone().into_sorted())?;
    transaction.execute("DELETE FROM rollup_deltas WHERE owner = ?1", [owner])?;
    Ok((transaction, written))
}

/// Folds the delta rows of every owner that is no longer alive (its owner
/// file is gone or unlocked: it stopped without folding, e.g. killed) into
/// the rollup rows, in one transaction, then removes their owner files.
/// `cache` is the writer's (the rows it changes are dropped from it).
fn recover_deltas(
    connection: &mut Connection,
    cache: &mut RollupCache,
    path: &Path,
    me: i64,
    intervals: &[Interval],
) -> Result<(), StoreError> {
    let mut abandoned = OwnerLock::abandoned(path, me)?;
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let owners: Vec<i64> = transaction
        .prepare("SELECT DISTINCT owner FROM rollup_deltas")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut recovered = 0usize;
    for owner in owners {
        if owner == me || OwnerLock::alive(path, owner, &abandoned) {
            continue;
        }
        let mut deltas = RollupBatch::new(intervals);
        {
            let mut select = transaction.prepare(
                "SELECT count, sum, min, max, sketch, metric, bucket_start, dimensions
                 FROM rollup_deltas WHERE owner = ?1",
            )?;
            let mut rows = select.query([owner])?;
            while let Some(row) = rows.next()? {
                let metric: String = row.get(5)?;
                let bucket_start_ms: i64 = row.get(6)?;
                let dimensions: String = row.get(7)?;
                let delta = read_accumulator_columns(row)?.into_accumulator()?;
                deltas.add_accumulator(&metric, &dimensions, bucket_start_ms, delta);
                recovered += 1;
            }
        }
        cache.clear();
        write_rollup_rows(&transaction, cache, deltas.into_sorted())?;
        transaction.execute("DELETE FROM rollup_deltas WHERE owner = ?1", [owner])?;
        abandoned.push(OwnerLock::file_of(path, owner));
    }
    let committed = transaction.commit();
    if recovered > 0 {
        // Merged through the cache but maybe not committed: start over.
        cache.clear();
    }
    committed?;
    if recovered > 0 {
        tracing::info!(
            rows = recovered,
            "folded the rollup deltas a stopped instance had left unfolded"
        );
    }
    for file in abandoned {
        // Left behind, it is found abandoned again and removed next time.
        if let Err(error) = std::fs::remove_file(&file) {
            tracing::warn!(file = %file.display(), %error, "cannot remove an abandoned owner file");
        }
    }
    Ok(())
}

/// How often the folder thread looks whether a fold is due.
const FOLDER_PERIOD: Duration = Duration::from_millis(250);

/// How often the folder thread folds the deltas of other instances that
/// stopped without folding (an `analytics import` that exited early).
const RECOVER_PERIOD: Duration = Duration::from_secs(10);

/// The thread that folds a store's pending deltas when ingest is idle, and
/// now and then those other instances abandoned; it stops when this is
/// dropped.
struct Folder {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Folder {
    fn start(
        writer: &Arc<Mutex<Writer>>,
        path: PathBuf,
        intervals: Vec<Interval>,
    ) -> Result<Folder, StoreError> {
        let writer = Arc::downgrade(writer);
        let mut recovered = Instant::now();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("analytics-fold".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FOLDER_PERIOD)
                {
                    let Some(writer) = writer.upgrade() else {
                        return;
                    };
                    let Ok(mut writer) = writer.lock() else {
                        return;
                    };
                    if writer.pending.due(Instant::now())
                        && let Err(error) = fold(&mut writer)
                    {
                        tracing::warn!(%error, "folding the pending rollup deltas failed; retrying later");
                    }
                    if recovered.elapsed() >= RECOVER_PERIOD {
                        recovered = Instant::now();
                        let Writer {
                            connection,
                            cache,
                            owner,
                            ..
                        } = &mut *writer;
                        if let Err(error) =
                            recover_deltas(connection, cache, &path, *owner, &intervals)
                        {
                            tracing::warn!(%error, "folding abandoned rollup deltas failed; retrying later");
                        }
                    }
                }
            })
            .map_err(|error| {
                StoreError::Unavailable(format!("cannot start the fold thread: {error}"))
            })?;
        Ok(Folder {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the rollup fold thread panicked; pending deltas stay stored");
        }
    }
}

/// This instance's owner id and the exclusive lock on its owner file
/// (`<database>-owner-<id>`), held while the instance lives and removed
/// when it is dropped.
struct OwnerLock {
    owner: i64,
    path: PathBuf,
    _file: std::fs::File,
}

impl OwnerLock {
    fn file_of(database: &Path, owner: i64) -> PathBuf {
        let mut name = database.as_os_str().to_owned();
        name.push(format!("-owner-{:016x}", owner as u64));
        PathBuf::from(name)
    }

    fn take(database: &Path) -> Result<OwnerLock, StoreError> {
        let owner = (Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
        let path = Self::file_of(database, owner);
        let unavailable = |error: std::io::Error| {
            StoreError::Unavailable(format!("cannot lock {}: {error}", path.display()))
        };
        // Locked under a name the scan of abandoned owners skips, then
        // renamed: no other instance can take the new file for abandoned.
        let mut fresh = path.clone().into_os_string();
        fresh.push(".new");
        let file = std::fs::File::create(&fresh).map_err(unavailable)?;
        file.try_lock().map_err(|error| unavailable(error.into()))?;
        std::fs::rename(&fresh, &path).map_err(unavailable)?;
        Ok(OwnerLock {
            owner,
            path: path.clone(),
            _file: file,
        })
    }

    /// The owner files beside `database` of instances no longer running
    /// (their lock can be taken), except `me`'s.
    fn abandoned(database: &Path, me: i64) -> Result<Vec<PathBuf>, StoreError> {
        let Some(name) = database.file_name().and_then(|name| name.to_str()) else {
            return Ok(Vec::new());
        };
        let prefix = format!("{name}-owner-");
        let directory = match database.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let entries = std::fs::read_dir(&directory).map_err(|error| {
            StoreError::Unavailable(format!("cannot list {}: {error}", directory.display()))
        })?;
        let mine = Self::file_of(database, me);
        let mut abandoned = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|file| file.starts_with(&prefix) && !file.ends_with(".new"));
            if !ours || path == mine {
                continue;
            }
            let unlocked = std::fs::File::open(&path).is_ok_and(|file| file.try_lock().is_ok());
            if unlocked {
                abandoned.push(path);
            }
        }
        Ok(abandoned)
    }

    /// Whether `owner` still runs: its owner file exists and is not among
    /// the `abandoned` ones.
    fn alive(database: &Path, owner: i64, abandoned: &[PathBuf]) -> bool {
        let file = Self::file_of(database, owner);
        file.exists() && !abandoned.contains(&file)
    }
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        // Left behind, the file is only taken for a stopped instance's by
        // the next one (its lock is free), which removes it.
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove this instance's owner file");
        }
    }
}

/// The `ON CONFLICT` of an order upsert, with `$placement` (the assignments
/// of the placement's columns, or nothing) in its `DO UPDATE`.
macro_rules! order_merge {
    ($placement:literal) => {
        concat!(
            "
     ON CONFLICT (order_id) DO UPDATE SET
         symbol = COALESCE(symbol, excluded.symbol),
         side = COALESCE(side, excluded.side),
         strategy_id = COALESCE(strategy_id, excluded.strategy_id),
         order_type = COALESCE(order_type, excluded.order_type),",
            $placement,
            "
         filled_quantity = filled_quantity + excluded.filled_quantity,
         filled_notional = filled_notional + excluded.filled_notional,
         fills = fills + excluded.fills,
         maker_fills = maker_fills + excluded.maker_fills,
         commission = commission + excluded.commission,
         first_fill_at = COALESCE(MIN(first_fill_at, excluded.first_fill_at), first_fill_at, excluded.first_fill_at),
         last_fill_at = COALESCE(MAX(last_fill_at, excluded.last_fill_at), last_fill_at, excluded.last_fill_at),
         canceled_at = COALESCE(MIN(canceled_at, excluded.canceled_at), canceled_at, excluded.canceled_at),
         rejected_at = COALESCE(MIN(rejected_at, excluded.rejected_at), rejected_at, excluded.rejected_at),
         seen_at = MIN(seen_at, excluded.seen_at)"
        )
    };
}

/// The upsert of order changes that carry their placement.
static UPSERT_ORDERS: LazyLock<RowInsert> = LazyLock::new(|| {
    RowInsert::new(
        "trading_orders",
        ORDER_COLUMNS,
        order_merge!(
            "
         placed_at = COALESCE(MIN(placed_at, excluded.placed_at), placed_at, excluded.placed_at),
         quantity = CASE WHEN excluded.placed_at < placed_at THEN COALESCE(excluded.quantity, quantity)
                         ELSE COALESCE(quantity, excluded.quantity) END,
         price = CASE WHEN excluded.placed_at < placed_at THEN COALESCE(excluded.price, price)
                      ELSE COALESCE(price, excluded.price) END,
         latency_ms = CASE WHEN excluded.placed_at < placed_at THEN COALESCE(excluded.latency_ms, latency_ms)
                           ELSE COALESCE(latency_ms, excluded.latency_ms) END,"
        ),
    )
});

/// The upsert of order changes without a placement (fills, a cancel, a
/// reject): the same merge, whose placement columns would keep their stored
/// values, so it leaves them out. SQLite then leaves the index on
/// `placed_at` alone instead of deleting and re-inserting the same entry.
static UPSERT_UNPLACED_ORDERS: LazyLock<RowInsert> =
    LazyLock::new(|| RowInsert::new("trading_orders", ORDER_COLUMNS, order_merge!("")));

/// The rows of up to [`ROWS_PER_INSERT`] orders as stored after their
/// upsert (parameters left unbound are NULL, which matches no order). A
/// separate statement costs less than `RETURNING` on the upsert, which
/// SQLite runs through a temporary table: 1 900 upserts of a 10 000-event
/// batch took 12 % of batch ingest's CPU with it.
static STORED_ORDERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT order_id, placed_at, first_fill_at, last_fill_at FROM trading_orders
         WHERE order_id IN {}",
        values_rows(ROWS_PER_INSERT, 1)
    )
});

/// [`STORED_ORDERS`] for one order. SQLite runs the `IN` list of the other
/// through a temporary index of its values, so reading one order back with
/// it cost about 40 000 instructions; single-event commits read back most
/// of their orders one at a time.
const STORED_ORDER: &str = "SELECT order_id, placed_at, first_fill_at, last_fill_at
     FROM trading_orders WHERE order_id = ?1";

const UPSERT_MARK: &str = "INSERT INTO trading_marks (kind, first_minute, last_minute)
     VALUES (?1, ?2, ?3)
     ON CONFLICT (kind, first_minute, last_minute) DO UPDATE SET version = version + 1";

const NEXT_QUOTE: &str = "SELECT MIN(ts) FROM market_quotes WHERE symbol = ?1 AND ts > ?2";

const FILL_COLUMNS: &str =
    "event_id, order_id, symbol, side, strategy_id, ts, price, quantity, is_maker, commission";

/// The insert of fills.
static INSERT_FILLS: LazyLock<RowInsert> =
    LazyLock::new(|| RowInsert::new("trading_fills", FILL_COLUMNS, ""));

/// The insert of quotes (a quote stored already is left as it is).
static INSERT_QUOTES: LazyLock<RowInsert> = LazyLock::new(|| {
    RowInsert::new(
        "market_quotes",
        "symbol, ts, event_id, mid",
        " ON CONFLICT DO NOTHING",
    )
});

const UPSERT_BAR: &str = "INSERT INTO market_bars (symbol, source, minute, open_ts, open_id, open,
         close_ts, close_id, close, high, low, volume, updates, spread_sum, spread_count)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
     ON CONFLICT (symbol, source, minute) DO UPDATE SET
         open = CASE WHEN (excluded.open_ts, excluded.open_id) < (open_ts, open_id) THEN excluded.open ELSE open END,
         open_id = CASE WHEN (excluded.open_ts, excluded.open_id) < (open_ts, open_id) THEN excluded.open_id ELSE open_id END,
         open_ts = CASE WHEN (excluded.open_ts, excluded.open_id) < (open_ts, open_id) THEN excluded.open_ts ELSE open_ts END,
         close = CASE WHEN (excluded.close_ts, excluded.close_id) > (close_ts, close_id) THEN excluded.close ELSE close END,
         close_id = CASE WHEN (excluded.close_ts, excluded.close_id) > (close_ts, close_id) THEN excluded.close_id ELSE close_id END,
         close_ts = CASE WHEN (excluded.close_ts, excluded.close_id) > (close_ts, close_id) THEN excluded.close_ts ELSE close_ts END,
         high = MAX(high, excluded.high),
         low = MIN(low, excluded.low),
         volume = volume + excluded.volume,
         updates = updates + excluded.updates,
         spread_sum = spread_sum + excluded.spread_sum,
         spread_count = spread_count + excluded.spread_count";

/// Retention of the trading tables, one chunk per statement (`?1` cutoff,
/// `?2` chunk size, `?3` the symbol for per-symbol statements).
const TRADING_RETENTION: [(&str, TradingCutoff); 6] = [
    (
        "DELETE FROM trading_orders WHERE order_id IN
             (SELECT order_id FROM trading_orders WHERE placed_at < ?1 LIMIT ?2)",
        TradingCutoff::Events,
    ),
    (
        "DELETE FROM trading_orders WHERE order_id IN
             (SELECT order_id FROM trading_orders WHERE placed_at IS NULL AND seen_at < ?1 LIMIT ?2)",
        TradingCutoff::Events,
    ),
    (
        "DELETE FROM trading_fills WHERE rowid IN
             (SELECT rowid FROM trading_fills WHERE ts < ?1 LIMIT ?2)",
        TradingCutoff::Events,
    ),
    (
        "DELETE FROM market_quotes WHERE (symbol, ts, event_id) IN
             (SELECT symbol, ts, event_id FROM market_quotes WHERE symbol = ?3 AND ts < ?1 LIMIT ?2)",
        TradingCutoff::EventsPerSymbol,
    ),
    (
        "DELETE FROM market_bars WHERE (symbol, source, minute) IN
             (SELECT symbol, source, minute FROM market_bars WHERE minute < ?1 LIMIT ?2)",
        TradingCutoff::Bars,
    ),
    // Minutes and hours that start before the cutoff; the minute holding
    // the cutoff was marked first, so its hour is summarised again.
    (
        "DELETE FROM trading_summaries WHERE (kind, span_ms, start) IN
             (SELECT kind, span_ms, start FROM trading_summaries WHERE start < ?1 LIMIT ?2)",
        TradingCutoff::Events,
    ),
];

const ORDER_COLUMNS: &str = "order_id, symbol, side, strategy_id, order_type, placed_at, quantity,
     price, latency_ms, filled_quantity, filled_notional, fills, maker_fills, commission,
     first_fill_at, last_fill_at, canceled_at, rejected_at, seen_at";

fn read_order(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderDelta> {
    Ok(OrderDelta {
        order_id: row.get(0)?,
        symbol: row.get(1)?,
        side: row.get(2)?,
        strategy_id: row.get(3)?,
        order_type: row.get(4)?,
        placed_at: row.get(5)?,
        quantity: row.get(6)?,
        price: row.get(7)?,
        latency_ms: row.get(8)?,
        filled_quantity: row.get(9)?,
        filled_notional: row.get(10)?,
        fills: row.get(11)?,
        maker_fills: row.get(12)?,
        commission: row.get(13)?,
        first_fill_at: row.get(14)?,
        last_fill_at: row.get(15)?,
        canceled_at: row.get(16)?,
        rejected_at: row.get(17)?,
        seen_at: row.get(18)?,
    })
}

/// A row of the fills query.
fn read_fill(row: &rusqlite::Row<'_>) -> rusqlite::Result<FillView> {
    let id: Vec<u8> = row.get(0)?;
    let event_id = Uuid::from_slice(&id).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(error))
    })?;
    Ok(FillView {
        fill: FillRow {
            event_id,
            order_id: row.get(1)?,
            symbol: row.get(2)?,
            side: row.get(3)?,
            strategy_id: row.get(4)?,
            timestamp_ms: row.get(5)?,
            price: row.get(6)?,
            quantity: row.get(7)?,
            is_maker: row.get(8)?,
            commission: row.get(9)?,
        },
        mid: row.get(10)?,
    })
}

const BAR_COLUMNS: &str = "symbol, source, minute, open_ts, open_id, open, close_ts, close_id,
     close, high, low, volume, updates, spread_sum, spread_count";

fn read_bar(row: &rusqlite::Row<'_>) -> rusqlite::Result<BarDelta> {
    let source: String = row.get(1)?;
    Ok(BarDelta {
        symbol: row.get(0)?,
        source: crate::trading::projection::source_name(&source),
        minute: row.get(2)?,
        open_ts: row.get(3)?,
        open_id: row.get(4)?,
        open: row.get(5)?,
        close_ts: row.get(6)?,
        close_id: row.get(7)?,
        close: row.get(8)?,
        high: row.get(9)?,
        low: row.get(10)?,
        volume: row.get(11)?,
        updates: row.get(12)?,
        spread_sum: row.get(13)?,
        spread_count: row.get(14)?,
    })
}

/// Writes a batch's trading changes (see [`crate::trading::projection`]).
fn write_trading(
    transaction: &rusqlite::Transaction<'_>,
    trading: &TradingBatch,
) -> Result<(), StoreError> {
    if trading.is_empty() {
        return Ok(());
    }
    let mut spans = MarkSpans::new();
    write_orders(transaction, &trading.orders, &mut spans)?;
    insert_in_runs(
        transaction,
        &INSERT_FILLS,
        &trading.fills,
        |insert, first, fill| {
            bind_row!(
                insert,
                first,
                [
                    &fill.event_id.as_bytes().as_slice(),
                    &fill.order_id,
                    &fill.symbol,
                    &fill.side,
                    &fill.strategy_id,
                    &fill.timestamp_ms,
                    &fill.price,
                    &fill.quantity,
                    &fill.is_maker,
                    &fill.commission,
                ],
            )
        },
        |_, _| Ok(()),
    )?;
    insert_in_runs(
        transaction,
        &INSERT_QUOTES,
        &trading.quotes,
        |insert, first, quote| {
            bind_row!(
                insert,
                first,
                [
                    &quote.symbol,
                    &quote.timestamp_ms,
                    &quote.event_id,
                    &quote.mid,
                ],
            )
        },
        |_, _| Ok(()),
    )?;
    let mut upsert = transaction.prepare_cached(UPSERT_BAR)?;
    for bar in &trading.bars {
        upsert.execute(params![
            bar.symbol,
            bar.source,
            bar.minute,
            bar.open_ts,
            bar.open_id,
            bar.open,
            bar.close_ts,
            bar.close_id,
            bar.close,
            bar.high,
            bar.low,
            bar.volume,
            bar.updates,
            bar.spread_sum,
            bar.spread_count,
        ])?;
    }
    summary::fill_spans(trading, &mut spans);
    let mut next = transaction.prepare_cached(NEXT_QUOTE)?;
    let now = crate::model::event::now_ms();
    for (symbol, (first, last)) in summary::quote_ranges(trading) {
        let next_quote: Option<i64> = next.query_row(params![symbol, last], |row| row.get(0))?;
        spans.insert(summary::quote_span(first, next_quote, now));
    }
    write_marks(transaction, &spans)
}

/// Upserts the order changes (one per order id) and adds the summary spans
/// they touch. A change that made a new row adds its own times; one merged
/// with a stored row adds the merged row's, read back.
///
/// The changes go in [`ROWS_PER_INSERT`] per upsert, by order id, placed
/// ones apart from the rest (each kind has its own statement). A run made
/// only new rows when it moved the table's largest rowid by its length: a
/// new row takes the largest rowid plus one, and a `DO UPDATE` takes none.
/// Otherwise the run's rows are read back in one query (a one-row run by
/// its own, [`STORED_ORDER`]). Merges are few (an
/// order placed in an earlier batch) and, with time-ordered order ids, come
/// together at the start of the batch, so most runs read nothing back.
fn write_orders(
    transaction: &rusqlite::Transaction<'_>,
    orders: &[OrderDelta],
    spans: &mut MarkSpans,
) -> Result<(), StoreError> {
    let (placed, unplaced): (Vec<&OrderDelta>, Vec<&OrderDelta>) =
        orders.iter().partition(|order| order.placed_at.is_some());
    let mut largest_rowid: i64 = transaction
        .prepare_cached("SELECT COALESCE(MAX(rowid), 0) FROM trading_orders")?
        .query_row([], |row| row.get(0))?;
    let mut last_insert = transaction.last_insert_rowid();
    let mut stored = transaction.prepare_cached(&STORED_ORDERS)?;
    let mut stored_one = transaction.prepare_cached(STORED_ORDER)?;
    for (orders, upsert) in [
        (placed, &*UPSERT_ORDERS),
        (unplaced, &*UPSERT_UNPLACED_ORDERS),
    ] {
        insert_in_runs(
            transaction,
            upsert,
            &orders,
            |statement, first, order| bind_order(statement, first, order),
            |run, _| {
                let rowid = transaction.last_insert_rowid();
                let moved = rowid != last_insert;
                last_insert = rowid;
                let new_rows = if moved { rowid - largest_rowid } else { 0 };
                if moved {
                    largest_rowid = largest_rowid.max(rowid);
                }
                // Near the largest rowid SQLite picks new ones at random.
                let sequential = largest_rowid < i64::MAX - ROWS_PER_INSERT as i64;
                if sequential && usize::try_from(new_rows) == Ok(run.len()) {
                    for order in run {
                        let fills = order.first_fill_at.zip(order.last_fill_at);
                        summary::order_spans(order, order.placed_at, fills, spans);
                    }
                    return Ok(());
                }
                let read_back = if let [order] = run {
                    stored_one.raw_bind_parameter(1, &order.order_id)?;
                    &mut stored_one
                } else {
                    stored.clear_bindings();
                    for (index, order) in run.iter().enumerate() {
                        stored.raw_bind_parameter(index + 1, &order.order_id)?;
                    }
                    &mut stored
                };
                let mut rows = read_back.raw_query();
                let mut found = 0;
                while let Some(row) = rows.next()? {
                    let order_id: String = row.get(0)?;
                    let order = run
                        .iter()
                        .find(|order| order.order_id == order_id)
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("order {order_id} read back unasked"))
                        })?;
                    let placed_at: Option<i64> = row.get(1)?;
                    let fills = row.get::<_, Option<i64>>(2)?.zip(row.get(3)?);
                    summary::order_spans(order, placed_at, fills, spans);
                    found += 1;
                }
                if found != run.len() {
                    return Err(StoreError::Corrupt(format!(
                        "{found} of {} upserted orders read back",
                        run.len()
                    )));
                }
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// Binds `order` as the row whose first parameter is `first` (1-based), in
/// the order of [`ORDER_COLUMNS`].
fn bind_order(
    statement: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    order: &OrderDelta,
) -> rusqlite::Result<()> {
    bind_row!(
        statement,
        first,
        [
            &order.order_id,
            &order.symbol,
            &order.side,
            &order.strategy_id,
            &order.order_type,
            &order.placed_at,
            &order.quantity,
            &order.price,
            &order.latency_ms,
            &order.filled_quantity,
            &order.filled_notional,
            &order.fills,
            &order.maker_fills,
            &order.commission,
            &order.first_fill_at,
            &order.last_fill_at,
            &order.canceled_at,
            &order.rejected_at,
            &order.seen_at,
        ],
    )
}

fn write_marks(
    transaction: &rusqlite::Transaction<'_>,
    spans: &MarkSpans,
) -> Result<(), StoreError> {
    let mut upsert = transaction.prepare_cached(UPSERT_MARK)?;
    for (kind, first, last) in spans {
        upsert.execute(params![kind.code(), first, last])?;
    }
    Ok(())
}

/// [`Store::write_trading_summaries`] inside `transaction`.
fn write_summaries(
    transaction: &rusqlite::Transaction<'_>,
    kind: SummaryKind,
    minutes: &[(i64, Option<SummaryBody>)],
    cleared: &[Mark],
    remainders: &MarkSpans,
    merge: MergeSlices,
) -> Result<bool, StoreError> {
    let mut delete = transaction.prepare_cached(
        "DELETE FROM trading_marks
         WHERE kind = ?1 AND first_minute = ?2 AND last_minute = ?3 AND version = ?4",
    )?;
    for mark in cleared {
        let deleted = delete.execute(params![
            mark.kind.code(),
            mark.first_minute,
            mark.last_minute,
            mark.version
        ])?;
        if deleted != 1 {
            return Ok(false);
        }
    }
    write_marks(transaction, remainders)?;
    let mut upsert = transaction.prepare_cached(
        "INSERT INTO trading_summaries (kind, span_ms, start, digest, coarse, fine)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (kind, span_ms, start) DO UPDATE SET
                 digest = excluded.digest, coarse = excluded.coarse, fine = excluded.fine",
    )?;
    let mut remove = transaction.prepare_cached(
        "DELETE FROM trading_summaries WHERE kind = ?1 AND span_ms = ?2 AND start = ?3",
    )?;
    let mut put = |span: i64, start: i64, body: Option<&SummaryBody>| match body {
        Some(body) => upsert.execute(params![
            kind.code(),
            span,
            start,
            body.digest,
            body.coarse,
            body.fine
        ]),
        None => remove.execute(params![kind.code(), span, start]),
    };
    for (minute, body) in minutes {
        put(summary::MINUTE_MS, *minute, body.as_ref())?;
    }
    let mut read = transaction.prepare_cached(
        "SELECT fine FROM trading_summaries
         WHERE kind = ?1 AND span_ms = ?2 AND start >= ?3 AND start < ?4",
    )?;
    for (finer, span, block) in summary::blocks_above(minutes.iter().map(|(minute, _)| *minute)) {
        let bodies = read
            .query_map(params![kind.code(), finer, block, block + span], |row| {
                row.get::<_, Vec<u8>>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        put(span, block, merge(&bodies)?.as_ref())?;
    }
    Ok(true)
}

/// Rollup rows of one filter at `interval` with bucket starts in
/// `[start_ms, end_ms)`.
fn query_rollup_rows(
    connection: &Connection,
    decoded: &DecodedCache,
    filter: &MetricFilter,
    interval: Interval,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<RollupRow>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT dimensions, bucket_start, count, sum, min, max, sketch FROM rollups
         WHERE metric = ?1 AND interval = ?2 AND bucket_start >= ?3 AND bucket_start < ?4
           AND (?5 IS NULL OR dimensions = ?5)",
    )?;
    let mut rows = statement.query(params![
        filter.metric,
        interval.as_str(),
        start_ms,
        end_ms,
        filter.dimensions
    ])?;
    let mut result = Vec::new();
    while let Some(row) = rows.next()? {
        let dimensions: String = row.get(0)?;
        let bucket_start_ms: i64 = row.get(1)?;
        let count = u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0);
        let (sum, min, max): (Option<f64>, Option<f64>, Option<f64>) =
            (row.get(3)?, row.get(4)?, row.get(5)?);
        // The sketch is borrowed from SQLite's row buffer: a cache hit
        // compares it in place and copies nothing.
        let accumulator = match row
            .get_ref(6)?
            .as_blob_or_null()
            .map_err(rusqlite::Error::from)?
        {
            None => Accumulator::from_parts(count, sum, min, max, None)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?,
            Some(sketch) => {
                let key = RowKey {
                    metric: filter.metric.clone(),
                    interval,
                    bucket_start_ms,
                    dimensions: dimensions.clone(),
                };
                decoded
                    .get_or_decode(key, count, sum, min, max, sketch)
                    .map_err(|error| StoreError::Corrupt(error.to_string()))?
            }
        };
        result.push(RollupRow {
            dimensions,
            bucket_start_ms,
            accumulator,
        });
    }
    Ok(result)
}

/// The stored columns of one rollup row, before decoding.
struct AccumulatorColumns {
    count: i64,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    sketch: Option<Vec<u8>>,
}

impl AccumulatorColumns {
    fn into_accumulator(self) -> Result<Accumulator, StoreError> {
        Accumulator::from_parts(
            u64::try_from(self.count).unwrap_or(0),
            self.sum,
            self.min,
            self.max,
            self.sketch.as_deref(),
        )
        .map_err(|error| StoreError::Corrupt(error.to_string()))
    }
}

fn read_accumulator_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<AccumulatorColumns> {
    Ok(AccumulatorColumns {
        count: row.get(0)?,
        sum: row.get(1)?,
        min: row.get(2)?,
        max: row.get(3)?,
        sketch: row.get(4)?,
    })
}

/// An event row before its JSON and id are decoded.
struct EventColumns {
    id: Vec<u8>,
    timestamp_ms: i64,
    event_type: String,
    user_id: Option<String>,
    session_id: Option<String>,
    properties: String,
    created_at_ms: i64,
}

fn read_event_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventColumns> {
    Ok(EventColumns {
        id: row.get(0)?,
        timestamp_ms: row.get(1)?,
        event_type: row.get(2)?,
        user_id: row.get(3)?,
        session_id: row.get(4)?,
        properties: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

impl EventColumns {
    fn into_event(self) -> Result<Event, StoreError> {
        let id =
            Uuid::from_slice(&self.id).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let properties = Properties::from_json(&self.properties)
            .map_err(|error| StoreError::Corrupt(format!("event {id} properties: {error}")))?;
        Ok(Event {
            id,
            event_type: self.event_type,
            user_id: self.user_id,
            session_id: self.session_id,
            properties,
            timestamp_ms: self.timestamp_ms,
            created_at_ms: self.created_at_ms,
        })
    }
}

fn collect_events(
    rows: impl Iterator<Item = rusqlite::Result<EventColumns>>,
) -> Result<Vec<Event>, StoreError> {
    rows.map(|row| {
        row.map_err(StoreError::from)
            .and_then(EventColumns::into_event)
    })
    .collect()
}

/// A definition row before its JSON and id are decoded.
fn read_definition(row: &rusqlite::Row<'_>) -> rusqlite::Result<DefinitionColumns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

type DefinitionColumns = (Vec<u8>, String, String, String, String, bool, i64, i64);

fn decode_definition(columns: DefinitionColumns) -> Result<CustomEventDefinition, StoreError> {
    let (id, name, display_name, description, schema, is_active, created_at_ms, updated_at_ms) =
        columns;
    Ok(CustomEventDefinition {
        id: Uuid::from_slice(&id).map_err(|error| StoreError::Corrupt(error.to_string()))?,
        schema: serde_json::from_str(&schema)
            .map_err(|error| StoreError::Corrupt(format!("schema of {name}: {error}")))?,
        name,
        display_name,
        description,
        is_active,
        created_at_ms,
        updated_at_ms,
    })
}

const DEFINITION_COLUMNS: &str =
    "id, name, display_name, description, schema, is_active, created_at, updated_at";

#[async_trait]
impl Store for SqliteStore {
    async fn commit_batch(&self, batch: PreparedBatch) -> Result<Vec<bool>, StoreError> {
        check_intervals(batch.rollups.intervals(), &self.intervals)?;
        self.with_writer(move |writer| commit_blocking(writer, Incoming::Prepared(batch)))
            .await
    }

    async fn commit_preparing(&self, batch: PreparingBatch) -> Result<Vec<bool>, StoreError> {
        check_intervals(batch.intervals(), &self.intervals)?;
        self.with_writer(move |writer| commit_blocking(writer, Incoming::Preparing(batch)))
            .await
    }

    async fn fold_pending(&self) -> Result<(), StoreError> {
        self.with_writer(fold).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let Some(wal) = self.wal_to_sync.clone() else {
            return Ok(());
        };
        let directory_synced = Arc::clone(&self.wal_directory_synced);
        run_blocking(move || {
            let sync_directory = !directory_synced.load(Ordering::Acquire);
            sync_file(&wal, sync_directory)?;
            if sync_directory {
                directory_synced.store(true, Ordering::Release);
            }
            Ok(())
        })
        .await
    }

    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError> {
        self.with_reader(move |connection| {
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            match &query.event_type {
                Some(event_type) => {
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE ts >= ?1 AND ts < ?2 AND event_type = ?3
                         ORDER BY ts DESC, seq DESC LIMIT ?4"
                    ))?;
                    let rows = statement.query_map(
                        params![query.start_ms, query.end_ms, event_type, limit],
                        read_event_columns,
                    )?;
                    collect_events(rows)
                }
                None => {
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE ts >= ?1 AND ts < ?2
                         ORDER BY ts DESC, seq DESC LIMIT ?3"
                    ))?;
                    let rows = statement.query_map(
                        params![query.start_ms, query.end_ms, limit],
                        read_event_columns,
                    )?;
                    collect_events(rows)
                }
            }
        })
        .await
    }

    async fn scan_events(
        &self,
        start_ms: i64,
        end_ms: i64,
        include_properties: bool,
    ) -> Result<Vec<Event>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(if include_properties {
                "SELECT id, ts, event_type, user_id, session_id, properties, created_at FROM events
                 WHERE ts >= ?1 AND ts < ?2"
            } else {
                "SELECT id, ts, event_type, user_id, session_id, '{}', created_at FROM events
                 WHERE ts >= ?1 AND ts < ?2"
            })?;
            let rows = statement.query_map(params![start_ms, end_ms], read_event_columns)?;
            collect_events(rows)
        })
        .await
    }

    async fn scan_events_of_types(
        &self,
        start_ms: i64,
        end_ms: i64,
        event_types: Vec<String>,
    ) -> Result<Vec<Event>, StoreError> {
        self.with_reader(move |connection| {
            // The types as a JSON array: one statement whatever their number.
            let types = serde_json::to_string(&event_types)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            let mut statement = connection.prepare_cached(
                "SELECT id, ts, event_type, user_id, session_id, properties, created_at FROM events
                 WHERE ts >= ?1 AND ts < ?2 AND event_type IN (SELECT value FROM json_each(?3))",
            )?;
            let rows = statement.query_map(params![start_ms, end_ms, types], read_event_columns)?;
            collect_events(rows)
        })
        .await
    }

    async fn clear_trading(&self) -> Result<(), StoreError> {
        self.with_writer(|writer| {
            writer.connection.execute_batch(
                "BEGIN IMMEDIATE;
                 DELETE FROM trading_orders; DELETE FROM trading_fills;
                 DELETE FROM market_quotes; DELETE FROM market_bars;
                 DELETE FROM trading_summaries; DELETE FROM trading_marks;
                 COMMIT;",
            )?;
            Ok(())
        })
        .await
    }

    async fn write_trading(&self, trading: TradingBatch) -> Result<(), StoreError> {
        self.with_writer(move |writer| {
            let transaction = writer
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            write_trading(&transaction, &trading)?;
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn trading_marks(
        &self,
        of: Option<(SummaryKind, i64, i64)>,
    ) -> Result<Vec<Mark>, StoreError> {
        self.with_reader(move |connection| {
            let columns = |row: &rusqlite::Row| -> rusqlite::Result<(i64, i64, i64, i64)> {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            };
            let rows: Vec<(i64, i64, i64, i64)> = match of {
                None => connection
                    .prepare_cached(
                        "SELECT kind, first_minute, last_minute, version FROM trading_marks",
                    )?
                    .query_map([], columns)?
                    .collect::<Result<_, _>>()?,
                Some((kind, start_ms, end_ms)) => connection
                    .prepare_cached(
                        "SELECT kind, first_minute, last_minute, version FROM trading_marks
                         WHERE kind = ?1 AND first_minute < ?3 AND last_minute >= ?2",
                    )?
                    .query_map(
                        params![kind.code(), summary::minute_of(start_ms), end_ms],
                        columns,
                    )?
                    .collect::<Result<_, _>>()?,
            };
            rows.into_iter()
                .map(|(kind, first_minute, last_minute, version)| {
                    Ok(Mark {
                        kind: SummaryKind::from_code(kind)?,
                        first_minute,
                        last_minute,
                        version,
                    })
                })
                .collect()
        })
        .await
    }

    async fn read_trading_summaries(
        &self,
        kind: SummaryKind,
        span_ms: i64,
        start_ms: i64,
        end_ms: i64,
        part: SummaryPart,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT start, {} FROM trading_summaries
                 WHERE kind = ?1 AND span_ms = ?2 AND start >= ?3 AND start < ?4 ORDER BY start",
                part.column()
            ))?;
            let rows = statement
                .query_map(params![kind.code(), span_ms, start_ms, end_ms], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn write_trading_summaries(
        &self,
        kind: SummaryKind,
        minutes: Vec<(i64, Option<SummaryBody>)>,
        cleared: Vec<Mark>,
        remainders: Vec<(SummaryKind, i64, i64)>,
        merge: MergeSlices,
    ) -> Result<bool, StoreError> {
        self.with_writer(move |writer| {
            let transaction = writer
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let remainders: MarkSpans = remainders.into_iter().collect();
            let written =
                write_summaries(&transaction, kind, &minutes, &cleared, &remainders, merge)?;
            if written {
                transaction.commit()?;
            }
            Ok(written)
        })
        .await
    }

    async fn read_orders(&self, start_ms: i64, end_ms: i64) -> Result<Vec<OrderDelta>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM trading_orders WHERE placed_at >= ?1 AND placed_at < ?2"
            ))?;
            let rows = statement.query_map(params![start_ms, end_ms], read_order)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn read_fills(&self, start_ms: i64, end_ms: i64) -> Result<Vec<FillView>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT f.event_id, f.order_id, f.symbol, COALESCE(f.side, o.side),
                        COALESCE(f.strategy_id, o.strategy_id), f.ts, f.price, f.quantity,
                        f.is_maker, f.commission, NULL
                 FROM trading_fills f LEFT JOIN trading_orders o ON o.order_id = f.order_id
                 WHERE f.ts >= ?1 AND f.ts < ?2",
            )?;
            let rows = statement.query_map(params![start_ms, end_ms], read_fill)?;
            let mut fills = rows.collect::<Result<Vec<_>, _>>()?;
            // The mids: each symbol's quotes of the range read once.
            let mut quotes = std::collections::HashMap::new();
            let mut statement =
                connection.prepare_cached(&crate::trading::QUOTES_FOR_FILLS.replace('$', "?"))?;
            for symbol in crate::trading::fill_symbols(&fills) {
                let rows = statement
                    .query_map(params![symbol, start_ms, end_ms], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<Result<Vec<(i64, f64)>, _>>()?;
                quotes.insert(symbol, rows);
            }
            crate::trading::price_fills(&mut fills, &quotes);
            Ok(fills)
        })
        .await
    }

    async fn read_bars(
        &self,
        symbol: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<BarDelta>, StoreError> {
        let symbol = symbol.to_owned();
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {BAR_COLUMNS} FROM market_bars
                 WHERE symbol = ?1 AND minute >= ?2 AND minute < ?3 ORDER BY minute, source"
            ))?;
            let rows = statement.query_map(params![symbol, start_ms, end_ms], read_bar)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn count_events_by_type(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT event_type, COUNT(*) FROM events WHERE ts >= ?1 AND ts < ?2 GROUP BY event_type",
            )?;
            let rows = statement.query_map(params![start_ms, end_ms], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            rows.map(|row| {
                let (event_type, count) = row?;
                Ok((event_type, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
        })
        .await
    }

    async fn read_rollups(
        &self,
        metric: &str,
        dimensions: Option<&str>,
        interval: Interval,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let filter = MetricFilter::new(metric, dimensions);
        let decoded = Arc::clone(&self.decoded);
        let pending = Arc::clone(&self.pending);
        self.with_reader(move |connection| {
            let held = pending.hold(false);
            let mut rows =
                query_rollup_rows(connection, &decoded, &filter, interval, start_ms, end_ms)?;
            pending.read(&held, &filter, interval, (start_ms, end_ms), &mut rows);
            Ok(rows)
        })
        .await
    }

    async fn read_bucket_if_covered(
        &self,
        filters: &[MetricFilter],
        interval: Interval,
        bucket_start_ms: i64,
        covered_start_ms: i64,
        covered_end_ms: i64,
    ) -> Result<Option<Vec<Vec<RollupRow>>>, StoreError> {
        let filters = filters.to_vec();
        let decoded = Arc::clone(&self.decoded);
        let pending = Arc::clone(&self.pending);
        self.with_reader(move |connection| {
            // One read transaction: the emptiness check and the bucket read
            // see the same snapshot, so an event committed in between
            // cannot slip into the bucket unseen; and no commit adds
            // pending deltas meanwhile (see `pending`).
            let held = pending.hold(true);
            let transaction = connection.unchecked_transaction()?;
            let bucket_end_ms = bucket_start_ms.saturating_add(interval.millis());
            let mut outside = transaction.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE ts >= ?1 AND ts < ?2)
                     OR EXISTS (SELECT 1 FROM events WHERE ts >= ?3 AND ts < ?4)",
            )?;
            let has_outside: bool = outside.query_row(
                params![
                    bucket_start_ms,
                    covered_start_ms,
                    covered_end_ms,
                    bucket_end_ms
                ],
                |row| row.get(0),
            )?;
            drop(outside);
            if has_outside {
                return Ok(None);
            }
            let rows = filters
                .iter()
                .map(|filter| {
                    let mut rows = query_rollup_rows(
                        &transaction,
                        &decoded,
                        filter,
                        interval,
                        bucket_start_ms,
                        bucket_start_ms + 1,
                    )?;
                    let bucket = (bucket_start_ms, bucket_start_ms + 1);
                    pending.read(&held, filter, interval, bucket, &mut rows);
                    Ok(rows)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(Some(rows))
        })
        .await
    }

    async fn count_distinct(
        &self,
        dimension: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<u64, StoreError> {
        let dimension = dimension.to_string();
        self.with_reader(move |connection| {
            let count: i64 = connection
                .prepare_cached(
                    "SELECT COUNT(DISTINCT value) FROM distinct_values
                     WHERE dimension = ?1 AND bucket_start >= ?2 AND bucket_start < ?3",
                )?
                .query_row(params![dimension, start_ms, end_ms], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn delete_expired(
        &self,
        cutoffs: &RetentionCutoffs,
    ) -> Result<RetentionReport, StoreError> {
        // Pending deltas of expired buckets are rows like any other: fold
        // them first, so that they are deleted too.
        self.fold_pending().await?;
        let mut report = RetentionReport {
            events_deleted: self
                .delete_in_chunks(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE ts < ?1 LIMIT ?2)",
                    None,
                    cutoffs.events_before_ms,
                )
                .await?,
            distinct_rows_deleted: self
                .delete_in_chunks(
                    "DELETE FROM distinct_values WHERE (dimension, bucket_start, value) IN
                         (SELECT dimension, bucket_start, value FROM distinct_values
                          WHERE bucket_start < ?1 LIMIT ?2)",
                    None,
                    cutoffs.events_before_ms,
                )
                .await?,
            ..RetentionReport::default()
        };
        for (interval, before_ms) in &cutoffs.rollups_before_ms {
            report.rollup_rows_deleted += self
                .delete_in_chunks(
                    "DELETE FROM rollups WHERE (metric, interval, bucket_start, dimensions) IN
                         (SELECT metric, interval, bucket_start, dimensions FROM rollups
                          WHERE interval = ?3 AND bucket_start < ?1 LIMIT ?2)",
                    Some(interval.as_str().to_owned()),
                    *before_ms,
                )
                .await?;
        }
        let cutoff_minute = summary::minute_of(cutoffs.events_before_ms);
        self.with_writer(move |writer| {
            let transaction = writer
                .connection
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let spans: MarkSpans = [SummaryKind::Orders, SummaryKind::Fills]
                .into_iter()
                .map(|kind| (kind, cutoff_minute, cutoff_minute))
                .collect();
            write_marks(&transaction, &spans)?;
            transaction.commit()?;
            Ok(())
        })
        .await?;
        for (delete, cutoff) in TRADING_RETENTION {
            let before_ms = cutoffs.trading_before_ms(cutoff);
            if cutoff != TradingCutoff::EventsPerSymbol {
                report.trading_rows_deleted +=
                    self.delete_in_chunks(delete, None, before_ms).await?;
                continue;
            }
            // Quotes are keyed by (symbol, ts): walk the symbols.
            let mut previous = String::new();
            loop {
                let after = previous.clone();
                let next: Option<String> = self
                    .with_reader(move |connection| {
                        Ok(connection
                            .query_row(
                                "SELECT symbol FROM market_quotes WHERE symbol > ?1 ORDER BY symbol LIMIT 1",
                                params![after],
                                |row| row.get(0),
                            )
                            .optional()?)
                    })
                    .await?;
                let Some(symbol) = next else { break };
                report.trading_rows_deleted += self
                    .delete_in_chunks(delete, Some(symbol.clone()), before_ms)
                    .await?;
                previous = symbol;
            }
        }
        Ok(report)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_reader(|connection| {
            // Reads the file (SELECT 1 alone would not touch it).
            connection.query_row("SELECT COUNT(*) FROM schema_migrations", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn create_definition(
        &self,
        definition: &CustomEventDefinition,
    ) -> Result<(), StoreError> {
        let definition = definition.clone();
        self.with_writer(move |writer| {
            let connection = &mut writer.connection;
            connection.execute(
                &format!("INSERT INTO custom_event_definitions ({DEFINITION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    definition.id.as_bytes().as_slice(),
                    definition.name,
                    definition.display_name,
                    definition.description,
                    definition.schema.to_string(),
                    definition.is_active,
                    definition.created_at_ms,
                    definition.updated_at_ms,
                ],
            )?;
            Ok(())
        })
        .await?;
        self.sync().await
    }

    async fn update_definition(
        &self,
        definition: &CustomEventDefinition,
    ) -> Result<(), StoreError> {
        let definition = definition.clone();
        self.with_writer(move |writer| {
            let connection = &mut writer.connection;
            connection.execute(
                "UPDATE custom_event_definitions SET display_name = ?2, description = ?3, schema = ?4,
                     is_active = ?5, updated_at = ?6 WHERE name = ?1",
                params![
                    definition.name,
                    definition.display_name,
                    definition.description,
                    definition.schema.to_string(),
                    definition.is_active,
                    definition.updated_at_ms,
                ],
            )?;
            Ok(())
        })
        .await?;
        self.sync().await
    }

    async fn get_definition(
        &self,
        name: &str,
    ) -> Result<Option<CustomEventDefinition>, StoreError> {
        let name = name.to_string();
        self.with_reader(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {DEFINITION_COLUMNS} FROM custom_event_definitions WHERE name = ?1"
                ))?
                .query_row(params![name], read_definition)
                .optional()?
                .map(decode_definition)
                .transpose()
        })
        .await
    }

    async fn list_definitions(&self) -> Result<Vec<CustomEventDefinition>, StoreError> {
        self.with_reader(|connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {DEFINITION_COLUMNS} FROM custom_event_definitions ORDER BY name"
            ))?;
            let rows = statement.query_map([], read_definition)?;
            rows.map(|row| decode_definition(row?)).collect()
        })
        .await
    }

    async fn insert_dead_letters(&self, letters: &[DeadLetter]) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let letters = letters.to_vec();
        let inserted = self
            .with_writer(move |writer| {
                let transaction = writer.connection.transaction()?;
                let mut inserted = 0;
                {
                    let mut statement = transaction.prepare_cached(
                        "INSERT INTO dead_letters (source, topic, message_partition, message_offset, \
                         message_key, payload, payload_truncated, event_id, error, received_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                         ON CONFLICT (source, topic, message_partition, message_offset) DO NOTHING",
                    )?;
                    for letter in &letters {
                        inserted += statement.execute(params![
                            letter.source,
                            letter.topic,
                            letter.partition,
                            letter.offset,
                            letter.key,
                            letter.payload,
                            letter.payload_truncated,
                            letter.event_id.as_bytes().as_slice(),
                            letter.error,
                            letter.received_at_ms,
                        ])? as u64;
                    }
                }
                transaction.commit()?;
                Ok(inserted)
            })
            .await?;
        self.sync().await?;
        Ok(inserted)
    }

    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let query = query.clone();
        self.with_reader(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                 WHERE id > ?1 AND (?2 IS NULL OR source = ?2) ORDER BY id LIMIT ?3"
            ))?;
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            let mut rows = statement.query(params![query.after_id, query.source, limit])?;
            let mut letters = Vec::new();
            while let Some(row) = rows.next()? {
                letters.push(read_dead_letter(row)?);
            }
            Ok(letters)
        })
        .await
    }

    async fn delete_dead_letters(&self, ids: &[i64]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids = ids.to_vec();
        let deleted = self
            .with_writer(move |writer| {
                let transaction = writer.connection.transaction()?;
                let mut deleted = 0;
                {
                    let mut statement =
                        transaction.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
                    for id in &ids {
                        deleted += statement.execute(params![id])? as u64;
                    }
                }
                transaction.commit()?;
                Ok(deleted)
            })
            .await?;
        self.sync().await?;
        Ok(deleted)
    }

    async fn record_dead_letter_failure(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_string();
        self.with_writer(move |writer| {
            writer.connection.execute(
                "UPDATE dead_letters SET error = ?2, attempts = attempts + 1 WHERE id = ?1",
                params![id, error],
            )?;
            Ok(())
        })
        .await?;
        self.sync().await
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
