//! The production store: PostgreSQL, shared by any number of instances.
//!
//! Layout (see `migrations/postgres/`): raw events range-partitioned by day
//! on the event time, a plain `event_ids` registry for global idempotency,
//! rollups, per-minute distinct sets and custom event definitions.
//!
//! Invariants, beyond those of [`Store`]:
//! - an event is inserted into `events` only after its id was newly
//!   inserted into `event_ids` in the same transaction, so ids are unique
//!   across partitions and rollups count exactly the inserted events, even
//!   when several instances commit the same ids at once;
//! - rollup rows are written in ascending [`RollupKey`] order, count rows by
//!   an additive upsert, value rows (whose sketches cannot merge in SQL) by
//!   lock, merge in Rust, update, so concurrent writers neither lose an
//!   update nor deadlock;
//! - the partition of a day exists before a row of that day is inserted: it
//!   is created in its own short transaction (partition DDL locks the parent
//!   table, which must not be held for a whole batch), and there is never a
//!   DEFAULT partition;
//! - retention drops whole day partitions and the ids of exactly those days,
//!   so an id is forgotten only together with its event.
//!
//! All SQL is parameterised. The only text built at run time is DDL naming
//! a partition or the schema, from a day number or from a schema name that
//! [`validate_schema_name`] restricted to `[a-z_][a-z0-9_]*`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, NoTls, Row};
use uuid::Uuid;

use super::decoded_cache::{DecodedCache, RowKey};
use super::{
    DeadLetter, DeadLetterQuery, EventQuery, MetricFilter, PreparedBatch, RetentionCutoffs,
    RetentionReport, RollupRow, Store, StoreError, StoredDeadLetter, TradingCutoff,
};
use crate::config::DatabaseConfig;
use crate::model::{CustomEventDefinition, Event, Properties};
use crate::rollup::{Accumulator, Interval, RollupKey};
use crate::trading::summary::{
    self, Mark, MarkSpans, MergeSlices, SummaryBody, SummaryKind, SummaryPart,
};
use crate::trading::{BarDelta, FillRow, FillView, OrderDelta, TradingBatch};

/// Versioned migrations, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/postgres/0001_init.sql")),
    (
        2,
        "dead_letters",
        include_str!("migrations/postgres/0002_dead_letters.sql"),
    ),
    (
        3,
        "trading",
        include_str!("migrations/postgres/0003_trading.sql"),
    ),
    (
        4,
        "trading_summaries",
        include_str!("migrations/postgres/0004_trading_summaries.sql"),
    ),
    (
        5,
        "rollup_deltas",
        include_str!("migrations/postgres/0005_rollup_deltas.sql"),
    ),
];

/// How often each instance folds the stored deltas.
const FOLD_PERIOD: Duration = Duration::from_secs(1);

/// Most delta rows one fold transaction moves.
const FOLD_MAX_ROWS: i64 = 20_000;

/// How often, at most, the folder vacuums `rollup_deltas` after folding:
/// every delta row is deleted within a second or so of its insert, and
/// until a vacuum its dead row stays in the table and its index, where
/// every rollup read's scan of the deltas visits it (a 10 M-event fill
/// left 900 000 of them behind: 4 ms on each read, when autovacuum is off
/// or has not come round yet).
const DELTAS_RECLAIM_INTERVAL: Duration = Duration::from_secs(10);

/// The marks of one kind holding a minute in `[$2, $3)` (`$2` a minute).
const MARKS_MEETING: &str = "SELECT kind, first_minute, last_minute, version FROM trading_marks
     WHERE kind = $1 AND first_minute < $3 AND last_minute >= $2";

const DEAD_LETTER_COLUMNS: &str = "id, source, topic, message_partition, message_offset, message_key, \
     payload, payload_truncated, event_id, error, attempts, received_at";

fn dead_letter_of(row: &tokio_postgres::Row) -> Result<StoredDeadLetter, StoreError> {
    let corrupt =
        |error: tokio_postgres::Error| StoreError::Corrupt(format!("dead letter: {error}"));
    Ok(StoredDeadLetter {
        id: row.try_get(0).map_err(corrupt)?,
        letter: DeadLetter {
            source: row.try_get(1).map_err(corrupt)?,
            topic: row.try_get(2).map_err(corrupt)?,
            partition: row.try_get(3).map_err(corrupt)?,
            offset: row.try_get(4).map_err(corrupt)?,
            key: row.try_get(5).map_err(corrupt)?,
            payload: row.try_get(6).map_err(corrupt)?,
            payload_truncated: row.try_get(7).map_err(corrupt)?,
            event_id: row.try_get(8).map_err(corrupt)?,
            error: row.try_get(9).map_err(corrupt)?,
            received_at_ms: row.try_get(11).map_err(corrupt)?,
        },
        attempts: row.try_get(10).map_err(corrupt)?,
    })
}

/// First key of the two-key advisory locks this store takes (the second is
/// the schema's hash), so they cannot collide with other applications'.
const LOCK_NAMESPACE: i32 = 0x0B25_A7A1;
/// Second-key offsets: migrations and partition DDL serialise separately.
const LOCK_MIGRATIONS: i32 = 1;
const LOCK_PARTITIONS: i32 = 2;

const DAY_MS: i64 = 86_400_000;

/// Rows one retention statement deletes at most.
const RETENTION_CHUNK_ROWS: i64 = 5_000;

/// How to reach the database and how to use it, from the `database` section.
#[derive(Clone)]
pub struct PostgresSettings {
    pub connection: tokio_postgres::Config,
    /// Where every table lives; `search_path` of every pooled connection.
    pub schema: String,
    pub max_connections: usize,
    /// A pooled connection older than this is closed instead of reused.
    pub connection_lifetime: Duration,
    /// Per-statement deadline (`analytics.query.timeout`).
    pub statement_timeout: Duration,
    /// How long startup keeps retrying while the database is unreachable.
    pub startup_timeout: Duration,
    /// Day partitions created ahead of today.
    pub partitions_ahead_days: i64,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config redacts the password in its Debug.
        formatter
            .debug_struct("PostgresSettings")
            .field("connection", &self.connection)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl PostgresSettings {
    /// Settings from the `database` section: `url` when set, else host,
    /// port, database, user and password. Errors name the key at fault and
    /// never print a secret.
    pub fn from_config(
        database: &DatabaseConfig,
        statement_timeout: Duration,
    ) -> Result<Self, String> {
        let mut connection = match &database.url {
            Some(url) => url
                .expose()
                .parse::<tokio_postgres::Config>()
                .map_err(|_| "database.url: not a valid PostgreSQL connection URL".to_string())?,
            None => {
                let mut connection = tokio_postgres::Config::new();
                connection
                    .host(&database.host)
                    .port(database.port)
                    .dbname(&database.database)
                    .user(&database.user);
                if !database.password.expose().is_empty() {
                    connection.password(database.password.expose());
                }
                connection
            }
        };
        // This build links no TLS library: a mode that requires TLS must
        // fail loudly rather than silently connect in plain text.
        let tls_required = ["require", "verify-ca", "verify-full"];
        if database.url.is_none() && tls_required.contains(&database.ssl_mode.as_str()) {
            return Err(format!(
                "database.ssl_mode: {:?} needs TLS, which this build does not support; use \"disable\" or \"prefer\" (plain connections)",
                database.ssl_mode
            ));
        }
        if database.url.is_some() && connection.get_ssl_mode() == SslMode::Require {
            return Err("database.url: sslmode=require needs TLS, which this build does not support; use sslmode=disable or prefer".into());
        }
        connection.ssl_mode(SslMode::Disable);
        validate_schema_name(&database.schema)
            .map_err(|message| format!("database.schema: {message}"))?;
        // Session settings for every pooled connection, sent in the startup
        // packet so no connection is ever used without them. No parallel
        // plans (the URL's own options may allow them again): every query of
        // the service reads a few index ranges, which take well under a
        // millisecond, while starting parallel workers takes several, and a
        // prepared statement's generic plan guesses ranges large enough to
        // ask for them.
        let timeout_ms = statement_timeout.as_millis().clamp(1, i32::MAX as u128);
        let mut options = String::from("-c max_parallel_workers_per_gather=0 ");
        if let Some(existing) = connection.get_options() {
            options.push_str(existing);
            options.push(' ');
        }
        options.push_str(&format!(
            "-c search_path={} -c statement_timeout={timeout_ms}",
            database.schema
        ));
        connection
            .options(options)
            .application_name("analytics")
            .connect_timeout(statement_timeout.min(Duration::from_secs(10)))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        Ok(PostgresSettings {
            connection,
            schema: database.schema.clone(),
            max_connections: database.max_connections,
            connection_lifetime: database.connection_lifetime,
            statement_timeout,
            startup_timeout: Duration::from_secs(60),
            partitions_ahead_days: 7,
        })
    }
}

/// Accepts only lowercase unquoted identifiers, so the name can be used in
/// DDL and in the connection options without quoting or escaping.
pub fn validate_schema_name(schema: &str) -> Result<(), String> {
    let mut characters = schema.chars();
    let valid_start = characters
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == '_');
    let valid_rest = characters.all(|character| {
        character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_'
    });
    if valid_start && valid_rest && schema.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "must match [a-z_][a-z0-9_]* and be at most 63 bytes (got {schema:?})"
        ))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            return StoreError::Conflict(describe(&error));
        }
        StoreError::Unavailable(describe(&error))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(format!("postgres connection: {error}"))
    }
}

/// The error with the server's message (tokio_postgres' Display says only
/// "db error" for server-side errors).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db_error) => format!(
            "postgres: {}: {}",
            db_error.code().code(),
            db_error.message()
        ),
        None => format!("postgres: {error}"),
    }
}

/// Decoded value rows the readers keep (a few tens of MiB at most).
const DECODED_CACHE_ROWS: usize = 10_000;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    schema: String,
    intervals: Arc<[Interval]>,
    partitions_ahead_days: i64,
    /// Day numbers (days since the epoch) whose partition is known to exist.
    known_partitions: Mutex<HashSet<i64>>,
    /// Decoded value rows for the readers (see [`DecodedCache`]); safe with
    /// several instances writing, since a row is reused only when its
    /// stored bytes are unchanged.
    decoded: DecodedCache,
    /// The folder task runs while this lives.
    _folding: Arc<()>,
}

