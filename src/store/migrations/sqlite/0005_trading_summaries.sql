-- Per-minute and per-hour summaries of the orders (kind 0, by placement)
-- and execution (kind 1, by fill time) reports, per symbol, strategy and
-- side, recomputed from the trading tables by the refresher from the marks
-- that commits leave (src/trading/summary.rs).
CREATE TABLE trading_summaries (
    kind   INTEGER NOT NULL,
    hourly INTEGER NOT NULL,           -- 0: a minute, 1: an hour
    start  INTEGER NOT NULL,           -- epoch ms
    body   BLOB    NOT NULL,           -- encode_slice
    PRIMARY KEY (kind, hourly, start)
) WITHOUT ROWID;

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
