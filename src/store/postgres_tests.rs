//! Store-level tests of the PostgreSQL backend: partitions, retention and
//! concurrent writers. Each test works in a fresh schema that it drops at
//! the end. Without a reachable server they print SKIPPED and pass, except
//! under `CI=true`, where they fail.

use serde_json::Map;
use uuid::Uuid;

use super::*;
use crate::model::metric::{EVENTS_COUNT, ORDERS_LATENCY_MS};
use crate::rollup::Interval;

const INTERVALS: [Interval; 2] = [Interval::M1, Interval::D1];

/// A fresh schema, dropped (with everything in it) when the guard drops.
struct TestSchema {
    name: String,
    connection: tokio_postgres::Config,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

impl TestSchema {
    /// `None` (after saying SKIPPED) when no server answers, outside CI.
    async fn create() -> Option<TestSchema> {
        let mut connection = tokio_postgres::Config::new();
        connection
            .host(env_or("PGHOST", "127.0.0.1"))
            .port(env_or("PGPORT", "5432").parse().expect("PGPORT is a port"))
            .user(env_or("PGUSER", "postgres"))
            .dbname(env_or("PGDATABASE", "test"))
            .connect_timeout(Duration::from_secs(5));
        if let Err(error) = connection.connect(NoTls).await {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL unreachable under CI: {error}"
            );
            eprintln!("SKIPPED: PostgreSQL unreachable ({error})");
            return None;
        }
        Some(TestSchema {
            name: format!("t_{}", Uuid::new_v4().simple()),
            connection,
        })
    }

    fn database_config(&self) -> DatabaseConfig {
        let env = [
            ("ANALYTICS_DATABASE__DRIVER", "postgres".to_string()),
            ("ANALYTICS_DATABASE__SCHEMA", self.name.clone()),
            ("ANALYTICS_DATABASE__HOST", env_or("PGHOST", "127.0.0.1")),
            ("ANALYTICS_DATABASE__PORT", env_or("PGPORT", "5432")),
            ("ANALYTICS_DATABASE__USER", env_or("PGUSER", "postgres")),
            ("ANALYTICS_DATABASE__DATABASE", env_or("PGDATABASE", "test")),
            ("ANALYTICS_DATABASE__MAX_CONNECTIONS", "8".to_string()),
            ("ANALYTICS_DATABASE__MAX_IDLE_CONNECTIONS", "8".to_string()),
        ]
        .map(|(key, value)| (key.to_string(), value));
        crate::config::load(None, &env)
            .expect("valid test config")
            .config
            .database
    }

    async fn open(&self) -> PostgresStore {
        self.open_with(true).await
    }

    async fn open_with(&self, fold_in_background: bool) -> PostgresStore {
        let settings =
            PostgresSettings::from_config(&self.database_config(), Duration::from_secs(30))
                .expect("settings");
        PostgresStore::open_with(settings, &INTERVALS, fold_in_background)
            .await
            .expect("open")
    }

    /// One number from `sql`, run in this schema.
    async fn count(&self, sql: &str) -> i64 {
        let (client, driver) = self.connection.connect(NoTls).await.expect("connect");
        tokio::spawn(driver);
        client
            .query_one(&sql.replace("{schema}", &self.name), &[])
            .await
            .expect("count")
            .get(0)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let connection = self.connection.clone();
        // Bounded: a failed test may leave a transaction of its own open,
        // whose connection cannot roll back while this blocks its runtime;
        // then the schema stays (with a warning) rather than the test hang.
        // The service under test may still hold a lock in an open
        // transaction that cannot finish while this blocks its runtime:
        // its backends are ended first.
        let statement = format!(
            "SET lock_timeout = '10s';
             SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                 JOIN pg_class c ON c.oid = l.relation
                 JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = '{schema}' AND l.pid <> pg_backend_pid();
             DROP SCHEMA IF EXISTS {schema} CASCADE",
            schema = self.name
        );
        // Drop runs inside the test's runtime, which must not block: a
        // thread with its own small runtime does the work.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (client, driver) = connection.connect(NoTls).await.ok()?;
                tokio::spawn(driver);
                client.batch_execute(&statement).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test schema {}", self.name);
        }
    }
}

