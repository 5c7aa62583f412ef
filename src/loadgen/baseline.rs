//! Same-run baselines for the ingest figures: what the store's batch commit
//! costs compared with inserting the same rows straight into the same
//! SQLite schema.
//!
//! Both sides get identical input (the same realistic events, already
//! validated, with time-ordered UUIDv7 ids as the HTTP path assigns them),
//! a fresh database file created by the store's own migrations, and the
//! store's pragmas (WAL, the configured `synchronous`, 64 MiB page cache).
//! The raw side runs one prepared `INSERT` per row in one transaction per
//! batch and nothing else: no rollups. Both sides insert `properties` as
//! the JSON text the service keeps, read when the events were validated
//! (outside the timed region; see [`crate::model::Properties`]).
//!
//! Used by `analytics bench-baseline` (hidden; `scripts/bench.sh` calls it)
//! and by `benches/ingest.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{Connection, params};
use serde::Serialize;
use uuid::Uuid;

use super::generator::{EventGenerator, GeneratorSettings};
use crate::model::event::{now_ms, parse_event};
use crate::model::{Event, EventLimits};
use crate::rollup::Interval;
use crate::sources::{derived_id, position_id};
use crate::store::sqlite::{SqliteStore, Synchronous};
use crate::store::{PreparedBatch, Store};

/// The insert statement of the raw baseline: the store's own row shape.
const RAW_INSERT: &str =
    "INSERT INTO events (id, ts, event_type, user_id, session_id, properties, created_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING";

/// Options of `analytics bench-baseline`.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// Events to insert on each side.
    #[arg(long, default_value_t = 200_000)]
    pub count: usize,
    /// Events per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,
    /// Seed of the event stream.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Directory for the two fresh database files (default: a temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use `synchronous = NORMAL` instead of the default FULL.
    #[arg(long)]
    pub normal_sync: bool,
    /// The events' ids, on both sides.
    #[arg(long, value_enum, default_value_t = BaselineIds::Uuidv7)]
    pub ids: BaselineIds,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Which ids the baseline's events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BaselineIds {
    /// Time-ordered UUIDv7 ids, as HTTP assigns.
    Uuidv7,
    /// The ids the stream sources give a message without one
    /// ([`position_id`] of `topic/partition/offset` and the broker's time,
    /// here the event's time).
    Position,
    /// UUIDv5 of `topic/partition/offset` alone, as the stream sources gave
    /// before session 15: random order.
    Uuidv5,
}

impl BaselineIds {
    /// The name `--ids` takes, and the report gives.
    fn name(self) -> &'static str {
        match self {
            BaselineIds::Uuidv7 => "uuidv7",
            BaselineIds::Position => "position",
            BaselineIds::Uuidv5 => "uuidv5",
        }
    }
}

/// The measured rates of both sides.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub events: usize,
    pub batch_size: usize,
    pub synchronous: &'static str,
    /// The events' ids: `uuidv7`, `position` or `uuidv5` (see
    /// [`BaselineIds`]).
    pub ids: &'static str,
    /// Raw insert, events per second.
    pub raw_insert_events_per_second: f64,
    /// `SqliteStore::commit_batch` (rollups included), events per second.
    pub store_commit_events_per_second: f64,
    /// store ÷ raw.
    pub ratio: f64,
}

/// `count` realistic, validated events with UUIDv7 ids, timestamps spread
/// over the hour before now.
pub fn realistic_events(count: usize, seed: u64) -> Vec<Event> {
    let limits = EventLimits {
        max_properties: 1000,
        max_property_size: 1 << 20,
        max_future_skew_ms: 300_000,
        max_age_ms: 90 * 86_400_000,
    };
    let now = now_ms();
    let mut generator = EventGenerator::new(GeneratorSettings {
        seed,
        ..GeneratorSettings::default()
    });
    let span = 3_600_000i64;
    let step = span / i64::try_from(count.max(1)).unwrap_or(i64::MAX);
    (0..count)
        .filter_map(|index| {
            let timestamp = now - span + step * i64::try_from(index).unwrap_or(0);
            let value = serde_json::to_value(generator.next_event(timestamp)).ok()?;
            parse_event(value, &limits, now, Uuid::now_v7).ok()
        })
        .collect()
}

