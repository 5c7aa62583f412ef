//! Store-level tests of the SQLite backend's write path.

use std::time::Duration;

use serde_json::Map;
use uuid::Uuid;

use super::*;
use crate::model::metric::ORDERS_LATENCY_MS;
use crate::rollup::Interval;

fn order(timestamp_ms: i64, latency_ms: f64) -> Event {
    let mut properties = Map::new();
    properties.insert("latency_ms".into(), serde_json::json!(latency_ms));
    Event {
        id: Uuid::now_v7(),
        event_type: "order.placed".into(),
        user_id: None,
        session_id: None,
        properties: properties.into(),
        timestamp_ms,
        created_at_ms: timestamp_ms,
    }
}

async fn latency_row(store: &SqliteStore, minute: i64) -> Accumulator {
    let rows = store
        .read_rollups(
            ORDERS_LATENCY_MS,
            Some(""),
            Interval::M1,
            minute,
            minute + 1,
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    rows.into_iter().next().unwrap().accumulator
}

#[tokio::test]
async fn cached_rows_are_dropped_when_another_connection_writes() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("cache.db");
    let store = SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap();
    let minute = 1_759_492_800_000;
    let commit =
        |events: Vec<Event>| store.commit_batch(PreparedBatch::prepare(events, &[Interval::M1]));
    commit(vec![order(minute + 1, 10.0)]).await.unwrap();
    assert_eq!(latency_row(&store, minute).await.count(), 1);
    store.fold_pending().await.unwrap();
    // Another connection changes the stored row behind the writer's back.
    let other = Connection::open(&path).unwrap();
    other
        .execute(
            "UPDATE rollups SET count = 5, sum = 50 WHERE metric = ?1 AND interval = '1m'",
            params![ORDERS_LATENCY_MS],
        )
        .unwrap();
    commit(vec![order(minute + 2, 20.0)]).await.unwrap();
    store.fold_pending().await.unwrap();
    let row = latency_row(&store, minute).await;
    assert_eq!(
        row.count(),
        6,
        "merged into the row as stored, not the cached copy"
    );
    assert_eq!(row.sum(), Some(70.0));
}

#[tokio::test]
async fn repeated_commits_to_one_bucket_accumulate_exactly() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &directory.path().join("a.db"),
        Synchronous::Full,
        &Interval::ALL,
    )
    .unwrap();
    let minute = 1_759_492_800_000;
    let mut expected_sum = 0.0;
    for round in 0..50 {
        let events: Vec<Event> = (0..10)
            .map(|index| order(minute + round * 100 + index, (round * 10 + index) as f64))
            .collect();
        expected_sum += events
            .iter()
            .map(|event| event.number("latency_ms").unwrap())
            .sum::<f64>();
        store
            .commit_batch(PreparedBatch::prepare(events, &Interval::ALL))
            .await
            .unwrap();
        store.sync().await.unwrap();
    }
    let row = latency_row(&store, minute).await;
    assert_eq!(row.count(), 500);
    assert_eq!(row.sum(), Some(expected_sum));
    assert_eq!((row.min(), row.max()), (Some(0.0), Some(499.0)));
    let day = store
        .read_rollups(ORDERS_LATENCY_MS, Some(""), Interval::D1, 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(day[0].accumulator.count(), 500);
}