impl PostgresStore {
    /// Connects (retrying with backoff while the database is unreachable, up
    /// to `settings.startup_timeout`), creates the schema if needed, applies
    /// pending migrations and creates the partitions of the coming days.
    pub async fn open(
        settings: PostgresSettings,
        intervals: &[Interval],
    ) -> Result<Self, StoreError> {
        Self::open_with(settings, intervals, true).await
    }

    /// [`PostgresStore::open`], with the folder task only when
    /// `fold_in_background` (tests fold by hand).
    pub(crate) async fn open_with(
        settings: PostgresSettings,
        intervals: &[Interval],
        fold_in_background: bool,
    ) -> Result<Self, StoreError> {
        let manager = Manager::from_config(
            settings.connection.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let lifetime = settings.connection_lifetime;
        let wait = settings.statement_timeout;
        let pool = Pool::builder(manager)
            .max_size(settings.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(wait.min(Duration::from_secs(10))))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                // `connection_lifetime`: an old connection is dropped and a
                // fresh one made (spreads load after a failover, frees
                // server memory).
                if metrics.age() > lifetime {
                    Err(HookError::message("connection lifetime reached"))
                } else {
                    Ok(())
                }
            }))
            .build()
            .map_err(|error| StoreError::Unavailable(format!("postgres pool: {error}")))?;
        let store = PostgresStore {
            pool,
            schema: settings.schema.clone(),
            intervals: intervals.into(),
            partitions_ahead_days: settings.partitions_ahead_days,
            known_partitions: Mutex::new(HashSet::new()),
            decoded: DecodedCache::new(DECODED_CACHE_ROWS),
            _folding: Arc::new(()),
        };
        store.wait_until_reachable(settings.startup_timeout).await?;
        store.migrate().await?;
        if fold_in_background {
            tokio::spawn(run_folder(
                store.pool.clone(),
                Arc::clone(&store.intervals),
                Arc::downgrade(&store._folding),
                DELTAS_RECLAIM_INTERVAL,
            ));
        }
        let today = day_of(crate::model::event::now_ms());
        store
            .ensure_partitions(
                &(today - 1..=today + store.partitions_ahead_days).collect::<Vec<_>>(),
            )
            .await?;
        Ok(store)
    }

    /// Retries a connection with exponential backoff, logging each failed
    /// attempt, until one succeeds or `timeout` passes.
    async fn wait_until_reachable(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(200);
        for attempt in 1.. {
            let error = match self.pool.get().await {
                Ok(client) => match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(error) => StoreError::from(error),
                },
                Err(error) => StoreError::from(error),
            };
            if Instant::now() + backoff > deadline {
                return Err(StoreError::Unavailable(format!(
                    "postgres unreachable after {attempt} attempts: {error}"
                )));
            }
            tracing::warn!(attempt, retry_in = ?backoff, error = %error, "postgres unreachable at startup; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        unreachable!("the loop returns")
    }

    /// Creates the schema and applies pending migrations in one transaction,
    /// under an advisory lock so instances starting at once take turns.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2) + $3)",
                &[&LOCK_NAMESPACE, &self.schema, &LOCK_MIGRATIONS],
            )
            .await?;
        // The schema name was validated as a plain identifier.
        transaction
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema))
            .await?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version bigint PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)",
            )
            .await?;
        let applied: i64 = transaction
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        for (version, name, sql) in MIGRATIONS
            .iter()
            .filter(|(version, _, _)| *version > applied)
        {
            transaction.batch_execute(sql).await?;
            transaction
                .execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    &[version, name, &crate::model::event::now_ms()],
                )
                .await?;
            tracing::info!(version, name, schema = %self.schema, "applied postgres migration");
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Makes sure the partitions of `days` exist. Days already known cost a
    /// set lookup; the others are created in one short transaction of their
    /// own, under an advisory lock (concurrent `CREATE TABLE IF NOT EXISTS`
    /// of one name can fail).
    async fn ensure_partitions(&self, days: &[i64]) -> Result<(), StoreError> {
        let missing: Vec<i64> = {
            let known = self.lock_known();
            let mut missing: Vec<i64> = days
                .iter()
                .copied()
                .filter(|day| !known.contains(day))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2) + $3)",
                &[&LOCK_NAMESPACE, &self.schema, &LOCK_PARTITIONS],
            )
            .await?;
        for &day in &missing {
            // Built from integers only: the name and bounds of one day.
            transaction
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({}) TO ({})",
                    partition_name(day),
                    day * DAY_MS,
                    (day + 1) * DAY_MS
                ))
                .await?;
        }
        transaction.commit().await?;
        self.lock_known().extend(missing);
        Ok(())
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // The set is only a cache: a panic elsewhere cannot leave it wrong
        // in a harmful way (a missing day is created again).
        self.known_partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The day partitions that exist, by day number.
    async fn existing_partitions(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'events'::regclass",
                &[],
            )
            .await?;
        let mut partitions = Vec::new();
        for row in rows {
            let name: String = row.try_get(0)?;
            if let Some(day) = parse_partition_name(&name) {
                partitions.push((day, name));
            }
        }
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// Retention: drops the day partitions that end at or before
    /// `events_before_ms` (never deleting raw event rows one by one) and the
    /// ids of those days; deletes distinct sets stamped before
    /// `events_before_ms` and, per interval, rollup rows whose bucket starts
    /// before its cutoff, in bounded chunks. Events of the partly expired
    /// day stay until the whole day has expired. Idempotent.
    pub async fn drop_expired(
        &self,
        events_before_ms: i64,
        rollups_before_ms: &[(Interval, i64)],
    ) -> Result<ExpiredCounts, StoreError> {
        let mut counts = ExpiredCounts::default();
        let first_kept_day = events_before_ms.div_euclid(DAY_MS);
        for (day, name) in self.existing_partitions().await? {
            if day >= first_kept_day {
                continue;
            }
            let mut client = self.pool.get().await?;
            let transaction = client.transaction().await?;
            // Names come from pg_class and matched `events_YYYYMMDD`.
            let rows: i64 = transaction
                .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                .await?
                .try_get(0)?;
            transaction
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            transaction.commit().await?;
            self.lock_known().remove(&day);
            counts.events_deleted += u64::try_from(rows).unwrap_or(0);
            counts.partitions_dropped += 1;
            tracing::info!(partition = %name, rows, "dropped expired events partition");
        }
        // Ids only of the dropped days: an id whose event is still stored
        // must keep rejecting redeliveries.
        counts.event_ids_deleted = self
            .delete_in_chunks(
                "DELETE FROM event_ids WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM event_ids WHERE ts < $1 LIMIT $2))",
                None,
                first_kept_day.saturating_mul(DAY_MS),
            )
            .await?;
        counts.distinct_rows_deleted = self
            .delete_in_chunks(
                "DELETE FROM distinct_values WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM distinct_values WHERE bucket_start < $1 LIMIT $2))",
                None,
                events_before_ms,
            )
            .await?;
        for (interval, before_ms) in rollups_before_ms {
            counts.rollup_rows_deleted += self
                .delete_in_chunks(
                    "DELETE FROM rollups WHERE ctid = ANY(ARRAY(
                         SELECT ctid FROM rollups WHERE interval = $3 AND bucket_start < $1 LIMIT $2))",
                    Some(interval.as_str().to_owned()),
                    *before_ms,
                )
                .await?;
        }
        Ok(counts)
    }

    /// Runs `delete` (parameters: $1 cutoff, $2 chunk size, $3 `extra`)
    /// until it deletes less than a chunk; each chunk commits on its own so
    /// ingest never waits long behind retention.
    async fn delete_in_chunks(
        &self,
        delete: &'static str,
        extra: Option<String>,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0u64;
        loop {
            let client = self.pool.get().await?;
            let statement = client.prepare_cached(delete).await?;
            let chunk = match &extra {
                Some(extra) => {
                    client
                        .execute(&statement, &[&before_ms, &RETENTION_CHUNK_ROWS, &extra])
                        .await?
                }
                None => {
                    client
                        .execute(&statement, &[&before_ms, &RETENTION_CHUNK_ROWS])
                        .await?
                }
            };
            deleted += chunk;
            if chunk < RETENTION_CHUNK_ROWS as u64 {
                return Ok(deleted);
            }
        }
    }

    /// One attempt at committing a batch (see [`Store::commit_batch`]):
    /// `batch.rollups` are used as they are when every event is new.
    async fn commit_once(&self, batch: &CommitInput) -> Result<Vec<bool>, StoreError> {
        let mut client = self.pool.get().await?;
        let mut transaction = client.transaction().await?;
        // Registered in id order: two transactions registering some of the
        // same ids (a retry sent to another instance while the first send
        // still commits, or two batches of one instance in flight) wait for
        // each other in one order and cannot deadlock.
        let mut registered: Vec<(Uuid, i64)> = batch
            .events
            .iter()
            .map(|event| (event.id, event.timestamp_ms))
            .collect();
        registered.sort_unstable();
        let (ids, timestamps): (Vec<Uuid>, Vec<i64>) = registered.into_iter().unzip();
        let inserted = if ids.len() >= LARGE_BATCH_MIN
            && register_all_new(&mut transaction, &ids, &timestamps).await?
        {
            vec![true; batch.events.len()]
        } else {
            register_new(&transaction, &ids, &timestamps, &batch.events).await?
        };
        // One statement after the other, in the same order in every writer
        // (events, rollups, trading tables, distinct values), rows sorted
        // within each statement, so concurrent writers lock rows in one
        // global order and cannot deadlock. (Sending them pipelined let the
        // order of the executions depend on when each statement's prepare
        // came back, and writers deadlocked; it gained nothing measurable.)
        let all_new = inserted.iter().all(|flag| *flag);
        let recomputed;
        let rollups: &RollupRows = if all_new {
            &batch.rollups
        } else {
            // Some were duplicates: the deltas of exactly the inserted ones.
            recomputed = RollupRows::of(super::rollups_for(
                batch
                    .events
                    .iter()
                    .zip(&inserted)
                    .filter(|(_, was_inserted)| **was_inserted)
                    .map(|(event, _)| event),
                &batch.intervals,
            ));
            &recomputed
        };
        let trading = batch
            .trading
            .as_ref()
            .map(|prepared| TradingBatch::of_inserted_given(prepared, &batch.events, &inserted));
        let rows = EventColumns::of_inserted(&batch.events, &inserted);
        insert_events(&transaction, &rows).await?;
        match rollups {
            RollupRows::Deltas(deltas) => insert_deltas(&transaction, deltas).await?,
            RollupRows::Rows(rows) => write_rollups(&transaction, rows).await?,
        }
        if let Some(trading) = &trading {
            write_trading(&mut transaction, trading, true).await?;
        }
        insert_distinct(&transaction, &batch.distinct).await?;
        transaction.commit().await?;
        Ok(inserted)
    }
}