/// Creates the store's schema in a fresh file at `path` and opens it as a
/// plain connection with the store's pragmas.
pub fn open_raw(path: &Path, synchronous: Synchronous) -> anyhow::Result<Connection> {
    drop(SqliteStore::open(path, synchronous, &Interval::ALL).context("cannot create the schema")?);
    let connection = Connection::open(path).context("cannot open the raw connection")?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        },
    )?;
    connection.pragma_update(None, "busy_timeout", 5000)?;
    connection.pragma_update(None, "cache_size", -65536)?;
    Ok(connection)
}

/// Inserts `events` as rows in one transaction with one prepared statement.
pub fn raw_insert(connection: &mut Connection, events: &[Event]) -> anyhow::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut insert = transaction.prepare_cached(RAW_INSERT)?;
        for event in events {
            insert.execute(params![
                event.id.as_bytes().as_slice(),
                event.timestamp_ms,
                event.event_type,
                event.user_id,
                event.session_id,
                event.properties.as_json(),
                event.created_at_ms,
            ])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

/// Runs both sides over the same events and reports their rates.
pub fn run_baseline(args: &BaselineArgs) -> anyhow::Result<BaselineReport> {
    let batch_size = args.batch_size.max(1);
    let synchronous = if args.normal_sync {
        Synchronous::Normal
    } else {
        Synchronous::Full
    };
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = TempDir::new()?;
            temp.path.clone()
        }
    };
    let mut events = realistic_events(args.count, args.seed);
    for (offset, event) in events.iter_mut().enumerate() {
        let position = || format!("bench.events/0/{offset}");
        match args.ids {
            BaselineIds::Uuidv7 => {}
            BaselineIds::Position => event.id = position_id(&position(), Some(event.timestamp_ms)),
            BaselineIds::Uuidv5 => event.id = derived_id(&position()),
        }
    }

    let raw_path = dir.join("baseline-raw.db");
    remove_database(&raw_path);
    let mut connection = open_raw(&raw_path, synchronous)?;
    let started = Instant::now();
    for chunk in events.chunks(batch_size) {
        raw_insert(&mut connection, chunk)?;
    }
    let raw_elapsed = started.elapsed();
    drop(connection);

    let store_path = dir.join("baseline-store.db");
    remove_database(&store_path);
    let store = Arc::new(SqliteStore::open(&store_path, synchronous, &Interval::ALL)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    // Cloning is outside the timed region: the pipeline hands the store
    // owned events too.
    let chunks: Vec<Vec<Event>> = events.chunks(batch_size).map(<[Event]>::to_vec).collect();
    // Timed: everything the service does for a batch, whichever task does
    // it: preparation (properties JSON, rollup deltas), the commit, and the
    // fsync that precedes the acknowledgement.
    let started = Instant::now();
    for chunk in chunks {
        let batch = PreparedBatch::prepare(chunk, &Interval::ALL);
        runtime.block_on(store.commit_batch(batch))?;
        runtime.block_on(store.sync())?;
    }
    let store_elapsed = started.elapsed();
    drop(store);
    remove_database(&raw_path);
    remove_database(&store_path);

    let rate = |elapsed: Duration| events.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    let raw_rate = rate(raw_elapsed);
    let store_rate = rate(store_elapsed);
    Ok(BaselineReport {
        events: events.len(),
        batch_size,
        synchronous: match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        },
        ids: args.ids.name(),
        raw_insert_events_per_second: raw_rate.round(),
        store_commit_events_per_second: store_rate.round(),
        ratio: (store_rate / raw_rate * 1000.0).round() / 1000.0,
    })
}

fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// A directory removed when dropped (the library has no tempfile crate).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("analytics-baseline-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::BaselineIds;

    #[test]
    fn the_report_names_the_ids_as_the_option_takes_them() {
        for ids in BaselineIds::value_variants() {
            let option = ids.to_possible_value().expect("every kind is an option");
            assert_eq!(option.get_name(), ids.name());
        }
    }
}