#[tokio::test]
async fn a_distinct_value_deleted_under_the_writer_is_inserted_again() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("distinct.db");
    let store = SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap();
    let minute = 1_700_000_040_000;
    let by = |user: &str| {
        let mut event = order(minute + 1_000, 1.0);
        event.user_id = Some(user.to_owned());
        event
    };
    let commit =
        |event: Event| store.commit_batch(PreparedBatch::prepare(vec![event], &[Interval::M1]));
    let users = || store.count_distinct("user_id", minute, minute + 60_000);
    commit(by("u1")).await.unwrap();
    assert_eq!(users().await.unwrap(), 1);
    // Another connection deletes the row: the writer must not take it for
    // stored any more.
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM distinct_values", [])
        .unwrap();
    assert_eq!(users().await.unwrap(), 0);
    commit(by("u1")).await.unwrap();
    assert_eq!(
        users().await.unwrap(),
        1,
        "inserted again after another connection's delete"
    );
    // So does the writer's own retention, then a late event of that minute.
    let cutoffs = RetentionCutoffs {
        events_before_ms: minute + 60_000,
        rollups_before_ms: Vec::new(),
    };
    store.delete_expired(&cutoffs).await.unwrap();
    assert_eq!(users().await.unwrap(), 0);
    commit(by("u1")).await.unwrap();
    assert_eq!(users().await.unwrap(), 1, "inserted again after retention");
    // A value stored and known is not inserted twice.
    commit(by("u1")).await.unwrap();
    commit(by("u2")).await.unwrap();
    assert_eq!(users().await.unwrap(), 2);
}

#[tokio::test]
async fn retention_deletes_in_chunks_and_only_what_expired() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &directory.path().join("r.db"),
        Synchronous::Normal,
        &[Interval::M1, Interval::D1],
    )
    .unwrap();
    let day = 86_400_000;
    let start = 1_700_000_000_000 - 1_700_000_000_000 % day;
    // 12 000 events spread over 4 days (more than two deletion chunks per day).
    let events: Vec<Event> = (0..12_000)
        .map(|index| order(start + index * (4 * day / 12_000), 1.0))
        .collect();
    let mut with_users = events;
    for (index, event) in with_users.iter_mut().enumerate() {
        event.user_id = Some(format!("user{}", index % 7));
    }
    store
        .commit_batch(PreparedBatch::prepare(
            with_users,
            &[Interval::M1, Interval::D1],
        ))
        .await
        .unwrap();
    let cutoffs = RetentionCutoffs {
        events_before_ms: start + 2 * day,
        rollups_before_ms: vec![(Interval::M1, start + 3 * day), (Interval::D1, start + day)],
    };
    let report = store.delete_expired(&cutoffs).await.unwrap();
    assert_eq!(report.events_deleted, 6_000);
    assert_eq!(
        store.scan_events(0, i64::MAX, false).await.unwrap().len(),
        6_000
    );
    let minute_rows = store
        .read_rollups(ORDERS_LATENCY_MS, None, Interval::M1, 0, i64::MAX)
        .await
        .unwrap();
    assert!(
        minute_rows
            .iter()
            .all(|row| row.bucket_start_ms >= start + 3 * day)
    );
    let daily = store
        .read_rollups(ORDERS_LATENCY_MS, None, Interval::D1, 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(daily.len(), 3, "days 2, 3 and 4 stay");
    assert_eq!(
        store
            .count_distinct("user_id", 0, start + 2 * day)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .count_distinct("user_id", start + 2 * day, i64::MAX)
            .await
            .unwrap(),
        7
    );
    // A second run finds nothing more.
    assert_eq!(
        store.delete_expired(&cutoffs).await.unwrap(),
        RetentionReport::default()
    );
}

#[tokio::test]
async fn dead_letters_are_stored_once_listed_and_deleted() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("dead.db");
    let store = SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap();
    crate::store::conformance::dead_letters(&store).await;
}

#[tokio::test]
async fn the_wal_is_copied_into_the_database_beside_the_commits() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("checkpoint.db");
    let store = SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap();
    let migrated = std::fs::metadata(&path).unwrap().len();
    let minute = 1_759_492_800_000;
    for batch in 0..5 {
        let events = (0..2_000)
            .map(|index| order(minute + batch * 60_000 + index, index as f64))
            .collect();
        store
            .commit_batch(PreparedBatch::prepare(events, &[Interval::M1]))
            .await
            .unwrap();
    }
    // The writer never checkpoints (wal_autocheckpoint = 0): the database
    // file grows only by the checkpointer's copies.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut size = migrated;
    while size < migrated + 500_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(checkpoint::CHECKPOINT_PERIOD).await;
        size = std::fs::metadata(&path).unwrap().len();
    }
    assert!(
        size >= migrated + 500_000,
        "10 000 events copied into the database: {migrated} -> {size} bytes"
    );
}