/// Starts the binary `COPY … FROM STDIN` statement `copy`, whose columns
/// have `types` (prepared once per connection, like the other statements);
/// the caller writes the rows and finishes it.
async fn start_copy(
    transaction: &deadpool_postgres::Transaction<'_>,
    copy: &str,
    types: &[Type],
) -> Result<Pin<Box<BinaryCopyInWriter>>, tokio_postgres::Error> {
    let copy = transaction.prepare_cached(copy).await?;
    Ok(Box::pin(BinaryCopyInWriter::new(
        transaction.copy_in(&copy).await?,
        types,
    )))
}

/// Batches at least this large first try to register their ids with a
/// `COPY` (see [`register_all_new`]), and insert their events with one
/// (see [`insert_events`]).
const LARGE_BATCH_MIN: usize = 1_000;

/// Registers `ids` (sorted) with a binary `COPY`, in a savepoint: `true`
/// when every one was new (and none repeated), `false` (nothing
/// registered) when one was already stored. A plain insert cost about a
/// third less than the `ON CONFLICT … RETURNING` of [`register_new`], a
/// `COPY` less again, and a large batch is almost always all new.
async fn register_all_new(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    ids: &[Uuid],
    timestamps: &[i64],
) -> Result<bool, StoreError> {
    let savepoint = transaction.savepoint("register_ids").await?;
    let copied = async {
        let mut writer = start_copy(
            &savepoint,
            "COPY event_ids (id, ts) FROM STDIN (FORMAT binary)",
            &[Type::UUID, Type::INT8],
        )
        .await?;
        for (id, timestamp) in ids.iter().zip(timestamps) {
            writer.as_mut().write(&[id, timestamp]).await?;
        }
        writer.as_mut().finish().await
    };
    match copied.await {
        Ok(_) => {
            savepoint.commit().await?;
            Ok(true)
        }
        Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            savepoint.rollback().await?;
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// Registers the new ones of `ids` (sorted); returns, index for index with
/// `events`, whether each event is new. An id repeated within the batch
/// counts once: its first occurrence.
async fn register_new(
    transaction: &deadpool_postgres::Transaction<'_>,
    ids: &[Uuid],
    timestamps: &[i64],
    events: &[Event],
) -> Result<Vec<bool>, StoreError> {
    let register = transaction
        .prepare_cached(
            "INSERT INTO event_ids (id, ts) SELECT * FROM unnest($1::uuid[], $2::int8[])
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .await?;
    let new_ids: HashSet<Uuid> = transaction
        .query(&register, &[&ids, &timestamps])
        .await?
        .iter()
        .map(|row| row.try_get::<_, Uuid>(0))
        .collect::<Result<_, _>>()?;
    let mut seen = HashSet::with_capacity(new_ids.len());
    Ok(events
        .iter()
        .map(|event| new_ids.contains(&event.id) && seen.insert(event.id))
        .collect())
}

/// Inserts the new events' rows: a large batch's with a binary `COPY`
/// (PostgreSQL spends about a fifth less on a 10 000-event batch than with
/// an `unnest` insert), a small one's with the `unnest` insert (a `COPY`
/// is more round trips, which single events pay in latency: 14 % fewer
/// single-event POSTs).
async fn insert_events(
    transaction: &deadpool_postgres::Transaction<'_>,
    rows: &EventColumns<'_>,
) -> Result<(), StoreError> {
    if rows.ids.is_empty() {
        return Ok(());
    }
    if rows.ids.len() < LARGE_BATCH_MIN {
        let insert = transaction
            .prepare_cached(
                "INSERT INTO events (id, ts, event_type, user_id, session_id, properties, created_at)
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])",
            )
            .await?;
        transaction
            .execute(
                &insert,
                &[
                    &rows.ids,
                    &rows.timestamps,
                    &rows.event_types,
                    &rows.user_ids,
                    &rows.session_ids,
                    &rows.properties,
                    &rows.created_at,
                ],
            )
            .await?;
        return Ok(());
    }
    let mut writer = start_copy(
        transaction,
        "COPY events (id, ts, event_type, user_id, session_id, properties, created_at)
         FROM STDIN (FORMAT binary)",
        &[
            Type::UUID,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
        ],
    )
    .await?;
    for index in 0..rows.ids.len() {
        writer
            .as_mut()
            .write(&[
                &rows.ids[index],
                &rows.timestamps[index],
                &rows.event_types[index],
                &rows.user_ids[index],
                &rows.session_ids[index],
                &rows.properties[index],
                &rows.created_at[index],
            ])
            .await?;
    }
    writer.as_mut().finish().await?;
    Ok(())
}

/// Adds the batch's distinct values (a set: those of duplicates change
/// nothing).
async fn insert_distinct(
    transaction: &deadpool_postgres::Transaction<'_>,
    (dimensions, minutes, values): &(Vec<&'static str>, Vec<i64>, Vec<String>),
) -> Result<(), StoreError> {
    if dimensions.is_empty() {
        return Ok(());
    }
    let insert = transaction
        .prepare_cached(
            "INSERT INTO distinct_values (dimension, bucket_start, value)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .await?;
    transaction
        .execute(&insert, &[dimensions, minutes, values])
        .await?;
    Ok(())
}

/// What a commit writes of its rollups, sorted by key.
enum RollupRows {
    /// The finest-interval deltas alone, when they touch at most
    /// [`super::pending::DEFER_MAX_BUCKETS`] buckets: stored in
    /// `rollup_deltas` for a fold to merge into every interval (see
    /// [`fold_once`]).
    Deltas(Vec<(RollupKey, Accumulator)>),
    /// The rows of every interval, merged into the rollup rows at once.
    Rows(Vec<(RollupKey, Accumulator)>),
}

impl RollupRows {
    fn of(rollups: crate::rollup::RollupBatch) -> RollupRows {
        if rollups.finest_len() <= super::pending::DEFER_MAX_BUCKETS {
            RollupRows::Deltas(rollups.into_finest_sorted())
        } else {
            RollupRows::Rows(rollups.into_sorted())
        }
    }
}

/// A batch taken apart for committing, so that a retry can reuse it.
struct CommitInput {
    events: Vec<Event>,
    intervals: Vec<Interval>,
    /// The prepared rollup rows of all the events.
    rollups: RollupRows,
    /// Distinct values as column arrays: (dimension, minute, value).
    distinct: (Vec<&'static str>, Vec<i64>, Vec<String>),
    /// The prepared trading changes of all the events, if kept.
    trading: Option<TradingBatch>,
}

impl CommitInput {
    fn new(batch: PreparedBatch) -> Self {
        let intervals = batch.rollups.intervals().to_vec();
        let mut distinct = (Vec::new(), Vec::new(), Vec::new());
        for (dimension, minute, value) in batch.distinct {
            distinct.0.push(dimension);
            distinct.1.push(minute);
            distinct.2.push(value);
        }
        CommitInput {
            events: batch.events,
            intervals,
            rollups: RollupRows::of(batch.rollups),
            distinct,
            trading: batch.trading,
        }
    }
}

/// What [`PostgresStore::drop_expired`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiredCounts {
    pub events_deleted: u64,
    pub event_ids_deleted: u64,
    pub rollup_rows_deleted: u64,
    pub distinct_rows_deleted: u64,
    pub partitions_dropped: u64,
}

/// Days since the epoch of `timestamp_ms` (UTC).
fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY_MS)
}

/// `events_YYYYMMDD`; days outside years 0..=9999 get `events_dNNN` (or
/// `events_dmNNN` before the epoch), which no sane clock produces.
fn partition_name(day: i64) -> String {
    let date = chrono::DateTime::from_timestamp_millis(day.saturating_mul(DAY_MS))
        .filter(|date| (0..=9999).contains(&chrono::Datelike::year(date)));
    match date {
        Some(date) => format!("events_{}", date.format("%Y%m%d")),
        None if day < 0 => format!("events_dm{}", day.unsigned_abs()),
        None => format!("events_d{day}"),
    }
}

/// The day of a partition named by [`partition_name`] (dated form only).
fn parse_partition_name(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("events_")?;
    if digits.len() != 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let date = chrono::NaiveDate::parse_from_str(digits, "%Y%m%d").ok()?;
    let midnight = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    Some(day_of(midnight))
}

/// Column arrays of the inserted events, for one `unnest` insert.
struct EventColumns<'a> {
    ids: Vec<Uuid>,
    timestamps: Vec<i64>,
    event_types: Vec<&'a str>,
    user_ids: Vec<Option<&'a str>>,
    session_ids: Vec<Option<&'a str>>,
    properties: Vec<&'a str>,
    created_at: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    fn of_inserted(events: &'a [Event], inserted: &[bool]) -> Self {
        let count = inserted.iter().filter(|flag| **flag).count();
        let mut columns = EventColumns {
            ids: Vec::with_capacity(count),
            timestamps: Vec::with_capacity(count),
            event_types: Vec::with_capacity(count),
            user_ids: Vec::with_capacity(count),
            session_ids: Vec::with_capacity(count),
            properties: Vec::with_capacity(count),
            created_at: Vec::with_capacity(count),
        };
        for (event, _) in events
            .iter()
            .zip(inserted)
            .filter(|(_, was_inserted)| **was_inserted)
        {
            columns.ids.push(event.id);
            columns.timestamps.push(event.timestamp_ms);
            columns.event_types.push(&event.event_type);
            columns.user_ids.push(event.user_id.as_deref());
            columns.session_ids.push(event.session_id.as_deref());
            columns.properties.push(event.properties.as_json());
            columns.created_at.push(event.created_at_ms);
        }
        columns
    }
}

