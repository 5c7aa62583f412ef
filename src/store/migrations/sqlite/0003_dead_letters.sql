-- Stream messages that could not become events (not JSON, no event_type, a
-- failed custom schema). One row per message: a redelivered message finds
-- its row and adds nothing. Replayed rows are deleted once their events are
-- stored.
CREATE TABLE dead_letters (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    source            TEXT    NOT NULL,        -- kafka, nats
    topic             TEXT    NOT NULL,        -- Kafka topic or NATS subject
    message_partition INTEGER NOT NULL,        -- Kafka partition; -1 for NATS
    message_offset    INTEGER NOT NULL,        -- Kafka offset or JetStream stream sequence
    message_key       TEXT,
    payload           BLOB    NOT NULL,        -- at most analytics.ingestion.dead_letter_payload_bytes
    payload_truncated INTEGER NOT NULL,
    event_id          BLOB    NOT NULL,        -- the id its event gets when replayed
    error             TEXT    NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,  -- failed replays
    received_at       INTEGER NOT NULL,        -- epoch ms
    UNIQUE (source, topic, message_partition, message_offset)
);