#[test]
fn a_long_wal_is_started_over() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("restart.db");
    let writer = Connection::open(&path).unwrap();
    writer.pragma_update(None, "journal_mode", "WAL").unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    writer
        .execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(100000))")
        .unwrap();
    let checkpointer = Connection::open(&path).unwrap();
    let round = checkpoint::checkpoint(&checkpointer, 1_000).unwrap();
    assert!(round.frames > 20 && !round.restarted, "{round:?}");
    let round = checkpoint::checkpoint(&checkpointer, 20).unwrap();
    assert!(round.restarted, "{round:?}");
    // The next write starts the WAL over instead of appending to it.
    writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let round = checkpoint::checkpoint(&checkpointer, 1_000).unwrap();
    assert!(round.frames < 5, "{round:?}");
}

fn rows_of(path: &std::path::Path, sql: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

const DELTA_ROWS: &str = "SELECT COUNT(*) FROM rollup_deltas";
const LATENCY_ROWS: &str =
    "SELECT COUNT(*) FROM rollups WHERE metric = 'orders.latency_ms' AND interval = '1m'";

#[tokio::test]
async fn small_commits_are_read_the_same_before_and_after_their_fold() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("deltas.db");
    let store = SqliteStore::open_with(&path, Synchronous::Normal, &Interval::ALL, Folding::Manual)
        .unwrap();
    let minute = 1_759_492_800_000;
    for round in 0..3 {
        let events = (0..4)
            .map(|index| order(minute + round * 10 + index, (round * 4 + index) as f64))
            .collect();
        store
            .commit_batch(PreparedBatch::prepare(events, &Interval::ALL))
            .await
            .unwrap();
    }
    // Deferred: delta rows stored, no rollup row written yet.
    assert!(rows_of(&path, DELTA_ROWS) > 0);
    assert_eq!(rows_of(&path, LATENCY_ROWS), 0);
    let store = &store;
    let read = |interval| super::super::conformance::latency_figures(store, interval, 0);
    let expected = (12, Some(66.0), Some(0.0), Some(11.0));
    let before: Vec<_> = futures_util::future::join_all(Interval::ALL.map(read)).await;
    for figures in &before {
        assert_eq!((figures.0, figures.1, figures.2, figures.3), expected);
    }
    let filter = MetricFilter::new(ORDERS_LATENCY_MS, Some(""));
    let bucket = store
        .read_bucket_if_covered(
            std::slice::from_ref(&filter),
            Interval::M1,
            minute,
            minute,
            minute + 60_000,
        )
        .await
        .unwrap()
        .expect("every event lies in the covered part");
    assert_eq!(bucket[0][0].accumulator.count(), 12);

    store.fold_pending().await.unwrap();
    assert_eq!(rows_of(&path, DELTA_ROWS), 0);
    assert_eq!(rows_of(&path, LATENCY_ROWS), 1);
    let after: Vec<_> = futures_util::future::join_all(Interval::ALL.map(read)).await;
    assert_eq!(before, after, "folding changes no answer");
    let bucket = store
        .read_bucket_if_covered(&[filter], Interval::M1, minute, minute, minute + 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bucket[0][0].accumulator.count(), 12);
}