/// Writes a batch's trading changes (see [`crate::trading::projection`]):
/// one statement per table, rows in key order so concurrent writers lock
/// them in the same order. `fresh`: every change comes from events this
/// transaction inserted (see [`write_trading_quotes`]).
async fn write_trading(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    trading: &TradingBatch,
    fresh: bool,
) -> Result<(), StoreError> {
    let mut spans = MarkSpans::new();
    write_trading_orders(transaction, &trading.orders, &mut spans).await?;
    write_trading_fills(transaction, &trading.fills).await?;
    write_trading_quotes(transaction, &trading.quotes, fresh).await?;
    write_trading_bars(transaction, &trading.bars).await?;
    summary::fill_spans(trading, &mut spans);
    let ranges = summary::quote_ranges(trading);
    if !ranges.is_empty() {
        let symbols: Vec<&str> = ranges.keys().copied().collect();
        let lasts: Vec<i64> = ranges.values().map(|(_, last)| *last).collect();
        let next = transaction
            .prepare_cached(
                "SELECT (SELECT MIN(q.ts) FROM market_quotes q WHERE q.symbol = r.symbol AND q.ts > r.last)
                 FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS r(symbol, last, n) ORDER BY n",
            )
            .await?;
        let rows = transaction.query(&next, &[&symbols, &lasts]).await?;
        let now = crate::model::event::now_ms();
        for ((first, _), row) in ranges.values().zip(&rows) {
            let next_quote: Option<i64> = row.try_get(0)?;
            spans.insert(summary::quote_span(*first, next_quote, now));
        }
    }
    write_marks(transaction, &spans).await
}

/// Adds `spans` to `trading_marks` (a span already there gets a new
/// version), in key order.
async fn write_marks(
    transaction: &deadpool_postgres::Transaction<'_>,
    spans: &MarkSpans,
) -> Result<(), StoreError> {
    if spans.is_empty() {
        return Ok(());
    }
    let kinds: Vec<i16> = spans
        .iter()
        .map(|(kind, _, _)| kind.code() as i16)
        .collect();
    let firsts: Vec<i64> = spans.iter().map(|(_, first, _)| *first).collect();
    let lasts: Vec<i64> = spans.iter().map(|(_, _, last)| *last).collect();
    let upsert = transaction
        .prepare_cached(
            "INSERT INTO trading_marks AS m (kind, first_minute, last_minute)
                 SELECT * FROM unnest($1::int2[], $2::int8[], $3::int8[])
                 ON CONFLICT (kind, first_minute, last_minute) DO UPDATE SET version = m.version + 1",
        )
        .await?;
    transaction
        .execute(&upsert, &[&kinds, &firsts, &lasts])
        .await?;
    Ok(())
}

/// Writes (`Some`) or removes (`None`) the summary of block `(kind, span,
/// start)` with the `(upsert, remove)` statements of [`write_summaries`].
async fn put_summary(
    transaction: &deadpool_postgres::Transaction<'_>,
    (upsert, remove): (&tokio_postgres::Statement, &tokio_postgres::Statement),
    (code, span, start): (i16, i64, i64),
    body: Option<&SummaryBody>,
) -> Result<u64, tokio_postgres::Error> {
    match body {
        Some(body) => {
            transaction
                .execute(
                    upsert,
                    &[&code, &span, &start, &body.digest, &body.coarse, &body.fine],
                )
                .await
        }
        None => transaction.execute(remove, &[&code, &span, &start]).await,
    }
}

/// [`Store::write_trading_summaries`] inside `transaction`.
async fn write_summaries(
    transaction: &deadpool_postgres::Transaction<'_>,
    kind: SummaryKind,
    minutes: &[(i64, Option<SummaryBody>)],
    cleared: &[Mark],
    remainders: &MarkSpans,
    merge: MergeSlices,
) -> Result<bool, StoreError> {
    // Refreshers of several instances take turns, per schema.
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.trading_summaries'))",
            &[],
        )
        .await?;
    let code = kind.code() as i16;
    let mut sorted = cleared.to_vec();
    sorted.sort_unstable();
    let firsts: Vec<i64> = sorted.iter().map(|mark| mark.first_minute).collect();
    let lasts: Vec<i64> = sorted.iter().map(|mark| mark.last_minute).collect();
    let versions: Vec<i64> = sorted.iter().map(|mark| mark.version).collect();
    let kinds: Vec<i16> = sorted.iter().map(|mark| mark.kind.code() as i16).collect();
    let deleted = transaction
        .execute(
            "DELETE FROM trading_marks m
             USING unnest($1::int2[], $2::int8[], $3::int8[], $4::int8[]) AS c(kind, first_minute, last_minute, version)
             WHERE m.kind = c.kind AND m.first_minute = c.first_minute
               AND m.last_minute = c.last_minute AND m.version = c.version",
            &[&kinds, &firsts, &lasts, &versions],
        )
        .await?;
    if deleted != sorted.len() as u64 {
        return Ok(false);
    }
    write_marks(transaction, remainders).await?;
    let upsert = transaction
        .prepare_cached(
            "INSERT INTO trading_summaries (kind, span_ms, start, digest, coarse, fine)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (kind, span_ms, start) DO UPDATE SET
                 digest = excluded.digest, coarse = excluded.coarse, fine = excluded.fine",
        )
        .await?;
    let remove = transaction
        .prepare_cached(
            "DELETE FROM trading_summaries WHERE kind = $1 AND span_ms = $2 AND start = $3",
        )
        .await?;
    let statements = (&upsert, &remove);
    for (minute, body) in minutes {
        put_summary(
            transaction,
            statements,
            (code, summary::MINUTE_MS, *minute),
            body.as_ref(),
        )
        .await?;
    }
    let read = transaction
        .prepare_cached(
            "SELECT fine FROM trading_summaries
             WHERE kind = $1 AND span_ms = $2 AND start >= $3 AND start < $4",
        )
        .await?;
    for (finer, span, block) in summary::blocks_above(minutes.iter().map(|(minute, _)| *minute)) {
        let rows = transaction
            .query(&read, &[&code, &finer, &block, &(block + span)])
            .await?;
        let bodies = rows
            .iter()
            .map(|row| row.try_get::<_, Vec<u8>>(0))
            .collect::<Result<Vec<_>, _>>()?;
        put_summary(
            transaction,
            statements,
            (code, span, block),
            merge(&bodies)?.as_ref(),
        )
        .await?;
    }
    Ok(true)
}

/// An order's id, placement, first and last fill as stored after an upsert.
type StoredOrderTimes = (String, Option<i64>, Option<i64>, Option<i64>);

async fn write_trading_orders(
    transaction: &deadpool_postgres::Transaction<'_>,
    orders: &[OrderDelta],
    spans: &mut MarkSpans,
) -> Result<(), StoreError> {
    if orders.is_empty() {
        return Ok(());
    }
    let text = |field: fn(&OrderDelta) -> &Option<String>| -> Vec<Option<&str>> {
        orders.iter().map(|order| field(order).as_deref()).collect()
    };
    let int = |field: fn(&OrderDelta) -> Option<i64>| -> Vec<Option<i64>> {
        orders.iter().map(field).collect()
    };
    let float = |field: fn(&OrderDelta) -> Option<f64>| -> Vec<Option<f64>> {
        orders.iter().map(field).collect()
    };
    let ids: Vec<&str> = orders.iter().map(|order| order.order_id.as_str()).collect();
    let (symbols, sides, strategies, types) = (
        text(|order| &order.symbol),
        text(|order| &order.side),
        text(|order| &order.strategy_id),
        text(|order| &order.order_type),
    );
    let placed = int(|order| order.placed_at);
    let (quantities, prices, latencies) = (
        float(|order| order.quantity),
        float(|order| order.price),
        float(|order| order.latency_ms),
    );
    let filled_quantity = float(|order| Some(order.filled_quantity));
    let filled_notional = float(|order| Some(order.filled_notional));
    let fills = int(|order| Some(order.fills));
    let maker_fills = int(|order| Some(order.maker_fills));
    let commission = float(|order| Some(order.commission));
    let (first, last, canceled, rejected, seen) = (
        int(|order| order.first_fill_at),
        int(|order| order.last_fill_at),
        int(|order| order.canceled_at),
        int(|order| order.rejected_at),
        int(|order| Some(order.seen_at)),
    );
    let upsert = transaction
            .prepare_cached(
                "INSERT INTO trading_orders AS t (order_id, symbol, side, strategy_id, order_type,
                     placed_at, quantity, price, latency_ms, filled_quantity, filled_notional, fills,
                     maker_fills, commission, first_fill_at, last_fill_at, canceled_at, rejected_at, seen_at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::float8[],
                     $12::int8[], $13::int8[], $14::float8[], $15::int8[], $16::int8[], $17::int8[],
                     $18::int8[], $19::int8[])
                 ON CONFLICT (order_id) DO UPDATE SET
                     symbol = COALESCE(t.symbol, excluded.symbol),
                     side = COALESCE(t.side, excluded.side),
                     strategy_id = COALESCE(t.strategy_id, excluded.strategy_id),
                     order_type = COALESCE(t.order_type, excluded.order_type),
                     placed_at = LEAST(t.placed_at, excluded.placed_at),
                     quantity = CASE WHEN excluded.placed_at < t.placed_at THEN COALESCE(excluded.quantity, t.quantity)
                                     ELSE COALESCE(t.quantity, excluded.quantity) END,
                     price = CASE WHEN excluded.placed_at < t.placed_at THEN COALESCE(excluded.price, t.price)
                                  ELSE COALESCE(t.price, excluded.price) END,
                     latency_ms = CASE WHEN excluded.placed_at < t.placed_at THEN COALESCE(excluded.latency_ms, t.latency_ms)
                                       ELSE COALESCE(t.latency_ms, excluded.latency_ms) END,
                     filled_quantity = t.filled_quantity + excluded.filled_quantity,
                     filled_notional = t.filled_notional + excluded.filled_notional,
                     fills = t.fills + excluded.fills,
                     maker_fills = t.maker_fills + excluded.maker_fills,
                     commission = t.commission + excluded.commission,
                     first_fill_at = LEAST(t.first_fill_at, excluded.first_fill_at),
                     last_fill_at = GREATEST(t.last_fill_at, excluded.last_fill_at),
                     canceled_at = LEAST(t.canceled_at, excluded.canceled_at),
                     rejected_at = LEAST(t.rejected_at, excluded.rejected_at),
                     seen_at = LEAST(t.seen_at, excluded.seen_at)
                 RETURNING order_id, placed_at, first_fill_at, last_fill_at",
            )
            .await?;
    let rows = transaction
        .query(
            &upsert,
            &[
                &ids,
                &symbols,
                &sides,
                &strategies,
                &types,
                &placed,
                &quantities,
                &prices,
                &latencies,
                &filled_quantity,
                &filled_notional,
                &fills,
                &maker_fills,
                &commission,
                &first,
                &last,
                &canceled,
                &rejected,
                &seen,
            ],
        )
        .await?;
    // The deltas are by order id, and so are the returned rows once sorted.
    let mut stored: Vec<StoredOrderTimes> = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
            ))
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    stored.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (order, (id, placed_at, first, last)) in orders.iter().zip(&stored) {
        if order.order_id != *id {
            return Err(StoreError::Corrupt(format!(
                "order upsert returned {id:?} for {:?}",
                order.order_id
            )));
        }
        summary::order_spans(order, *placed_at, first.zip(*last), spans);
    }
    Ok(())
}