fn order(timestamp_ms: i64, latency_ms: f64) -> Event {
    let mut properties = Map::new();
    properties.insert("latency_ms".into(), serde_json::json!(latency_ms));
    Event {
        id: Uuid::now_v7(),
        event_type: "order.placed".into(),
        user_id: Some("trader-1".into()),
        session_id: None,
        properties: properties.into(),
        timestamp_ms,
        created_at_ms: timestamp_ms,
    }
}

async fn commit(store: &PostgresStore, events: Vec<Event>) -> Vec<bool> {
    store
        .commit_batch(PreparedBatch::prepare(events, &INTERVALS))
        .await
        .expect("commit")
}

async fn partition_days(store: &PostgresStore) -> Vec<i64> {
    let mut days: Vec<i64> = store
        .existing_partitions()
        .await
        .unwrap()
        .into_iter()
        .map(|(day, _)| day)
        .collect();
    days.sort_unstable();
    days
}

/// Sum of the stored `events.count` rows at `interval` over all time.
async fn counted(store: &PostgresStore, interval: Interval) -> u64 {
    store
        .read_rollups(EVENTS_COUNT, None, interval, i64::MIN, i64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|row| row.accumulator.count())
        .sum()
}

#[tokio::test]
async fn partitions_are_created_ahead_and_on_demand_for_a_far_back_event() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let today = day_of(crate::model::event::now_ms());
    let days = partition_days(&store).await;
    for day in today..=today + 7 {
        assert!(days.contains(&day), "day {day} created ahead: {days:?}");
    }
    let far_back = (today - 400) * DAY_MS + 12_345;
    assert_eq!(commit(&store, vec![order(far_back, 3.0)]).await, vec![true]);
    assert!(partition_days(&store).await.contains(&(today - 400)));
    let listed = store
        .list_events(EventQuery {
            start_ms: far_back - 1,
            end_ms: far_back + 1,
            event_type: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].timestamp_ms, far_back);
    // Another store on the same schema (a second instance) does not know
    // the partition exists and creates it again harmlessly.
    let second = schema.open().await;
    assert_eq!(
        commit(&second, vec![order(far_back + 1, 4.0)]).await,
        vec![true]
    );
    assert_eq!(counted(&second, Interval::D1).await, 2);
}

#[tokio::test]
async fn duplicates_within_and_across_batches_count_once() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let now = crate::model::event::now_ms();
    let first = order(now, 1.0);
    let mut again = first.clone();
    again.timestamp_ms = now - 5 * DAY_MS; // same id, another day: still a duplicate
    assert_eq!(
        commit(&store, vec![first.clone(), first.clone(), order(now, 2.0)]).await,
        vec![true, false, true]
    );
    assert_eq!(
        commit(&store, vec![again, order(now, 3.0)]).await,
        vec![false, true]
    );
    assert_eq!(counted(&store, Interval::M1).await, 3);
    let latency = store
        .read_rollups(
            ORDERS_LATENCY_MS,
            Some(""),
            Interval::D1,
            i64::MIN,
            i64::MAX,
        )
        .await
        .unwrap();
    let total: u64 = latency.iter().map(|row| row.accumulator.count()).sum();
    assert_eq!(total, 3);
}