#[tokio::test]
async fn deltas_left_unfolded_are_folded_once_by_the_next_instance_and_only_when_theirs_stopped() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("recover.db");
    let open = || {
        SqliteStore::open_with(&path, Synchronous::Normal, &Interval::ALL, Folding::Manual).unwrap()
    };
    let minute = 1_759_492_800_000;
    let first = open();
    let events = (0..5)
        .map(|index| order(minute + index, index as f64))
        .collect();
    first
        .commit_batch(PreparedBatch::prepare(events, &Interval::ALL))
        .await
        .unwrap();
    let deltas = rows_of(&path, DELTA_ROWS);
    assert!(deltas > 0);
    // A second instance while the first runs leaves its deltas alone.
    let second = open();
    assert_eq!(rows_of(&path, DELTA_ROWS), deltas);
    assert_eq!(rows_of(&path, LATENCY_ROWS), 0);
    // The first stops without folding (as a killed process would).
    drop(first);
    drop(second);
    let third = open();
    assert_eq!(rows_of(&path, DELTA_ROWS), 0);
    assert_eq!(latency_row(&third, minute).await.count(), 5);
    drop(third);
    let fourth = open();
    assert_eq!(
        latency_row(&fourth, minute).await.count(),
        5,
        "folded exactly once"
    );
    let owners = std::fs::read_dir(directory.path())
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("-owner-")
        })
        .count();
    assert_eq!(owners, 1, "only the running instance's owner file is left");
}

#[tokio::test]
async fn retention_deletes_expired_buckets_still_pending() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("expire.db");
    let store =
        SqliteStore::open_with(&path, Synchronous::Normal, &[Interval::M1], Folding::Manual)
            .unwrap();
    let minute = 1_759_492_800_000;
    store
        .commit_batch(PreparedBatch::prepare(
            vec![order(minute, 1.0)],
            &[Interval::M1],
        ))
        .await
        .unwrap();
    store
        .delete_expired(&RetentionCutoffs {
            events_before_ms: 0,
            rollups_before_ms: vec![(Interval::M1, minute + 60_000)],
        })
        .await
        .unwrap();
    let rows = store
        .read_rollups(ORDERS_LATENCY_MS, None, Interval::M1, 0, i64::MAX)
        .await
        .unwrap();
    assert!(rows.is_empty(), "{rows:?}");
}

fn fill(timestamp_ms: i64, order_id: &str, quantity: f64) -> Event {
    let properties = serde_json::json!({
        "order_id": order_id, "symbol": "BTCUSDT", "side": "buy",
        "price": 100.0, "quantity": quantity,
    });
    Event {
        id: Uuid::now_v7(),
        event_type: "order.filled".into(),
        user_id: None,
        session_id: None,
        properties: properties.as_object().cloned().unwrap_or_default().into(),
        timestamp_ms,
        created_at_ms: timestamp_ms,
    }
}

/// A report that starts or ends inside a summarised minute takes that
/// minute's fills from the edge cache, and still sees a fill that reaches
/// the minute later (the fill's mark, then the summary's new digest).
#[tokio::test]
async fn a_range_starting_inside_a_summarised_minute_sees_later_fills_of_it() {
    use crate::trading::report::Filters;
    use crate::trading::report::Groups;
    use crate::trading::summary::{execution_report, refresh_all};

    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("edge.db");
    let store = SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap();
    let now = crate::model::event::now_ms();
    let minute = now / 60_000 * 60_000 - 2 * 3_600_000;
    let commit =
        |events: Vec<Event>| store.commit_batch(PreparedBatch::prepare(events, &[Interval::M1]));
    // Starting inside the minute, or (`ending`) ending inside it.
    let reader = &store;
    let report = |ending: bool| async move {
        let range = if ending {
            crate::rollup::TimeRange {
                start_ms: minute - 3_600_000,
                end_ms: minute + 45_000,
            }
        } else {
            crate::rollup::TimeRange {
                start_ms: minute + 20_000,
                end_ms: minute + 3_600_000,
            }
        };
        let report = execution_report(
            reader,
            range,
            Interval::H1,
            &Filters::default(),
            Groups::With,
        )
        .await
        .unwrap();
        (report.summary.fills, report.summary.quantity)
    };
    commit(vec![
        fill(minute + 10_000, "o-1", 1.0),
        fill(minute + 40_000, "o-2", 2.0),
        fill(minute + 30 * 60_000, "o-3", 4.0),
    ])
    .await
    .unwrap();
    refresh_all(&store, 1_000).await.unwrap();
    let left_out = "the fill before the range's start is left out";
    assert_eq!(report(false).await, (2, 6.0), "{left_out}");
    assert_eq!(
        report(false).await,
        (2, 6.0),
        "the same from the kept minute"
    );
    assert_eq!(report(true).await, (2, 3.0), "ending inside the minute");
    commit(vec![
        fill(minute + 50_000, "o-4", 8.0),
        fill(minute + 5_000, "o-5", 16.0),
    ])
    .await
    .unwrap();
    assert_eq!(
        report(false).await,
        (3, 14.0),
        "the marked minute is read raw"
    );
    assert_eq!(
        report(true).await,
        (3, 19.0),
        "the marked minute is read raw"
    );
    refresh_all(&store, 1_000).await.unwrap();
    assert_eq!(
        report(false).await,
        (3, 14.0),
        "summarised again: a new digest"
    );
    assert_eq!(
        report(true).await,
        (3, 19.0),
        "summarised again: a new digest"
    );
}

