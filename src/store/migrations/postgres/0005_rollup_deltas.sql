-- Rollup deltas of small commits at the finest interval, not yet folded
-- into `rollups` (see PostgresStore::fold): readers add them to the rows
-- they read, in the same statement; any instance folds them, moving rows
-- out of this table and into `rollups` in one transaction.
CREATE TABLE rollup_deltas (
    seq bigserial PRIMARY KEY,
    metric text NOT NULL,
    bucket_start bigint NOT NULL,
    dimensions text NOT NULL,
    count bigint NOT NULL,
    sum double precision,
    min double precision,
    max double precision,
    sketch bytea
);
CREATE INDEX rollup_deltas_metric ON rollup_deltas (metric, bucket_start);