#[tokio::test]
async fn retention_drops_whole_partitions_and_keeps_counts_right() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let today = day_of(crate::model::event::now_ms());
    // Three events a day over the last ten days.
    let mut kept = Vec::new();
    for day in today - 9..=today {
        let events: Vec<Event> = (0..3)
            .map(|index| order(day * DAY_MS + 1_000 * (index + 1), index as f64))
            .collect();
        if day >= today - 4 {
            kept.extend(events.iter().cloned());
        }
        commit(&store, events).await;
    }
    assert_eq!(counted(&store, Interval::D1).await, 30);
    // Expire everything before the middle of day today-4: the five days
    // before it go whole; day today-4 is only partly expired and stays.
    let cutoff = (today - 4) * DAY_MS + DAY_MS / 2;
    let report = store
        .delete_expired(&RetentionCutoffs {
            events_before_ms: cutoff,
            rollups_before_ms: vec![(Interval::M1, cutoff), (Interval::D1, (today - 4) * DAY_MS)],
        })
        .await
        .unwrap();
    assert_eq!(report.partitions_dropped, 5);
    assert_eq!(report.events_deleted, 15);
    let days = partition_days(&store).await;
    assert!(days.iter().all(|day| *day >= today - 4), "{days:?}");
    let stored = store.scan_events(i64::MIN, i64::MAX, false).await.unwrap();
    assert_eq!(stored.len(), 15);
    assert_eq!(
        counted(&store, Interval::D1).await,
        15,
        "daily rollups of kept days"
    );
    // The ids of kept events still reject redelivery; a redelivered event
    // of a dropped day is beyond retention (the validator rejects it).
    let inserted = commit(&store, kept.clone()).await;
    assert!(inserted.iter().all(|flag| !flag));
    assert_eq!(counted(&store, Interval::D1).await, 15);
    // Idempotent.
    let again = store
        .delete_expired(&RetentionCutoffs {
            events_before_ms: cutoff,
            rollups_before_ms: vec![(Interval::M1, cutoff), (Interval::D1, (today - 4) * DAY_MS)],
        })
        .await
        .unwrap();
    assert_eq!(again.partitions_dropped, 0);
    assert_eq!(again.rollup_rows_deleted, 0);
}

/// Four writers at once, two on each store (pool): writer `w` commits
/// `batch(w, round)` for each of `rounds` rounds; any failure (a deadlock
/// included) fails the test. Returns how many events were answered new.
async fn four_writers(
    first: &Arc<PostgresStore>,
    second: &Arc<PostgresStore>,
    rounds: usize,
    batch: impl Fn(usize, usize) -> Vec<Event> + Send + Sync + Clone + 'static,
) -> usize {
    let mut tasks = Vec::new();
    for (writer, store) in [first, second, first, second].into_iter().enumerate() {
        let (store, batch) = (Arc::clone(store), batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut stored = 0;
            for round in 0..rounds {
                let inserted = store
                    .commit_batch(PreparedBatch::prepare(batch(writer, round), &INTERVALS))
                    .await
                    .expect("no deadlock, no failure");
                stored += inserted.iter().filter(|new| **new).count();
            }
            stored
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    stored
}

#[tokio::test]
async fn concurrent_writers_to_one_bucket_lose_nothing() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let first = Arc::new(schema.open().await);
    let second = Arc::new(schema.open().await);
    let minute = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    const ROUNDS: i64 = 20;
    const PER_BATCH: i64 = 25;
    four_writers(&first, &second, ROUNDS as usize, move |writer, round| {
        let round = round as i64;
        (0..PER_BATCH)
            .map(|index| {
                order(
                    minute + (round * PER_BATCH + index) % 60_000,
                    (writer + 1) as f64,
                )
            })
            .collect()
    })
    .await;
    let expected = 4 * ROUNDS * PER_BATCH;
    let latency = first
        .read_rollups(
            ORDERS_LATENCY_MS,
            Some(""),
            Interval::M1,
            minute,
            minute + 1,
        )
        .await
        .unwrap();
    assert_eq!(latency.len(), 1);
    let row = &latency[0].accumulator;
    assert_eq!(row.count(), expected as u64);
    assert_eq!(
        row.sum(),
        Some(((1 + 2 + 3 + 4) * ROUNDS * PER_BATCH) as f64)
    );
    assert_eq!((row.min(), row.max()), (Some(1.0), Some(4.0)));
    assert_eq!(counted(&second, Interval::M1).await, expected as u64);
    assert_eq!(counted(&second, Interval::D1).await, expected as u64);
}

/// Four writers on two pools send the same events at once (a client's
/// retries reaching several instances), in opposite orders: no deadlock,
/// and each event is stored and counted once.
#[tokio::test]
async fn concurrent_writers_of_the_same_events_store_each_once() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let first = Arc::new(schema.open().await);
    let second = Arc::new(schema.open().await);
    let minute = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    const ROUNDS: usize = 10;
    const PER_BATCH: usize = 200;
    let events: Arc<Vec<Vec<Event>>> = Arc::new(
        (0..ROUNDS)
            .map(|round| {
                (0..PER_BATCH)
                    .map(|index| order(minute + (round * PER_BATCH + index) as i64, 1.0))
                    .collect()
            })
            .collect(),
    );
    let stored = four_writers(&first, &second, ROUNDS, move |writer, round| {
        let mut batch = events[round].clone();
        if writer % 2 == 1 {
            batch.reverse();
        }
        batch
    })
    .await;
    let expected = ROUNDS * PER_BATCH;
    assert_eq!(stored, expected, "each event answered new exactly once");
    assert_eq!(
        schema.count("SELECT COUNT(*) FROM {schema}.events").await,
        expected as i64
    );
    assert_eq!(counted(&first, Interval::M1).await, expected as u64);
    assert_eq!(counted(&second, Interval::D1).await, expected as u64);
}

