#!/usr/bin/env python3
"""NDJSON from `analytics loadgen --target ndjson` -> two COPY text files
for the raw PostgreSQL COPY baseline of scripts/bench.sh.

Usage: pg_ndjson_to_tsv.py EVENTS.ndjson EVENTS.tsv EVENT_IDS.tsv

EVENTS.tsv has the columns the service writes into `events`
(id, ts, event_type, user_id, session_id, properties, created_at), in COPY
text format (\\N for NULL; tab, newline, carriage return and backslash
escaped). EVENT_IDS.tsv has (id, ts) for the `event_ids` registry. Events
without an `id` get a time-ordered UUIDv7 (as the service assigns one), so
both sides insert ids of the same shape. Runs outside the timed region.
"""
import json
import os
import sys
import uuid
from datetime import datetime


def uuid7(timestamp_ms):
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (timestamp_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (random_bits >> 68) << 64  # 12 bits rand_a
    value |= 0b10 << 62
    value |= random_bits & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def timestamp_ms(text):
    if isinstance(text, (int, float)):
        return int(text)
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def copy_text(value):
    if value is None:
        return "\\N"
    return (
        value.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def main():
    source, events_path, ids_path = sys.argv[1:4]
    with open(source, encoding="utf-8") as lines, open(
        events_path, "w", encoding="utf-8"
    ) as events, open(ids_path, "w", encoding="utf-8") as ids:
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            ts = timestamp_ms(event["timestamp"])
            event_id = event.get("id") or uuid7(ts)
            properties = json.dumps(
                event.get("properties") or {}, separators=(",", ":")
            )
            events.write(
                "\t".join(
                    [
                        event_id,
                        str(ts),
                        copy_text(event["event_type"]),
                        copy_text(event.get("user_id")),
                        copy_text(event.get("session_id")),
                        copy_text(properties),
                        str(ts),
                    ]
                )
                + "\n"
            )
            ids.write(f"{event_id}\t{ts}\n")


if __name__ == "__main__":
    main()
