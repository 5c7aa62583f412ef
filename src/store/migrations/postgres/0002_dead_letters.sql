-- Stream messages that could not become events (not JSON, no event_type, a
-- failed custom schema). One row per message: a redelivered message finds
-- its row and adds nothing. Replayed rows are deleted once their events are
-- stored.
CREATE TABLE dead_letters (
    id                BIGSERIAL PRIMARY KEY,
    source            TEXT     NOT NULL,       -- kafka, nats
    topic             TEXT     NOT NULL,       -- Kafka topic or NATS subject
    message_partition INTEGER  NOT NULL,       -- Kafka partition; -1 for NATS
    message_offset    BIGINT   NOT NULL,       -- Kafka offset or JetStream stream sequence
    message_key       TEXT,
    payload           BYTEA    NOT NULL,       -- at most analytics.ingestion.dead_letter_payload_bytes
    payload_truncated BOOLEAN  NOT NULL,
    event_id          UUID     NOT NULL,       -- the id its event gets when replayed
    error             TEXT     NOT NULL,
    attempts          INTEGER  NOT NULL DEFAULT 0,  -- failed replays
    received_at       BIGINT   NOT NULL,       -- epoch ms
    UNIQUE (source, topic, message_partition, message_offset)
);