/// Four writers on two pools fill the same orders and the same bars at once,
/// each batch touching the orders in another order: no deadlock, and every
/// fill is counted once in its order's row and its bar.
#[tokio::test]
async fn concurrent_writers_to_the_same_orders_and_bars_lose_nothing() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let first = Arc::new(schema.open().await);
    let second = Arc::new(schema.open().await);
    let minute = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    const ORDERS: usize = 30;
    const ROUNDS: usize = 10;
    let fill = |order: usize, at: i64, quantity: f64| {
        let mut properties = Map::new();
        properties.insert("order_id".into(), serde_json::json!(format!("o-{order}")));
        properties.insert("symbol".into(), serde_json::json!("BTCUSDT"));
        properties.insert("price".into(), serde_json::json!(100.0));
        properties.insert("quantity".into(), serde_json::json!(quantity));
        Event {
            id: Uuid::now_v7(),
            event_type: "order.filled".into(),
            user_id: None,
            session_id: None,
            properties: properties.into(),
            timestamp_ms: at,
            created_at_ms: at,
        }
    };
    four_writers(&first, &second, ROUNDS, move |writer, round| {
        let mut events: Vec<Event> = (0..ORDERS)
            .map(|order| {
                fill(
                    order,
                    minute + (writer * 1_000 + round) as i64,
                    1.0 + writer as f64,
                )
            })
            .collect();
        if (writer + round) % 2 == 1 {
            events.reverse();
        }
        events
    })
    .await;
    // Every order: ROUNDS fills from each writer, of 1, 2, 3 and 4.
    let orders = first.read_orders(i64::MIN, i64::MAX).await.unwrap();
    assert!(
        orders.is_empty(),
        "no order was placed: none is read by placement"
    );
    let fills = second.read_fills(minute, minute + 60_000).await.unwrap();
    assert_eq!(fills.len(), 4 * ROUNDS * ORDERS);
    let client = first.pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT order_id, filled_quantity, fills, first_fill_at, last_fill_at FROM trading_orders ORDER BY order_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), ORDERS);
    for row in rows {
        let filled: f64 = row.get(1);
        let fills: i64 = row.get(2);
        assert_eq!(
            filled,
            (ROUNDS * (1 + 2 + 3 + 4)) as f64,
            "{}",
            row.get::<_, String>(0)
        );
        assert_eq!(fills, (4 * ROUNDS) as i64);
        assert_eq!(row.get::<_, Option<i64>>(3), Some(minute));
        assert_eq!(
            row.get::<_, Option<i64>>(4),
            Some(minute + 3_000 + ROUNDS as i64 - 1)
        );
    }
    let bars = first
        .read_bars("BTCUSDT", minute, minute + 60_000)
        .await
        .unwrap();
    assert_eq!(bars.len(), 1);
    assert_eq!(bars[0].updates, (4 * ROUNDS * ORDERS) as i64);
    assert_eq!(bars[0].volume, (ROUNDS * ORDERS * (1 + 2 + 3 + 4)) as f64);
}

