-- The index on `rollup_deltas.owner` cost every deferring commit an index
-- entry per delta row, and a page or two of the WAL, to speed up statements
-- that run once a second (a fold deleting its owner's rows, nearly all
-- rows of the table) or once every ten seconds (looking for abandoned
-- owners). The table holds at most about a second of deltas, so those
-- read it whole.
DROP INDEX rollup_deltas_owner;
