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
    placed_at       BIGINT,               -- epoch ms of order.placed; NULL until it arrives
    quantity        DOUBLE PRECISION,                  -- ordered quantity (order.placed)
    price           DOUBLE PRECISION,
    latency_ms      DOUBLE PRECISION,                  -- placement latency (order.placed)
    filled_quantity DOUBLE PRECISION    NOT NULL DEFAULT 0,
    filled_notional DOUBLE PRECISION    NOT NULL DEFAULT 0,
    fills           BIGINT NOT NULL DEFAULT 0,
    maker_fills     BIGINT NOT NULL DEFAULT 0,
    commission      DOUBLE PRECISION    NOT NULL DEFAULT 0,
    first_fill_at   BIGINT,
    last_fill_at    BIGINT,
    canceled_at     BIGINT,
    rejected_at     BIGINT,
    seen_at         BIGINT NOT NULL        -- earliest event time of the order (retention)
);
CREATE INDEX trading_orders_placed ON trading_orders (placed_at);
-- Retention of orders whose placement never arrived.
CREATE INDEX trading_orders_unplaced ON trading_orders (seen_at) WHERE placed_at IS NULL;

-- One row per order.filled event (no key: only newly inserted events get
-- here, and nothing looks a fill up by its id).
CREATE TABLE trading_fills (
    event_id    UUID    NOT NULL,   -- unique already: only newly inserted events get here
    order_id    TEXT,
    symbol      TEXT,
    side        TEXT,
    strategy_id TEXT,
    ts          BIGINT NOT NULL,
    price       DOUBLE PRECISION    NOT NULL,
    quantity    DOUBLE PRECISION    NOT NULL,
    is_maker    BOOLEAN,
    commission  DOUBLE PRECISION
);
CREATE INDEX trading_fills_ts ON trading_fills (ts);

-- Mid prices of market.data.update events: the mid in force at a fill is the
-- latest one at or before it.
CREATE TABLE market_quotes (
    symbol   TEXT    NOT NULL,
    ts       BIGINT NOT NULL,
    event_id TEXT COLLATE "C"    NOT NULL,
    mid      DOUBLE PRECISION    NOT NULL,
    PRIMARY KEY (symbol, ts, event_id)
);

-- One-minute bars per symbol and source ('market' from market.data.update,
-- 'fill' from order.filled). Open and close are the prices of the first and
-- last update by (time, event id; ids compare bytewise), so a late tick lands where it belongs.
CREATE TABLE market_bars (
    symbol       TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    minute       BIGINT NOT NULL,         -- bucket start, epoch ms
    open_ts      BIGINT NOT NULL,
    open_id      TEXT COLLATE "C"    NOT NULL,
    open         DOUBLE PRECISION    NOT NULL,
    close_ts     BIGINT NOT NULL,
    close_id     TEXT COLLATE "C"    NOT NULL,
    close        DOUBLE PRECISION    NOT NULL,
    high         DOUBLE PRECISION    NOT NULL,
    low          DOUBLE PRECISION    NOT NULL,
    volume       DOUBLE PRECISION    NOT NULL,
    updates      BIGINT NOT NULL,
    spread_sum   DOUBLE PRECISION    NOT NULL,
    spread_count BIGINT NOT NULL,
    PRIMARY KEY (symbol, source, minute)
);
