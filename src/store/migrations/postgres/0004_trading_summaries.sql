-- Per-minute, five-minute, fifteen-minute and hour summaries of the orders (kind 0, by placement)
-- and execution (kind 1, by fill time) reports, per symbol, strategy and
-- side, recomputed from the trading tables by the refresher from the marks
-- that commits leave (src/trading/summary.rs).
CREATE TABLE trading_summaries (
    kind   SMALLINT NOT NULL,
    span_ms BIGINT  NOT NULL,          -- the block: 60000, 300000, 900000 or 3600000
    start  BIGINT   NOT NULL,          -- epoch ms
    digest  BYTEA   NOT NULL,          -- SHA-256 of coarse, first 16 bytes (what caches compare)
    coarse  BYTEA   NOT NULL,          -- encode_slice: the tallies per symbol, strategy, side (read first)
    fine    BYTEA   NOT NULL,          -- encode_slice: the tallies per symbol x strategy x side
    PRIMARY KEY (kind, span_ms, start)
);

-- Minutes whose summaries are out of date, [first_minute, last_minute].
CREATE TABLE trading_marks (
    kind         SMALLINT NOT NULL,
    first_minute BIGINT   NOT NULL,
    last_minute  BIGINT   NOT NULL,
    version      BIGINT   NOT NULL DEFAULT 1,
    PRIMARY KEY (kind, first_minute, last_minute)
);

-- What was stored before this migration is summarised by the refresher.
INSERT INTO trading_marks (kind, first_minute, last_minute)
    SELECT 0, MIN(placed_at) / 60000 * 60000, MAX(placed_at) / 60000 * 60000
    FROM trading_orders WHERE placed_at IS NOT NULL HAVING COUNT(*) > 0;
INSERT INTO trading_marks (kind, first_minute, last_minute)
    SELECT 1, MIN(ts) / 60000 * 60000, MAX(ts) / 60000 * 60000
    FROM trading_fills HAVING COUNT(*) > 0;
