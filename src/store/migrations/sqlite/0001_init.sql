-- Raw events. `seq` (the rowid) follows insertion order, so inserts append to
-- the table's B-tree; `id` is the idempotency key (16-byte UUID).
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          BLOB    NOT NULL UNIQUE,
    ts          INTEGER NOT NULL,          -- event time, epoch ms UTC
    event_type  TEXT    NOT NULL,
    user_id     TEXT,
    session_id  TEXT,
    properties  TEXT    NOT NULL,          -- JSON object
    created_at  INTEGER NOT NULL           -- ingestion time, epoch ms UTC
);
-- Serves range listing, raw edge scans and distinct counts, all by time.
CREATE INDEX events_ts ON events (ts);

-- Rollups: one row per metric, interval, bucket and dimension value.
-- Count-only metrics leave sum/min/max/sketch NULL.
CREATE TABLE rollups (
    metric        TEXT    NOT NULL,
    interval      TEXT    NOT NULL,        -- 1m 5m 15m 30m 1h 4h 1d
    bucket_start  INTEGER NOT NULL,        -- epoch ms, aligned to the interval
    dimensions    TEXT    NOT NULL,
    count         INTEGER NOT NULL,
    sum           REAL,
    min           REAL,
    max           REAL,
    sketch        BLOB,                    -- DDSketch, binary
    PRIMARY KEY (metric, interval, bucket_start, dimensions)
) WITHOUT ROWID;

CREATE TABLE custom_event_definitions (
    id            BLOB    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    display_name  TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    schema        TEXT    NOT NULL,        -- JSON Schema
    is_active     INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