/// Reader statements are planned once: binding new values does not
/// compile them again (see `plan_once`). Without the guarantee, binding
/// `kind` here (a summary kind, 0 or 1) recompiles the statement, since the
/// planner treats a bound 0 or 1 apart from other values.
#[test]
fn reader_statements_are_planned_once() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("plan.db");
    drop(SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap());
    let reader = open_reader(&path).unwrap();
    let mut statement = reader
        .prepare_cached(
            "SELECT start, digest FROM trading_summaries
             WHERE kind = ?1 AND span_ms = ?2 AND start >= ?3 AND start < ?4 ORDER BY start",
        )
        .unwrap();
    for (kind, span, start) in [
        (0_i64, 60_000_i64, 0_i64),
        (1, 300_000, 60_000),
        (0, 60_000, 0),
    ] {
        let rows = statement
            .query_map(params![kind, span, start, start + 60_000], |_| Ok(()))
            .unwrap()
            .count();
        assert_eq!(rows, 0);
    }
    assert_eq!(
        statement.get_status(rusqlite::StatementStatus::RePrepare),
        0
    );
}

/// An order's row as stored.
const ORDER_AS_STORED: &str =
    "SELECT placed_at, first_fill_at, last_fill_at FROM trading_orders WHERE order_id = ?1";

fn order_change(order_id: &str, placed_at: Option<i64>, fill_at: Option<i64>) -> OrderDelta {
    OrderDelta {
        order_id: order_id.to_owned(),
        symbol: Some("BTCUSDT".into()),
        side: Some("BUY".into()),
        strategy_id: None,
        order_type: None,
        placed_at,
        quantity: placed_at.map(|_| 1.0),
        price: placed_at.map(|_| 100.0),
        latency_ms: None,
        filled_quantity: fill_at.map_or(0.0, |_| 1.0),
        filled_notional: fill_at.map_or(0.0, |_| 100.0),
        fills: i64::from(fill_at.is_some()),
        maker_fills: 0,
        commission: 0.0,
        first_fill_at: fill_at,
        last_fill_at: fill_at,
        canceled_at: None,
        rejected_at: None,
        seen_at: placed_at.or(fill_at).unwrap(),
    }
}