#[tokio::test]
async fn tls_modes_are_refused_naming_the_key() {
    let mut database = crate::config::load(None, &[])
        .expect("defaults")
        .config
        .database;
    database.ssl_mode = "verify-full".into();
    let error = PostgresSettings::from_config(&database, Duration::from_secs(1)).unwrap_err();
    assert!(error.starts_with("database.ssl_mode:"), "{error}");
    database.ssl_mode = "prefer".into();
    database.schema = "Bad-Name".into();
    let error = PostgresSettings::from_config(&database, Duration::from_secs(1)).unwrap_err();
    assert!(error.starts_with("database.schema:"), "{error}");
}

#[tokio::test]
async fn connections_plan_serially_and_the_marks_are_vacuumed() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let client = store.pool.get().await.expect("connection");
    let parallel: String = client
        .query_one("SHOW max_parallel_workers_per_gather", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(parallel, "0", "no parallel plans for the service's reads");
    let before = vacuums(&client, "trading_marks").await;
    store.reclaim_trading_marks().await.expect("vacuum");
    assert_eq!(
        vacuums(&client, "trading_marks").await,
        before + 1,
        "the marks were vacuumed"
    );
}

/// How often `table` of the connection's schema was vacuumed by hand.
async fn vacuums(client: &deadpool_postgres::Object, table: &str) -> i64 {
    client
        .query_one(
            "SELECT vacuum_count FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND relname = $1",
            &[&table],
        )
        .await
        .expect("statistics")
        .get::<_, i64>(0)
}

#[test]
fn partition_names_round_trip() {
    for day in [0, 1, 19_000, 20_365, 2_932_896] {
        assert_eq!(
            parse_partition_name(&partition_name(day)),
            Some(day),
            "{day}"
        );
    }
    assert_eq!(partition_name(20_364), "events_20251003");
    assert_eq!(parse_partition_name("events_d-1"), None);
}

#[tokio::test]
async fn dead_letters_are_stored_once_listed_and_deleted() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    crate::store::conformance::dead_letters(&store).await;
}

#[tokio::test]
async fn small_commits_are_read_the_same_before_and_after_their_fold() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open_with(false).await;
    let now = crate::model::event::now_ms();
    let minute = now - now.rem_euclid(60_000);
    for round in 0..3 {
        let events = (0..4)
            .map(|index| order(minute + round * 10 + index, (round * 4 + index) as f64))
            .collect();
        commit(&store, events).await;
    }
    let deltas = "SELECT COUNT(*) FROM {schema}.rollup_deltas";
    let folded = "SELECT COUNT(*) FROM {schema}.rollups
                  WHERE metric = 'orders.latency_ms' AND interval = '1m'";
    assert!(schema.count(deltas).await > 0);
    assert_eq!(schema.count(folded).await, 0);
    let read = |interval| super::super::conformance::latency_figures(&store, interval, i64::MIN);
    let before = [read(Interval::M1).await, read(Interval::D1).await];
    for figures in &before {
        assert_eq!(
            (figures.0, figures.1, figures.2, figures.3),
            (12, Some(66.0), Some(0.0), Some(11.0))
        );
    }
    let filter = MetricFilter::new(ORDERS_LATENCY_MS, Some(""));
    let covered = || {
        let filters = [filter.clone()];
        let store = &store;
        async move {
            store
                .read_bucket_if_covered(&filters, Interval::M1, minute, minute, minute + 60_000)
                .await
                .unwrap()
                .expect("every event lies in the covered part")[0][0]
                .accumulator
                .count()
        }
    };
    assert_eq!(covered().await, 12);

    store.fold_pending().await.unwrap();
    assert_eq!(schema.count(deltas).await, 0);
    assert_eq!(schema.count(folded).await, 1);
    let after = [read(Interval::M1).await, read(Interval::D1).await];
    assert_eq!(before, after, "folding changes no answer");
    assert_eq!(covered().await, 12);
}

