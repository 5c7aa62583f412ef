-- Distinct values per minute (active users, active strategies): a set, so a
-- dashboard counts distinct values over a window in O(distinct values), not
-- O(events), and redelivered events add nothing.
CREATE TABLE distinct_values (
    dimension     TEXT    NOT NULL,        -- user_id, strategy_id
    bucket_start  INTEGER NOT NULL,        -- epoch ms, aligned to the minute
    value         TEXT    NOT NULL,
    PRIMARY KEY (dimension, bucket_start, value)
) WITHOUT ROWID;