async fn write_trading_fills(
    transaction: &deadpool_postgres::Transaction<'_>,
    fills: &[FillRow],
) -> Result<(), StoreError> {
    if fills.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = fills.iter().map(|fill| fill.event_id).collect();
    let order_ids: Vec<Option<&str>> = fills.iter().map(|fill| fill.order_id.as_deref()).collect();
    let symbols: Vec<Option<&str>> = fills.iter().map(|fill| fill.symbol.as_deref()).collect();
    let sides: Vec<Option<&str>> = fills.iter().map(|fill| fill.side.as_deref()).collect();
    let strategies: Vec<Option<&str>> = fills
        .iter()
        .map(|fill| fill.strategy_id.as_deref())
        .collect();
    let timestamps: Vec<i64> = fills.iter().map(|fill| fill.timestamp_ms).collect();
    let prices: Vec<f64> = fills.iter().map(|fill| fill.price).collect();
    let quantities: Vec<f64> = fills.iter().map(|fill| fill.quantity).collect();
    let makers: Vec<Option<bool>> = fills.iter().map(|fill| fill.is_maker).collect();
    let commissions: Vec<Option<f64>> = fills.iter().map(|fill| fill.commission).collect();
    let insert = transaction
        .prepare_cached(
            "INSERT INTO trading_fills (event_id, order_id, symbol, side, strategy_id, ts, price,
                     quantity, is_maker, commission)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int8[], $7::float8[], $8::float8[], $9::bool[], $10::float8[])",
        )
        .await?;
    transaction
        .execute(
            &insert,
            &[
                &ids,
                &order_ids,
                &symbols,
                &sides,
                &strategies,
                &timestamps,
                &prices,
                &quantities,
                &makers,
                &commissions,
            ],
        )
        .await?;

    Ok(())
}

/// Quotes of at least this many fresh events are written with a `COPY`.
const QUOTE_COPY_MIN: usize = 256;

/// Adds quotes (a quote already stored stays as it is). When `fresh` (the
/// quotes of events this transaction inserted, whose event ids nobody else
/// can have registered) and there are many, they go in with a binary `COPY`
/// in a savepoint, which costs PostgreSQL less than the `ON CONFLICT`
/// insert (a tenth of its CPU for batch ingest); should one be there after
/// all, the savepoint is rolled back and the insert does it.
async fn write_trading_quotes(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    quotes: &[crate::trading::QuoteRow],
    fresh: bool,
) -> Result<(), StoreError> {
    if quotes.is_empty() {
        return Ok(());
    }
    if fresh && quotes.len() >= QUOTE_COPY_MIN {
        let savepoint = transaction.savepoint("copy_quotes").await?;
        let copied = async {
            let mut writer = start_copy(
                &savepoint,
                "COPY market_quotes (symbol, ts, event_id, mid) FROM STDIN (FORMAT binary)",
                &[Type::TEXT, Type::INT8, Type::TEXT, Type::FLOAT8],
            )
            .await?;
            for quote in quotes {
                writer
                    .as_mut()
                    .write(&[
                        &quote.symbol,
                        &quote.timestamp_ms,
                        &quote.event_id,
                        &quote.mid,
                    ])
                    .await?;
            }
            writer.as_mut().finish().await
        };
        match copied.await {
            Ok(_) => {
                savepoint.commit().await?;
                return Ok(());
            }
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tracing::warn!("a fresh batch's quote was stored already; inserting the others");
                savepoint.rollback().await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    let symbols: Vec<&str> = quotes.iter().map(|quote| quote.symbol.as_str()).collect();
    let timestamps: Vec<i64> = quotes.iter().map(|quote| quote.timestamp_ms).collect();
    let ids: Vec<&str> = quotes.iter().map(|quote| quote.event_id.as_str()).collect();
    let mids: Vec<f64> = quotes.iter().map(|quote| quote.mid).collect();
    let insert = transaction
        .prepare_cached(
            "INSERT INTO market_quotes (symbol, ts, event_id, mid)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::float8[])
                 ON CONFLICT DO NOTHING",
        )
        .await?;
    transaction
        .execute(&insert, &[&symbols, &timestamps, &ids, &mids])
        .await?;

    Ok(())
}

async fn write_trading_bars(
    transaction: &deadpool_postgres::Transaction<'_>,
    bars: &[BarDelta],
) -> Result<(), StoreError> {
    if bars.is_empty() {
        return Ok(());
    }
    let symbols: Vec<&str> = bars.iter().map(|bar| bar.symbol.as_str()).collect();
    let sources: Vec<&str> = bars.iter().map(|bar| bar.source).collect();
    let int = |field: fn(&BarDelta) -> i64| -> Vec<i64> { bars.iter().map(field).collect() };
    let float = |field: fn(&BarDelta) -> f64| -> Vec<f64> { bars.iter().map(field).collect() };
    let open_ids: Vec<&str> = bars.iter().map(|bar| bar.open_id.as_str()).collect();
    let close_ids: Vec<&str> = bars.iter().map(|bar| bar.close_id.as_str()).collect();
    let upsert = transaction
            .prepare_cached(
                "INSERT INTO market_bars AS b (symbol, source, minute, open_ts, open_id, open,
                     close_ts, close_id, close, high, low, volume, updates, spread_sum, spread_count)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[],
                     $6::float8[], $7::int8[], $8::text[], $9::float8[], $10::float8[], $11::float8[],
                     $12::float8[], $13::int8[], $14::float8[], $15::int8[])
                 ON CONFLICT (symbol, source, minute) DO UPDATE SET
                     open = CASE WHEN (excluded.open_ts, excluded.open_id) < (b.open_ts, b.open_id) THEN excluded.open ELSE b.open END,
                     open_id = CASE WHEN (excluded.open_ts, excluded.open_id) < (b.open_ts, b.open_id) THEN excluded.open_id ELSE b.open_id END,
                     open_ts = CASE WHEN (excluded.open_ts, excluded.open_id) < (b.open_ts, b.open_id) THEN excluded.open_ts ELSE b.open_ts END,
                     close = CASE WHEN (excluded.close_ts, excluded.close_id) > (b.close_ts, b.close_id) THEN excluded.close ELSE b.close END,
                     close_id = CASE WHEN (excluded.close_ts, excluded.close_id) > (b.close_ts, b.close_id) THEN excluded.close_id ELSE b.close_id END,
                     close_ts = CASE WHEN (excluded.close_ts, excluded.close_id) > (b.close_ts, b.close_id) THEN excluded.close_ts ELSE b.close_ts END,
                     high = GREATEST(b.high, excluded.high),
                     low = LEAST(b.low, excluded.low),
                     volume = b.volume + excluded.volume,
                     updates = b.updates + excluded.updates,
                     spread_sum = b.spread_sum + excluded.spread_sum,
                     spread_count = b.spread_count + excluded.spread_count",
            )
            .await?;
    transaction
        .execute(
            &upsert,
            &[
                &symbols,
                &sources,
                &int(|bar| bar.minute),
                &int(|bar| bar.open_ts),
                &open_ids,
                &float(|bar| bar.open),
                &int(|bar| bar.close_ts),
                &close_ids,
                &float(|bar| bar.close),
                &float(|bar| bar.high),
                &float(|bar| bar.low),
                &float(|bar| bar.volume),
                &int(|bar| bar.updates),
                &float(|bar| bar.spread_sum),
                &int(|bar| bar.spread_count),
            ],
        )
        .await?;

    Ok(())
}

/// Retention of the trading tables, one chunk per statement (`$1` cutoff,
/// `$2` chunk size, `$3` the symbol for per-symbol statements).
const TRADING_RETENTION: [(&str, TradingCutoff); 6] = [
    (
        "DELETE FROM trading_orders WHERE order_id IN
             (SELECT order_id FROM trading_orders WHERE placed_at < $1 LIMIT $2)",
        TradingCutoff::Events,
    ),
    (
        "DELETE FROM trading_orders WHERE order_id IN
             (SELECT order_id FROM trading_orders WHERE placed_at IS NULL AND seen_at < $1 LIMIT $2)",
        TradingCutoff::Events,
    ),
    (
        "DELETE FROM trading_fills WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM trading_fills WHERE ts < $1 LIMIT $2))",
        TradingCutoff::Events,
    ),
    (
        "DELETE FROM market_quotes WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM market_quotes WHERE symbol = $3 AND ts < $1 LIMIT $2))",
        TradingCutoff::EventsPerSymbol,
    ),
    (
        "DELETE FROM market_bars WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM market_bars WHERE minute < $1 LIMIT $2))",
        TradingCutoff::Bars,
    ),
    // Minutes and hours that start before the cutoff; the minute holding
    // the cutoff was marked first, so its hour is summarised again.
    (
        "DELETE FROM trading_summaries WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM trading_summaries WHERE start < $1 LIMIT $2))",
        TradingCutoff::Events,
    ),
];

const ORDER_COLUMNS: &str = "order_id, symbol, side, strategy_id, order_type, placed_at, quantity,
     price, latency_ms, filled_quantity, filled_notional, fills, maker_fills, commission,
     first_fill_at, last_fill_at, canceled_at, rejected_at, seen_at";

fn order_of(row: &Row) -> Result<OrderDelta, tokio_postgres::Error> {
    Ok(OrderDelta {
        order_id: row.try_get(0)?,
        symbol: row.try_get(1)?,
        side: row.try_get(2)?,
        strategy_id: row.try_get(3)?,
        order_type: row.try_get(4)?,
        placed_at: row.try_get(5)?,
        quantity: row.try_get(6)?,
        price: row.try_get(7)?,
        latency_ms: row.try_get(8)?,
        filled_quantity: row.try_get(9)?,
        filled_notional: row.try_get(10)?,
        fills: row.try_get(11)?,
        maker_fills: row.try_get(12)?,
        commission: row.try_get(13)?,
        first_fill_at: row.try_get(14)?,
        last_fill_at: row.try_get(15)?,
        canceled_at: row.try_get(16)?,
        rejected_at: row.try_get(17)?,
        seen_at: row.try_get(18)?,
    })
}