/// Order changes go in by runs, and each adds the spans of the row it left:
/// a new row its own times, a merge the merged row's (the earlier
/// placement kept), whether the merge sits in a multi-row run or in the
/// one-row rest, among placed or unplaced changes.
#[test]
fn order_upserts_in_runs_add_the_spans_of_the_rows_as_merged() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("orders.db");
    drop(SqliteStore::open(&path, Synchronous::Normal, &[Interval::M1]).unwrap());
    let mut connection = Connection::open(&path).unwrap();
    let minute = 60_000;
    let early = 1_000 * minute;
    let late = 2_000 * minute;
    // The spans `write_orders` adds, and those of the rows it left.
    let write = |connection: &mut Connection, orders: &[OrderDelta]| {
        let transaction = connection.transaction().unwrap();
        // Another table's insert first: the connection's last insert rowid
        // is not the orders'.
        transaction
            .execute(
                "INSERT INTO trading_fills (event_id, ts, price, quantity) VALUES (x'00', 1, 1.0, 1.0)",
                [],
            )
            .unwrap();
        let mut spans = MarkSpans::new();
        write_orders(&transaction, orders, &mut spans).unwrap();
        let mut expected = MarkSpans::new();
        for order in orders {
            let (placed_at, first, last): (Option<i64>, Option<i64>, Option<i64>) = transaction
                .query_row(ORDER_AS_STORED, [&order.order_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .unwrap();
            summary::order_spans(order, placed_at, first.zip(last), &mut expected);
        }
        transaction.commit().unwrap();
        (spans, expected)
    };
    // 70 new orders: two full runs and six one-row ones.
    let first: Vec<OrderDelta> = (0..70)
        .map(|index| order_change(&format!("a{index:02}"), Some(early + index * minute), None))
        .collect();
    let (spans, expected) = write(&mut connection, &first);
    assert_eq!(spans, expected);
    assert_eq!(spans.len(), 70);
    // Stored orders placed again at minutes of their own (the merge keeps
    // the earlier placement) and filled, among new orders.
    let mut second: Vec<OrderDelta> = Vec::new();
    for (index, stored) in [3, 40, 69].into_iter().enumerate() {
        let placed_again = late - (index as i64 + 1) * 100 * minute;
        second.push(order_change(
            &format!("a{stored:02}"),
            Some(placed_again),
            None,
        ));
    }
    // New orders sort among the stored ones: each full run holds one merge.
    for index in 0..64 {
        let order_id = format!("a{index:02}-new");
        second.push(order_change(&order_id, Some(late + index * minute), None));
    }
    for stored in [5, 6, 68] {
        second.push(order_change(&format!("a{stored:02}"), None, Some(late)));
    }
    second.push(order_change("c00", None, Some(late + minute)));
    second.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    let (spans, expected) = write(&mut connection, &second);
    assert_eq!(spans, expected);
    let placed: Vec<Option<i64>> = ["a03", "a40", "a69", "a00-new", "c00"]
        .into_iter()
        .map(|order_id| {
            connection
                .query_row(ORDER_AS_STORED, [order_id], |row| row.get(0))
                .unwrap()
        })
        .collect();
    assert_eq!(
        placed,
        vec![
            Some(early + 3 * minute),
            Some(early + 40 * minute),
            Some(early + 69 * minute),
            Some(late),
            None
        ],
        "the earliest placement wins"
    );
}

#[tokio::test]
async fn runs_of_events_with_stored_or_repeated_ids_say_exactly_which_were_new() {
    let directory = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &directory.path().join("ids.db"),
        Synchronous::Normal,
        &[Interval::M1],
    )
    .unwrap();
    let minute = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    let fresh = |count: usize, offset: i64| -> Vec<Event> {
        (0..count)
            .map(|index| order(minute + offset + index as i64, 1.0))
            .collect()
    };
    let commit =
        |events: Vec<Event>| store.commit_batch(PreparedBatch::prepare(events, &[Interval::M1]));
    let stored = fresh(100, 0);
    assert!(commit(stored.clone()).await.unwrap().iter().all(|new| *new));
    // Full runs of new events only, runs with stored ids among new ones, a
    // run of nothing but stored ids, ids repeated inside a run (new and
    // stored ones) and across runs, and a remainder that is not a full run.
    let new = fresh(150, 10_000);
    let mut batch: Vec<Event> = new[..64].to_vec();
    for index in 0..40 {
        batch.push(new[64 + index].clone());
        if index % 7 == 0 {
            batch.push(stored[index].clone());
        }
        if index == 12 {
            // A new id again, in the same run as its first occurrence.
            batch.push(new[64 + 10].clone());
        }
    }
    batch.push(new[70].clone());
    batch.push(stored[3].clone());
    batch.push(stored[3].clone());
    batch.extend(stored[40..72].iter().cloned());
    batch.extend(new[104..150].iter().cloned());
    batch.push(new[0].clone());
    batch.push(new[149].clone());
    let mut seen: std::collections::HashSet<Uuid> = stored.iter().map(|event| event.id).collect();
    let expected: Vec<bool> = batch.iter().map(|event| seen.insert(event.id)).collect();
    assert!(!batch.len().is_multiple_of(ROWS_PER_INSERT) && batch.len() > 4 * ROWS_PER_INSERT);
    let inserted = commit(batch).await.unwrap();
    assert_eq!(inserted, expected);
    let rows = rows_of(
        &directory.path().join("ids.db"),
        "SELECT COUNT(*) FROM events",
    );
    assert_eq!(rows, 250);
}

