-- Rollup deltas of small commits at the finest interval, not yet folded
-- into `rollups` (see src/store/pending.rs). Each row belongs to the store
-- instance (`owner`) that holds it in memory; a fold deletes its owner's
-- rows in the transaction that merges them into `rollups`, and the rows of
-- an instance that stopped without folding are folded by the next one to
-- open the database.
CREATE TABLE rollup_deltas (
    seq INTEGER PRIMARY KEY,
    owner INTEGER NOT NULL,
    metric TEXT NOT NULL,
    bucket_start INTEGER NOT NULL,
    dimensions TEXT NOT NULL,
    count INTEGER NOT NULL,
    sum REAL,
    min REAL,
    max REAL,
    sketch BLOB
);
CREATE INDEX rollup_deltas_owner ON rollup_deltas (owner);