fn fill_of(row: &Row) -> Result<FillView, tokio_postgres::Error> {
    Ok(FillView {
        fill: FillRow {
            event_id: row.try_get(0)?,
            order_id: row.try_get(1)?,
            symbol: row.try_get(2)?,
            side: row.try_get(3)?,
            strategy_id: row.try_get(4)?,
            timestamp_ms: row.try_get(5)?,
            price: row.try_get(6)?,
            quantity: row.try_get(7)?,
            is_maker: row.try_get(8)?,
            commission: row.try_get(9)?,
        },
        mid: row.try_get(10)?,
    })
}

const BAR_COLUMNS: &str = "symbol, source, minute, open_ts, open_id, open, close_ts, close_id,
     close, high, low, volume, updates, spread_sum, spread_count";

fn bar_of(row: &Row) -> Result<BarDelta, tokio_postgres::Error> {
    let source: &str = row.try_get(1)?;
    Ok(BarDelta {
        symbol: row.try_get(0)?,
        source: crate::trading::projection::source_name(source),
        minute: row.try_get(2)?,
        open_ts: row.try_get(3)?,
        open_id: row.try_get(4)?,
        open: row.try_get(5)?,
        close_ts: row.try_get(6)?,
        close_id: row.try_get(7)?,
        close: row.try_get(8)?,
        high: row.try_get(9)?,
        low: row.try_get(10)?,
        volume: row.try_get(11)?,
        updates: row.try_get(12)?,
        spread_sum: row.try_get(13)?,
        spread_count: row.try_get(14)?,
    })
}

/// Stores finest-interval `deltas` in `rollup_deltas`, for a fold to merge
/// into the rollup rows of every interval.
async fn insert_deltas(
    transaction: &deadpool_postgres::Transaction<'_>,
    deltas: &[(RollupKey, Accumulator)],
) -> Result<(), StoreError> {
    let mut keys = KeyColumns::default();
    let mut values = MergedColumns::default();
    for (key, delta) in deltas {
        keys.push(key);
        values.push(delta);
    }
    if keys.metrics.is_empty() {
        return Ok(());
    }
    let insert = transaction
        .prepare_cached(
            "INSERT INTO rollup_deltas (metric, bucket_start, dimensions, count, sum, min, max, sketch)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::float8[],
                                  $6::float8[], $7::float8[], $8::bytea[])",
        )
        .await?;
    transaction
        .execute(
            &insert,
            &[
                &keys.metrics,
                &keys.starts,
                &keys.dimensions,
                &values.counts,
                &values.sums,
                &values.mins,
                &values.maxes,
                &values.sketches,
            ],
        )
        .await?;
    Ok(())
}

/// Moves up to [`FOLD_MAX_ROWS`] stored deltas (those no other fold holds)
/// into the rollup rows of every interval, in one transaction; returns how
/// many it moved. A reader's single statement sees each delta once: still
/// a delta row, or merged into the rollup rows.
async fn fold_once(pool: &Pool, intervals: &[Interval]) -> Result<u64, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let take = transaction
        .prepare_cached(
            "DELETE FROM rollup_deltas WHERE seq IN
                 (SELECT seq FROM rollup_deltas ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING count, sum, min, max, sketch, metric, bucket_start, dimensions",
        )
        .await?;
    let taken = transaction.query(&take, &[&FOLD_MAX_ROWS]).await?;
    if taken.is_empty() {
        return Ok(0);
    }
    let mut deltas = crate::rollup::RollupBatch::new(intervals);
    for row in &taken {
        let metric: &str = row.try_get(5)?;
        let bucket_start_ms: i64 = row.try_get(6)?;
        let dimensions: &str = row.try_get(7)?;
        deltas.add_accumulator(metric, dimensions, bucket_start_ms, accumulator_of(row, 0)?);
    }
    write_rollups(&transaction, &deltas.into_sorted()).await?;
    transaction.commit().await?;
    Ok(taken.len() as u64)
}

/// Folds every stored delta, a transaction of up to [`FOLD_MAX_ROWS`] at a
/// time.
async fn fold_all(pool: &Pool, intervals: &[Interval]) -> Result<u64, StoreError> {
    let mut folded = 0;
    loop {
        let moved = fold_once(pool, intervals).await?;
        folded += moved;
        if moved < FOLD_MAX_ROWS as u64 {
            return Ok(folded);
        }
    }
}

/// Folds the stored deltas every [`FOLD_PERIOD`] until `alive` is gone,
/// and vacuums the delta table at most every `reclaim_every` once it has
/// folded some (and once after the first `reclaim_every`).
async fn run_folder(
    pool: Pool,
    intervals: Arc<[Interval]>,
    alive: std::sync::Weak<()>,
    reclaim_every: Duration,
) {
    let mut ticks = tokio::time::interval(FOLD_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once at the start too: the dead rows a previous run left.
    let mut unreclaimed = true;
    let mut reclaimed = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        if alive.strong_count() == 0 {
            return;
        }
        match fold_all(&pool, &intervals).await {
            Ok(folded) => unreclaimed |= folded > 0,
            Err(error) => tracing::warn!(%error, "folding the rollup deltas failed; retrying"),
        }
        if unreclaimed && reclaimed.elapsed() >= reclaim_every {
            reclaimed = tokio::time::Instant::now();
            match reclaim_deltas(&pool).await {
                Ok(()) => unreclaimed = false,
                Err(error) => tracing::warn!(
                    %error,
                    "vacuuming the folded rollup deltas failed; retrying later"
                ),
            }
        }
    }
}

/// Removes the dead rows folds left in `rollup_deltas`. Never waits for a
/// lock another instance's vacuum holds: the next round will do.
async fn reclaim_deltas(pool: &Pool) -> Result<(), StoreError> {
    pool.get()
        .await?
        .batch_execute("VACUUM (SKIP_LOCKED) rollup_deltas")
        .await?;
    Ok(())
}

/// Writes the sorted rollup deltas: count rows by one additive upsert,
/// value rows by insert-missing, lock in key order, merge, update.
async fn write_rollups(
    transaction: &deadpool_postgres::Transaction<'_>,
    rows: &[(RollupKey, Accumulator)],
) -> Result<(), StoreError> {
    let mut counts = KeyColumns::default();
    let mut count_deltas: Vec<i64> = Vec::new();
    let mut valued = KeyColumns::default();
    let mut value_deltas: Vec<&Accumulator> = Vec::new();
    for (key, delta) in rows {
        if delta.has_values() {
            valued.push(key);
            value_deltas.push(delta);
        } else {
            counts.push(key);
            count_deltas.push(i64::try_from(delta.count()).unwrap_or(i64::MAX));
        }
    }
    // The value rows (insert missing, lock, merge, update), then the count
    // rows.
    let valued_rows = async {
        if valued.metrics.is_empty() {
            return Ok(());
        }
        // Rows not stored yet start as empty count-only rows, so that every
        // value row can be locked with FOR UPDATE below.
        let insert_missing = transaction
            .prepare_cached(
                "INSERT INTO rollups (metric, interval, bucket_start, dimensions, count)
                 SELECT metric, interval, bucket_start, dimensions, 0
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[])
                     AS k(metric, interval, bucket_start, dimensions)
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        transaction
            .execute(&insert_missing, &valued.params())
            .await?;
        // Locked in the batch's key order (the ordinality), the same order
        // every writer uses.
        let lock = transaction
            .prepare_cached(
                "SELECT r.count, r.sum, r.min, r.max, r.sketch
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[])
                     WITH ORDINALITY AS k(metric, interval, bucket_start, dimensions, position)
                 JOIN rollups r USING (metric, interval, bucket_start, dimensions)
                 ORDER BY k.position
                 FOR UPDATE OF r",
            )
            .await?;
        let stored = transaction.query(&lock, &valued.params()).await?;
        if stored.len() != value_deltas.len() {
            return Err(StoreError::Corrupt(format!(
                "locked {} rollup rows, expected {}",
                stored.len(),
                value_deltas.len()
            )));
        }
        let mut merged = MergedColumns::default();
        for (row, delta) in stored.iter().zip(&value_deltas) {
            let mut accumulator = accumulator_of(row, 0)?;
            accumulator.merge(delta);
            merged.push(&accumulator);
        }
        let update = transaction
            .prepare_cached(
                "UPDATE rollups r SET count = u.count, sum = u.sum, min = u.min, max = u.max, sketch = u.sketch
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[],
                             $5::int8[], $6::float8[], $7::float8[], $8::float8[], $9::bytea[])
                     AS u(metric, interval, bucket_start, dimensions, count, sum, min, max, sketch)
                 WHERE r.metric = u.metric AND r.interval = u.interval
                   AND r.bucket_start = u.bucket_start AND r.dimensions = u.dimensions",
            )
            .await?;
        let [metrics, intervals, starts, dimensions] = valued.params();
        transaction
            .execute(
                &update,
                &[
                    metrics,
                    intervals,
                    starts,
                    dimensions,
                    &merged.counts,
                    &merged.sums,
                    &merged.mins,
                    &merged.maxes,
                    &merged.sketches,
                ],
            )
            .await?;

        Ok::<(), StoreError>(())
    };
    let count_rows = async {
        if counts.metrics.is_empty() {
            return Ok(());
        }
        let upsert = transaction
            .prepare_cached(
                "INSERT INTO rollups (metric, interval, bucket_start, dimensions, count)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[])
                 ON CONFLICT (metric, interval, bucket_start, dimensions)
                 DO UPDATE SET count = rollups.count + excluded.count",
            )
            .await?;
        let [metrics, intervals, starts, dimensions] = counts.params();
        transaction
            .execute(
                &upsert,
                &[metrics, intervals, starts, dimensions, &count_deltas],
            )
            .await?;

        Ok::<(), StoreError>(())
    };
    valued_rows.await?;
    count_rows.await?;
    Ok(())
}

/// Rollup keys as column arrays.
#[derive(Default)]
struct KeyColumns {
    metrics: Vec<String>,
    intervals: Vec<&'static str>,
    starts: Vec<i64>,
    dimensions: Vec<String>,
}

impl KeyColumns {
    fn push(&mut self, key: &RollupKey) {
        self.metrics.push(key.metric.clone());
        self.intervals.push(key.interval.as_str());
        self.starts.push(key.bucket_start_ms);
        self.dimensions.push(key.dimensions.clone());
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 4] {
        [
            &self.metrics,
            &self.intervals,
            &self.starts,
            &self.dimensions,
        ]
    }
}