/// A batch still being prepared when the writer takes it: its events are
/// inserted first and the rest once ready. With stored and repeated ids
/// among them it must end as the same batch prepared beforehand would:
/// the same flags, and rollups of the new events only. A batch prepared
/// for other intervals leaves nothing behind, not even its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_while_being_prepared_ends_as_a_prepared_one() {
    let directory = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        SqliteStore::open(
            &directory.path().join(name),
            Synchronous::Normal,
            &Interval::ALL,
        )
        .unwrap()
    };
    let (prepared_store, preparing_store) = (open("prepared.db"), open("preparing.db"));
    let minute = Interval::M1.bucket_start(crate::model::event::now_ms()) - 3_600_000;
    let stored: Vec<Event> = (0..50)
        .map(|index| order(minute + index, index as f64))
        .collect();
    let mut batch: Vec<Event> = (0..200)
        .map(|index| order(minute + 1_000 + index, (index % 13) as f64))
        .collect();
    batch.extend(stored[10..20].iter().cloned());
    batch.push(batch[5].clone());
    for store in [&prepared_store, &preparing_store] {
        let first = PreparedBatch::prepare(stored.clone(), &Interval::ALL);
        assert!(
            store
                .commit_batch(first)
                .await
                .unwrap()
                .iter()
                .all(|new| *new)
        );
    }

    let wrong = PreparingBatch::start(batch.clone(), [Interval::M1].into(), true);
    assert!(matches!(
        preparing_store.commit_preparing(wrong).await,
        Err(StoreError::Corrupt(_))
    ));
    let events = |path: &str| rows_of(&directory.path().join(path), "SELECT COUNT(*) FROM events");
    assert_eq!(events("preparing.db"), 50);

    let by_prepared = prepared_store
        .commit_batch(PreparedBatch::prepare(batch.clone(), &Interval::ALL))
        .await
        .unwrap();
    let by_preparing = preparing_store
        .commit_preparing(PreparingBatch::start(batch, Interval::ALL.into(), true))
        .await
        .unwrap();
    assert_eq!(by_preparing, by_prepared);
    assert_eq!(by_preparing.iter().filter(|new| **new).count(), 200);
    assert_eq!(events("preparing.db"), 250);
    let mut latency = Vec::new();
    for store in [&prepared_store, &preparing_store] {
        store.fold_pending().await.unwrap();
        let row = latency_row(store, minute).await;
        latency.push((row.count(), row.sum()));
    }
    assert_eq!(latency[0], latency[1]);
    let expected_sum = (0..50).sum::<i64>() + (0..200).map(|index| index % 13).sum::<i64>();
    assert_eq!(latency[0], (250, Some(expected_sum as f64)));
}
