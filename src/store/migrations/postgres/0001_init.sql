-- PostgreSQL schema, version 1. Runs with search_path set to the configured
-- schema, so every name below lands there.

-- The idempotency registry: one row per stored event id. A partitioned table
-- can only enforce uniqueness on keys that include the partition key, so the
-- global "insert ignores ids already stored" rule lives here, in a plain
-- table; `ts` lets retention delete the ids of dropped days.
CREATE TABLE event_ids (
    id  uuid   PRIMARY KEY,
    ts  bigint NOT NULL
);
CREATE INDEX event_ids_ts ON event_ids (ts);

-- Raw events, range-partitioned by day on the event time (epoch ms UTC).
-- Partitions `events_YYYYMMDD` are created by the store ahead of time and on
-- demand; there is deliberately no DEFAULT partition (it would block
-- creating the partition of a day it already holds rows for). `seq` orders
-- events with equal timestamps by insertion, newest last.
CREATE TABLE events (
    seq         bigserial NOT NULL,
    id          uuid      NOT NULL,
    ts          bigint    NOT NULL,
    event_type  text      NOT NULL,
    user_id     text,
    session_id  text,
    properties  text      NOT NULL,   -- JSON object, as received (no GIN: no query reads it in SQL)
    created_at  bigint    NOT NULL
) PARTITION BY RANGE (ts);
-- Range listing and raw edge scans, all by time; created on every partition.
CREATE INDEX events_ts ON events (ts);

-- Rollups: one row per metric, interval, bucket and dimension value.
-- Count-only metrics leave sum/min/max/sketch NULL.
CREATE TABLE rollups (
    metric        text             NOT NULL,
    interval      text             NOT NULL,  -- 1m 5m 15m 30m 1h 4h 1d
    bucket_start  bigint           NOT NULL,  -- epoch ms, aligned to the interval
    dimensions    text             NOT NULL,
    count         bigint           NOT NULL,
    sum           double precision,
    min           double precision,
    max           double precision,
    sketch        bytea,                      -- DDSketch, binary
    PRIMARY KEY (metric, interval, bucket_start, dimensions)
);

-- Distinct values per minute (active users, active strategies): a set.
CREATE TABLE distinct_values (
    dimension     text   NOT NULL,
    bucket_start  bigint NOT NULL,
    value         text   NOT NULL,
    PRIMARY KEY (dimension, bucket_start, value)
);

CREATE TABLE custom_event_definitions (
    id            uuid    PRIMARY KEY,
    name          text    NOT NULL UNIQUE,
    display_name  text    NOT NULL,
    description   text    NOT NULL,
    schema        text    NOT NULL,           -- JSON Schema
    is_active     boolean NOT NULL,
    created_at    bigint  NOT NULL,
    updated_at    bigint  NOT NULL
);