/// Merged value rows as column arrays.
#[derive(Default)]
struct MergedColumns {
    counts: Vec<i64>,
    sums: Vec<Option<f64>>,
    mins: Vec<Option<f64>>,
    maxes: Vec<Option<f64>>,
    sketches: Vec<Option<Vec<u8>>>,
}

impl MergedColumns {
    fn push(&mut self, accumulator: &Accumulator) {
        self.counts
            .push(i64::try_from(accumulator.count()).unwrap_or(i64::MAX));
        self.sums.push(accumulator.sum());
        self.mins.push(accumulator.min());
        self.maxes.push(accumulator.max());
        self.sketches.push(accumulator.sketch_bytes());
    }
}

/// Decodes count, sum, min, max, sketch starting at column `first`.
fn accumulator_of(row: &Row, first: usize) -> Result<Accumulator, StoreError> {
    let count: i64 = row.try_get(first)?;
    let sketch: Option<Vec<u8>> = row.try_get(first + 4)?;
    Accumulator::from_parts(
        u64::try_from(count).unwrap_or(0),
        row.try_get(first + 1)?,
        row.try_get(first + 2)?,
        row.try_get(first + 3)?,
        sketch.as_deref(),
    )
    .map_err(|error| StoreError::Corrupt(error.to_string()))
}

const EVENT_COLUMNS: &str = "id, ts, event_type, user_id, session_id, properties, created_at";

fn event_of(row: &Row) -> Result<Event, StoreError> {
    let id: Uuid = row.try_get(0)?;
    let properties: String = row.try_get(5)?;
    let properties = Properties::from_json(&properties)
        .map_err(|error| StoreError::Corrupt(format!("event {id} properties: {error}")))?;
    Ok(Event {
        id,
        timestamp_ms: row.try_get(1)?,
        event_type: row.try_get(2)?,
        user_id: row.try_get(3)?,
        session_id: row.try_get(4)?,
        properties,
        created_at_ms: row.try_get(6)?,
    })
}

const DEFINITION_COLUMNS: &str =
    "id, name, display_name, description, schema, is_active, created_at, updated_at";

fn definition_of(row: &Row) -> Result<CustomEventDefinition, StoreError> {
    let name: String = row.try_get(1)?;
    let schema: String = row.try_get(4)?;
    Ok(CustomEventDefinition {
        id: row.try_get(0)?,
        schema: serde_json::from_str(&schema)
            .map_err(|error| StoreError::Corrupt(format!("schema of {name}: {error}")))?,
        name,
        display_name: row.try_get(2)?,
        description: row.try_get(3)?,
        is_active: row.try_get(5)?,
        created_at_ms: row.try_get(6)?,
        updated_at_ms: row.try_get(7)?,
    })
}

/// Rollup rows of one filter at `interval` with bucket starts in
/// `[start_ms, end_ms)`.
async fn query_rollup_rows(
    client: &impl GenericClient,
    decoded: &DecodedCache,
    filter: &MetricFilter,
    interval: Interval,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<RollupRow>, StoreError> {
    // The rows and the deltas not folded yet, in one statement: one
    // snapshot, so a fold committing meanwhile is seen whole or not at all.
    let statement = client
        .prepare_cached(
            "SELECT false, dimensions, bucket_start, count, sum, min, max, sketch FROM rollups
             WHERE metric = $1 AND interval = $2 AND bucket_start >= $3 AND bucket_start < $4
               AND ($5::text IS NULL OR dimensions = $5)
             UNION ALL
             SELECT true, dimensions, bucket_start, count, sum, min, max, sketch FROM rollup_deltas
             WHERE metric = $1 AND bucket_start >= $3 AND bucket_start < $6
               AND ($5::text IS NULL OR dimensions = $5)",
        )
        .await?;
    // A bucket starting before `end_ms` holds deltas up to an interval later.
    let deltas_end_ms = end_ms.saturating_add(interval.millis());
    let rows = client
        .query(
            &statement,
            &[
                &filter.metric,
                &interval.as_str(),
                &start_ms,
                &end_ms,
                &filter.dimensions,
                &deltas_end_ms,
            ],
        )
        .await?;
    let mut result: Vec<RollupRow> = Vec::with_capacity(rows.len());
    let mut deltas: Vec<(String, i64, Accumulator)> = Vec::new();
    for row in &rows {
        let is_delta: bool = row.try_get(0)?;
        let dimensions: String = row.try_get(1)?;
        let bucket_start_ms: i64 = row.try_get(2)?;
        if is_delta {
            let bucket_start_ms = interval.bucket_start(bucket_start_ms);
            if bucket_start_ms >= start_ms && bucket_start_ms < end_ms {
                deltas.push((dimensions, bucket_start_ms, accumulator_of(row, 3)?));
            }
            continue;
        }
        let sketch: Option<&[u8]> = row.try_get(7)?;
        let accumulator = match sketch {
            None => accumulator_of(row, 3)?,
            Some(sketch) => decoded
                .get_or_decode(
                    RowKey {
                        metric: filter.metric.clone(),
                        interval,
                        bucket_start_ms,
                        dimensions: dimensions.clone(),
                    },
                    u64::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
                    row.try_get(4)?,
                    row.try_get(5)?,
                    row.try_get(6)?,
                    sketch,
                )
                .map_err(|error| StoreError::Corrupt(error.to_string()))?,
        };
        result.push(RollupRow {
            dimensions,
            bucket_start_ms,
            accumulator,
        });
    }
    super::merge_into_rows(
        &mut result,
        deltas.iter().map(|(dimensions, bucket_start_ms, delta)| {
            (dimensions.as_str(), *bucket_start_ms, delta)
        }),
    );
    Ok(result)
}

/// Whether `error` says an inserted row had no partition (dropped by
/// another instance's retention after this one cached it as existing).
fn is_missing_partition(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(message) if message.contains("no partition of relation"))
}