/// The folder vacuums the delta table once at the start and then once it
/// has folded deltas, and only then: folded deltas are dead rows every read
/// of the deltas visits.
#[tokio::test]
async fn the_folder_vacuums_the_deltas_it_folded() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open_with(false).await;
    let client = store.pool.get().await.expect("connection");
    let vacuums = || vacuums(&client, "rollup_deltas");
    // Read before the folder starts: its first vacuum may otherwise finish
    // while this read waits for a connection, and be counted in it.
    let at_start = vacuums().await;
    let alive = Arc::new(());
    tokio::spawn(run_folder(
        store.pool.clone(),
        Arc::clone(&store.intervals),
        Arc::downgrade(&alive),
        Duration::ZERO,
    ));
    tokio::time::sleep(FOLD_PERIOD * 5 / 2).await;
    let before = vacuums().await;
    assert_eq!(before, at_start + 1, "one vacuum at the start");
    tokio::time::sleep(FOLD_PERIOD * 5 / 2).await;
    assert_eq!(vacuums().await, before, "nothing folded, nothing vacuumed");
    let now = crate::model::event::now_ms();
    commit(&store, vec![order(now, 1.0), order(now + 1, 2.0)]).await;
    let deltas = "SELECT COUNT(*) FROM {schema}.rollup_deltas";
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while schema.count(deltas).await > 0 || vacuums().await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the deltas were not folded and vacuumed within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(alive);
}

/// The pipeline on PostgreSQL: two full batches commit side by side on two
/// connections, while a lone event waits for a commit to finish rather than
/// start a third (small groups grow instead). Shown by holding a lock that
/// every commit's first statement needs and counting who waits for it.
#[tokio::test]
async fn full_batches_commit_side_by_side_and_lone_events_wait() {
    use crate::pipeline::{Pipeline, PipelineSettings};
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(schema.open().await);
    let (pipeline, committer) = Pipeline::start(
        Arc::clone(&store),
        PipelineSettings {
            batch_size: 50,
            commits_in_flight: 2,
            buffer_size: 1_000,
            intervals: INTERVALS.to_vec(),
            trading: false,
            on_commit: None,
        },
        Arc::new(crate::telemetry::Telemetry::new()),
    );
    let (locker, driver) = schema.connection.connect(NoTls).await.expect("connect");
    tokio::spawn(driver);
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {}.event_ids IN SHARE MODE",
            schema.name
        ))
        .await
        .expect("lock");
    let waiting = "SELECT COUNT(*) FROM pg_locks
                   WHERE relation = '{schema}.event_ids'::regclass AND NOT granted";
    let waiters = |expected: i64| {
        let schema = &schema;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let now = schema.count(waiting).await;
                if now == expected || std::time::Instant::now() > deadline {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let now = crate::model::event::now_ms();
    let submit = |events: Vec<Event>| {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.submit(events).await })
    };
    let full = |offset: i64| -> Vec<Event> {
        (0..50)
            .map(|index| order(now - 60_000 + offset + index, 1.0))
            .collect()
    };
    let first = submit(full(0));
    assert_eq!(waiters(1).await, 1, "the first batch commits");
    let second = submit(full(100));
    assert_eq!(waiters(2).await, 2, "a second full batch commits beside it");
    let lone = submit(vec![order(now - 30_000, 1.0)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        schema.count(waiting).await,
        2,
        "a lone event does not start a commit beside running ones"
    );
    locker.batch_execute("COMMIT").await.expect("unlock");
    for task in [first, second, lone] {
        let inserted = task.await.expect("task").expect("committed");
        assert!(inserted.iter().all(|new| *new));
    }
    assert_eq!(
        schema.count("SELECT COUNT(*) FROM {schema}.events").await,
        101
    );
    drop(pipeline);
    committer
        .await
        .expect("committer stops once the handles are gone");
}

