-- Trading analytics (GET /api/v1/trading/*), written in the same transaction
-- as the events they come from, from newly inserted events only, so a
-- redelivered event changes nothing here either. Every update is a merge
-- that does not depend on arrival order (sums, minima, maxima, "first
-- known"), so out-of-order and late events give the same rows.

-- One row per order_id: what its placed, filled, canceled and rejected
-- events say so far.
CREATE TABLE trading_orders (
    order_id        TEXT PRIMARY KEY,
    symbol          TEXT,
    side            TEXT,
    strategy_id     TEXT,
    order_type      TEXT,
    placed_at       INTEGER,               -- epoch ms of order.placed; NULL until it arrives
    quantity        REAL,                  -- ordered quantity (order.placed)
    price           REAL,
    latency_ms      REAL,                  -- placement latency (order.placed)
    filled_quantity REAL    NOT NULL DEFAULT 0,
    filled_notional REAL    NOT NULL DEFAULT 0,
    fills           INTEGER NOT NULL DEFAULT 0,
    maker_fills     INTEGER NOT NULL DEFAULT 0,
    commission      REAL    NOT NULL DEFAULT 0,
    first_fill_at   INTEGER,
    last_fill_at    INTEGER,
    canceled_at     INTEGER,
    rejected_at     INTEGER,
    seen_at         INTEGER NOT NULL        -- earliest event time of the order (retention)
);
CREATE INDEX trading_orders_placed ON trading_orders (placed_at);
-- Retention of orders whose placement never arrived.
CREATE INDEX trading_orders_unplaced ON trading_orders (seen_at) WHERE placed_at IS NULL;

-- One row per order.filled event (no key: only newly inserted events get
-- here, and nothing looks a fill up by its id).
CREATE TABLE trading_fills (
    event_id    BLOB    NOT NULL,   -- unique already: only newly inserted events get here
    order_id    TEXT,
    symbol      TEXT,
    side        TEXT,
    strategy_id TEXT,
    ts          INTEGER NOT NULL,
    price       REAL    NOT NULL,
    quantity    REAL    NOT NULL,
    is_maker    INTEGER,
    commission  REAL
);
CREATE INDEX trading_fills_ts ON trading_fills (ts);

-- Mid prices of market.data.update events: the mid in force at a fill is the
-- latest one at or before it.
CREATE TABLE market_quotes (
    symbol   TEXT    NOT NULL,
    ts       INTEGER NOT NULL,
    event_id TEXT    NOT NULL,
    mid      REAL    NOT NULL,
    PRIMARY KEY (symbol, ts, event_id)
) WITHOUT ROWID;

-- One-minute bars per symbol and source ('market' from market.data.update,
-- 'fill' from order.filled). Open and close are the prices of the first and
-- last update by (time, event id), so a late tick lands where it belongs.
CREATE TABLE market_bars (
    symbol       TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    minute       INTEGER NOT NULL,         -- bucket start, epoch ms
    open_ts      INTEGER NOT NULL,
    open_id      TEXT    NOT NULL,
    open         REAL    NOT NULL,
    close_ts     INTEGER NOT NULL,
    close_id     TEXT    NOT NULL,
    close        REAL    NOT NULL,
    high         REAL    NOT NULL,
    low          REAL    NOT NULL,
    volume       REAL    NOT NULL,
    updates      INTEGER NOT NULL,
    spread_sum   REAL    NOT NULL,
    spread_count INTEGER NOT NULL,
    PRIMARY KEY (symbol, source, minute)
) WITHOUT ROWID;