#[async_trait]
impl Store for PostgresStore {
    async fn commit_batch(&self, batch: PreparedBatch) -> Result<Vec<bool>, StoreError> {
        if batch.rollups.intervals() != &self.intervals[..] {
            return Err(StoreError::Corrupt(format!(
                "batch rolled up into {:?}, the store keeps {:?}",
                batch.rollups.intervals(),
                self.intervals
            )));
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let today = day_of(crate::model::event::now_ms());
        let mut days: Vec<i64> = batch
            .events
            .iter()
            .map(|event| day_of(event.timestamp_ms))
            .collect();
        days.extend(today..=today + self.partitions_ahead_days);
        self.ensure_partitions(&days).await?;
        let input = CommitInput::new(batch);
        let result = match self.commit_once(&input).await {
            Err(error) if is_missing_partition(&error) => {
                // Another instance dropped a day this one believed existed:
                // forget what is known, create again, retry once.
                self.lock_known().clear();
                self.ensure_partitions(&days).await?;
                self.commit_once(&input).await
            }
            result => result,
        };
        super::dispose(input);
        result
    }

    async fn fold_pending(&self) -> Result<(), StoreError> {
        // Every instance folds every stored delta (the folder task does
        // it every second).
        fold_all(&self.pool, &self.intervals).await.map(|_| ())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // A PostgreSQL commit is durable when it returns (WAL flushed).
        Ok(())
    }

    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError> {
        let client = self.pool.get().await?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = match &query.event_type {
            Some(event_type) => {
                let statement = client
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE ts >= $1 AND ts < $2 AND event_type = $3
                         ORDER BY ts DESC, seq DESC LIMIT $4"
                    ))
                    .await?;
                client
                    .query(
                        &statement,
                        &[&query.start_ms, &query.end_ms, event_type, &limit],
                    )
                    .await?
            }
            None => {
                let statement = client
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE ts >= $1 AND ts < $2
                         ORDER BY ts DESC, seq DESC LIMIT $3"
                    ))
                    .await?;
                client
                    .query(&statement, &[&query.start_ms, &query.end_ms, &limit])
                    .await?
            }
        };
        rows.iter().map(event_of).collect()
    }

    async fn scan_events(
        &self,
        start_ms: i64,
        end_ms: i64,
        include_properties: bool,
    ) -> Result<Vec<Event>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(if include_properties {
                "SELECT id, ts, event_type, user_id, session_id, properties, created_at FROM events
                 WHERE ts >= $1 AND ts < $2"
            } else {
                "SELECT id, ts, event_type, user_id, session_id, '{}', created_at FROM events
                 WHERE ts >= $1 AND ts < $2"
            })
            .await?;
        let rows = client.query(&statement, &[&start_ms, &end_ms]).await?;
        rows.iter().map(event_of).collect()
    }

    async fn scan_events_of_types(
        &self,
        start_ms: i64,
        end_ms: i64,
        event_types: Vec<String>,
    ) -> Result<Vec<Event>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT id, ts, event_type, user_id, session_id, properties, created_at FROM events
                 WHERE ts >= $1 AND ts < $2 AND event_type = ANY($3)",
            )
            .await?;
        let rows = client
            .query(&statement, &[&start_ms, &end_ms, &event_types])
            .await?;
        rows.iter().map(event_of).collect()
    }

    async fn count_events_by_type(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached("SELECT event_type, count(*) FROM events WHERE ts >= $1 AND ts < $2 GROUP BY event_type")
            .await?;
        let rows = client.query(&statement, &[&start_ms, &end_ms]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                )
            })
            .collect())
    }

    async fn clear_trading(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .batch_execute(
                "TRUNCATE trading_orders, trading_fills, market_quotes, market_bars,
                     trading_summaries, trading_marks",
            )
            .await?;
        Ok(())
    }

    async fn write_trading(&self, trading: TradingBatch) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let mut transaction = client.transaction().await?;
        write_trading(&mut transaction, &trading, false).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn trading_marks(
        &self,
        of: Option<(SummaryKind, i64, i64)>,
    ) -> Result<Vec<Mark>, StoreError> {
        let client = self.pool.get().await?;
        let rows = match of {
            None => {
                let statement = client
                    .prepare_cached(
                        "SELECT kind, first_minute, last_minute, version FROM trading_marks",
                    )
                    .await?;
                client.query(&statement, &[]).await?
            }
            Some((kind, start_ms, end_ms)) => {
                let statement = client.prepare_cached(MARKS_MEETING).await?;
                let code = kind.code() as i16;
                let first = summary::minute_of(start_ms);
                client.query(&statement, &[&code, &first, &end_ms]).await?
            }
        };
        rows.iter()
            .map(|row| {
                Ok(Mark {
                    kind: SummaryKind::from_code(i64::from(row.try_get::<_, i16>(0)?))?,
                    first_minute: row.try_get(1)?,
                    last_minute: row.try_get(2)?,
                    version: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn read_trading_summaries(
        &self,
        kind: SummaryKind,
        span_ms: i64,
        start_ms: i64,
        end_ms: i64,
        part: SummaryPart,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT start, {} FROM trading_summaries
                 WHERE kind = $1 AND span_ms = $2 AND start >= $3 AND start < $4 ORDER BY start",
                part.column()
            ))
            .await?;
        let code = kind.code() as i16;
        let rows = client
            .query(&statement, &[&code, &span_ms, &start_ms, &end_ms])
            .await?;
        Ok(rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?)
    }

    async fn write_trading_summaries(
        &self,
        kind: SummaryKind,
        minutes: Vec<(i64, Option<SummaryBody>)>,
        cleared: Vec<Mark>,
        remainders: Vec<(SummaryKind, i64, i64)>,
        merge: MergeSlices,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let remainders: MarkSpans = remainders.into_iter().collect();
        let written =
            write_summaries(&transaction, kind, &minutes, &cleared, &remainders, merge).await?;
        if written {
            transaction.commit().await?;
        }
        Ok(written)
    }

    async fn reclaim_trading_marks(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        // Never waits for a lock another vacuum holds: the next call will do.
        client
            .batch_execute("VACUUM (SKIP_LOCKED) trading_marks")
            .await?;
        Ok(())
    }

    async fn read_orders(&self, start_ms: i64, end_ms: i64) -> Result<Vec<OrderDelta>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {ORDER_COLUMNS} FROM trading_orders WHERE placed_at >= $1 AND placed_at < $2"
            ))
            .await?;
        let rows = client.query(&statement, &[&start_ms, &end_ms]).await?;
        Ok(rows.iter().map(order_of).collect::<Result<_, _>>()?)
    }

    async fn read_fills(&self, start_ms: i64, end_ms: i64) -> Result<Vec<FillView>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT f.event_id, f.order_id, f.symbol, COALESCE(f.side, o.side),
                        COALESCE(f.strategy_id, o.strategy_id), f.ts, f.price, f.quantity,
                        f.is_maker, f.commission, NULL::float8
                 FROM trading_fills f LEFT JOIN trading_orders o ON o.order_id = f.order_id
                 WHERE f.ts >= $1 AND f.ts < $2",
            )
            .await?;
        let rows = client.query(&statement, &[&start_ms, &end_ms]).await?;
        let mut fills: Vec<FillView> = rows.iter().map(fill_of).collect::<Result<_, _>>()?;
        // The mids: each symbol's quotes of the range read once.
        let statement = client
            .prepare_cached(crate::trading::QUOTES_FOR_FILLS)
            .await?;
        let mut quotes = std::collections::HashMap::new();
        for symbol in crate::trading::fill_symbols(&fills) {
            let rows = client
                .query(&statement, &[&symbol, &start_ms, &end_ms])
                .await?;
            let symbol_quotes = rows
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<Vec<(i64, f64)>, tokio_postgres::Error>>()?;
            quotes.insert(symbol, symbol_quotes);
        }
        crate::trading::price_fills(&mut fills, &quotes);
        Ok(fills)
    }

    async fn read_bars(
        &self,
        symbol: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<BarDelta>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {BAR_COLUMNS} FROM market_bars
                 WHERE symbol = $1 AND minute >= $2 AND minute < $3 ORDER BY minute, source"
            ))
            .await?;
        let rows = client
            .query(&statement, &[&symbol, &start_ms, &end_ms])
            .await?;
        Ok(rows.iter().map(bar_of).collect::<Result<_, _>>()?)
    }

    async fn read_rollups(
        &self,
        metric: &str,
        dimensions: Option<&str>,
        interval: Interval,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let client = self.pool.get().await?;
        let filter = MetricFilter::new(metric, dimensions);
        query_rollup_rows(&client, &self.decoded, &filter, interval, start_ms, end_ms).await
    }

    async fn read_bucket_if_covered(
        &self,
        filters: &[MetricFilter],
        interval: Interval,
        bucket_start_ms: i64,
        covered_start_ms: i64,
        covered_end_ms: i64,
    ) -> Result<Option<Vec<Vec<RollupRow>>>, StoreError> {
        let mut client = self.pool.get().await?;
        // One snapshot for the emptiness check and the bucket read, so an
        // event committed in between cannot slip into the bucket unseen.
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let bucket_end_ms = bucket_start_ms.saturating_add(interval.millis());
        let outside = transaction
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE ts >= $1 AND ts < $2)
                     OR EXISTS (SELECT 1 FROM events WHERE ts >= $3 AND ts < $4)",
            )
            .await?;
        let has_outside: bool = transaction
            .query_one(
                &outside,
                &[
                    &bucket_start_ms,
                    &covered_start_ms,
                    &covered_end_ms,
                    &bucket_end_ms,
                ],
            )
            .await?
            .try_get(0)?;
        if has_outside {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(filters.len());
        for filter in filters {
            rows.push(
                query_rollup_rows(
                    &transaction,
                    &self.decoded,
                    filter,
                    interval,
                    bucket_start_ms,
                    bucket_start_ms + 1,
                )
                .await?,
            );
        }
        transaction.commit().await?;
        Ok(Some(rows))
    }

    async fn count_distinct(
        &self,
        dimension: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT COUNT(DISTINCT value) FROM distinct_values
                 WHERE dimension = $1 AND bucket_start >= $2 AND bucket_start < $3",
            )
            .await?;
        let count: i64 = client
            .query_one(&statement, &[&dimension, &start_ms, &end_ms])
            .await?
            .try_get(0)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn delete_expired(
        &self,
        cutoffs: &RetentionCutoffs,
    ) -> Result<RetentionReport, StoreError> {
        // Deltas of expired buckets are rows like any other: fold them
        // first, so that they are deleted too.
        fold_all(&self.pool, &self.intervals).await?;
        let counts = self
            .drop_expired(cutoffs.events_before_ms, &cutoffs.rollups_before_ms)
            .await?;
        let mut trading_rows_deleted = 0;
        {
            let cutoff_minute = summary::minute_of(cutoffs.events_before_ms);
            let mut client = self.pool.get().await?;
            let transaction = client.transaction().await?;
            let spans: MarkSpans = [SummaryKind::Orders, SummaryKind::Fills]
                .into_iter()
                .map(|kind| (kind, cutoff_minute, cutoff_minute))
                .collect();
            write_marks(&transaction, &spans).await?;
            transaction.commit().await?;
        }
        for (delete, cutoff) in TRADING_RETENTION {
            let before_ms = cutoffs.trading_before_ms(cutoff);
            if cutoff != TradingCutoff::EventsPerSymbol {
                trading_rows_deleted += self.delete_in_chunks(delete, None, before_ms).await?;
                continue;
            }
            // Quotes are keyed by (symbol, ts): walk the symbols.
            let mut previous = String::new();
            loop {
                let client = self.pool.get().await?;
                let row = client
                    .query_opt(
                        "SELECT symbol FROM market_quotes WHERE symbol > $1 ORDER BY symbol LIMIT 1",
                        &[&previous],
                    )
                    .await?;
                drop(client);
                let Some(row) = row else { break };
                let symbol: String = row.try_get(0)?;
                trading_rows_deleted += self
                    .delete_in_chunks(delete, Some(symbol.clone()), before_ms)
                    .await?;
                previous = symbol;
            }
        }
        Ok(RetentionReport {
            events_deleted: counts.events_deleted,
            rollup_rows_deleted: counts.rollup_rows_deleted,
            distinct_rows_deleted: counts.distinct_rows_deleted,
            partitions_dropped: counts.partitions_dropped,
            trading_rows_deleted,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn create_definition(
        &self,
        definition: &CustomEventDefinition,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                &format!("INSERT INTO custom_event_definitions ({DEFINITION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
                &[
                    &definition.id,
                    &definition.name,
                    &definition.display_name,
                    &definition.description,
                    &definition.schema.to_string(),
                    &definition.is_active,
                    &definition.created_at_ms,
                    &definition.updated_at_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn update_definition(
        &self,
        definition: &CustomEventDefinition,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE custom_event_definitions SET display_name = $2, description = $3, schema = $4,
                     is_active = $5, updated_at = $6 WHERE name = $1",
                &[
                    &definition.name,
                    &definition.display_name,
                    &definition.description,
                    &definition.schema.to_string(),
                    &definition.is_active,
                    &definition.updated_at_ms,
                ],
            )
            .await?;
        Ok(())
    }

    async fn get_definition(
        &self,
        name: &str,
    ) -> Result<Option<CustomEventDefinition>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {DEFINITION_COLUMNS} FROM custom_event_definitions WHERE name = $1"
                ),
                &[&name],
            )
            .await?;
        row.as_ref().map(definition_of).transpose()
    }

    async fn list_definitions(&self) -> Result<Vec<CustomEventDefinition>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {DEFINITION_COLUMNS} FROM custom_event_definitions ORDER BY name"),
                &[],
            )
            .await?;
        rows.iter().map(definition_of).collect()
    }

    async fn insert_dead_letters(&self, letters: &[DeadLetter]) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let statement = transaction
            .prepare_cached(
                "INSERT INTO dead_letters (source, topic, message_partition, message_offset, \
                 message_key, payload, payload_truncated, event_id, error, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (source, topic, message_partition, message_offset) DO NOTHING",
            )
            .await?;
        let mut inserted = 0;
        for letter in letters {
            inserted += transaction
                .execute(
                    &statement,
                    &[
                        &letter.source,
                        &letter.topic,
                        &letter.partition,
                        &letter.offset,
                        &letter.key,
                        &letter.payload,
                        &letter.payload_truncated,
                        &letter.event_id,
                        &letter.error,
                        &letter.received_at_ms,
                    ],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(inserted)
    }

    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let client = self.pool.get().await?;
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                &format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                     WHERE id > $1 AND ($2::text IS NULL OR source = $2) ORDER BY id LIMIT $3"
                ),
                &[&query.after_id, &query.source, &limit],
            )
            .await?;
        rows.iter().map(dead_letter_of).collect()
    }

    async fn delete_dead_letters(&self, ids: &[i64]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let client = self.pool.get().await?;
        let deleted = client
            .execute("DELETE FROM dead_letters WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(deleted)
    }

    async fn record_dead_letter_failure(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE dead_letters SET error = $2, attempts = attempts + 1 WHERE id = $1",
                &[&id, &error],
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "postgres_tests.rs"]
mod tests;