/// Large batches register their ids with a `COPY` first; when one is
/// already stored, or repeated within the batch, the batch falls back to
/// registering only the new ones: the flags, rows and rollups count each
/// event once.
#[tokio::test]
async fn a_large_batch_with_stored_or_repeated_ids_stores_only_the_new_ones() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let minute = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    let size = LARGE_BATCH_MIN + 10;
    let events: Vec<Event> = (0..size)
        .map(|index| order(minute + index as i64, 1.0))
        .collect();
    // All new: the `COPY`.
    assert!(
        commit(&store, events[..size - 10].to_vec())
            .await
            .iter()
            .all(|new| *new)
    );
    // The same batch and ten more: only the ten are new.
    let inserted = commit(&store, events.clone()).await;
    assert_eq!(inserted.iter().filter(|new| **new).count(), 10);
    assert!(inserted[size - 10..].iter().all(|new| *new));
    // New events, one of them twice: counted at its first occurrence.
    let mut repeated: Vec<Event> = (0..size)
        .map(|index| order(minute + 30_000 + index as i64, 1.0))
        .collect();
    repeated.push(repeated[3].clone());
    let inserted = commit(&store, repeated).await;
    assert_eq!(inserted.iter().filter(|new| **new).count(), size);
    assert!(!inserted[size], "the repeat is not new");
    let stored = 2 * size as i64;
    assert_eq!(
        schema.count("SELECT COUNT(*) FROM {schema}.events").await,
        stored
    );
    assert_eq!(
        schema
            .count("SELECT COUNT(*) FROM {schema}.event_ids")
            .await,
        stored
    );
    assert_eq!(counted(&store, Interval::M1).await, stored as u64);
    assert_eq!(counted(&store, Interval::D1).await, stored as u64);
}

/// A `market.data.update` of BTCUSDT with this mid, at `timestamp_ms`.
fn quote(timestamp_ms: i64, mid: f64) -> Event {
    let properties = serde_json::json!({"symbol": "BTCUSDT", "bid": mid - 0.5, "ask": mid + 0.5});
    Event {
        id: Uuid::now_v7(),
        event_type: "market.data.update".into(),
        user_id: None,
        session_id: None,
        properties: properties.as_object().cloned().expect("an object").into(),
        timestamp_ms,
        created_at_ms: timestamp_ms,
    }
}

/// A fresh batch's quotes go in with a `COPY`. A quote stored already
/// (which ingest never leaves behind, but a trading rebuild racing it
/// could) makes the batch fall back to the insert that keeps the stored
/// row, and the batch commits.
#[tokio::test]
async fn a_fresh_batch_whose_quote_is_stored_already_still_commits() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let start = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    let batch = |from: usize| -> Vec<Event> {
        (from..from + QUOTE_COPY_MIN + 10)
            .map(|index| quote(start + index as i64 * 10, 100.0 + index as f64))
            .collect()
    };
    let first = batch(0);
    assert!(commit(&store, first.clone()).await.iter().all(|new| *new));
    let quotes = "SELECT COUNT(*) FROM {schema}.market_quotes";
    assert_eq!(schema.count(quotes).await, first.len() as i64);

    let second = batch(first.len());
    let taken = &second[5];
    schema
        .count(&format!(
            "WITH stored AS (INSERT INTO {{schema}}.market_quotes (symbol, ts, event_id, mid)
                 VALUES ('BTCUSDT', {}, '{}', -1) RETURNING 1)
             SELECT COUNT(*) FROM stored",
            taken.timestamp_ms, taken.id
        ))
        .await;
    assert!(commit(&store, second.clone()).await.iter().all(|new| *new));
    assert_eq!(
        schema.count(quotes).await,
        (first.len() + second.len()) as i64
    );
    assert_eq!(
        schema
            .count(&format!(
                "SELECT COUNT(*) FROM {{schema}}.market_quotes WHERE event_id = '{}' AND mid = -1",
                taken.id
            ))
            .await,
        1,
        "the stored quote stays as it was"
    );
    assert_eq!(
        schema.count("SELECT COUNT(*) FROM {schema}.events").await,
        (first.len() + second.len()) as i64
    );
}
