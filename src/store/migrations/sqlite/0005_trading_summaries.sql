-- Per-minute, five-minute, fifteen-minute and hour summaries of the orders (kind 0, by placement)
-- and execution (kind 1, by fill time) reports, per symbol, strategy and
-- side, recomputed from the trading tables by the refresher from the marks
-- that commits leave (src/trading/summary.rs).
CREATE TABLE trading_summaries (
    kind   INTEGER NOT NULL,
    span_ms INTEGER NOT NULL,          -- the block: 60000, 300000, 900000 or 3600000
    start  INTEGER NOT NULL,           -- epoch ms
    digest  BLOB    NOT NULL,          -- SHA-256 of coarse, first 16 bytes (what caches compare)
    coarse  BLOB    NOT NULL,          -- encode_slice: the tallies per symbol, strategy, side (read first)
    fine    BLOB    NOT NULL,          -- encode_slice: the tallies per symbol x strategy x side
    PRIMARY KEY (kind, span_ms, start)
);  -- a rowid table: the rows are large, and a WITHOUT ROWID table would
    -- copy them into its interior pages

-- Minutes whose summaries are out of date, [first_minute, last_minute].
CREATE TABLE trading_marks (
    kind         INTEGER NOT NULL,
    first_minute INTEGER NOT NULL,
    last_minute  INTEGER NOT NULL,
    version      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (kind, first_minute, last_minute)
) WITHOUT ROWID;

-- What was stored before this migration is summarised by the refresher.
INSERT INTO trading_marks (kind, first_minute, last_minute)
    SELECT 0, MIN(placed_at) / 60000 * 60000, MAX(placed_at) / 60000 * 60000
    FROM trading_orders WHERE placed_at IS NOT NULL HAVING COUNT(*) > 0;
INSERT INTO trading_marks (kind, first_minute, last_minute)
    SELECT 1, MIN(ts) / 60000 * 60000, MAX(ts) / 60000 * 60000
    FROM trading_fills HAVING COUNT(*) > 0;
