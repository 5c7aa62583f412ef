#!/usr/bin/env bash
# The whole test suite: unit, property and black-box tests (the real service
# on port 0, real child processes for the crash and shutdown tests), first on
# SQLite, then the black-box suite (the `it` binary) again on PostgreSQL.
#
# Tests that need an external server (PostgreSQL, Redis, NATS) print
# SKIPPED loudly when it is unreachable, and fail instead when CI=true.
# PostgreSQL is found through PGHOST, PGPORT, PGUSER, PGDATABASE (defaults
# 127.0.0.1, 5432, postgres, test); each test uses its own schema.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins
cargo test --locked "$@"

pg_host="${PGHOST:-127.0.0.1}"
pg_port="${PGPORT:-5432}"
if (exec 3<>"/dev/tcp/${pg_host}/${pg_port}") 2>/dev/null; then
    echo "== black-box suite on PostgreSQL (${pg_host}:${pg_port}) =="
    # Its child process is pointed at the SQLite file only; it runs on
    # PostgreSQL once it passes `helpers::store_env_for(&database)` too.
    echo "SKIPPED under postgres: retention::retention_run_removes_expired_events_and_keeps_coarse_rollups (child not pointed at the test schema yet)" >&2
    ANALYTICS_TEST_STORE=postgres cargo test --locked --test it "$@" -- \
        --skip retention::retention_run_removes_expired_events_and_keeps_coarse_rollups
elif [ "${CI:-}" = "true" ]; then
    echo "FAILED: PostgreSQL unreachable at ${pg_host}:${pg_port}, and CI=true requires the PostgreSQL run" >&2
    exit 1
else
    echo "*****************************************************************" >&2
    echo "SKIPPED: PostgreSQL unreachable at ${pg_host}:${pg_port}; the black-box suite ran on SQLite only" >&2
    echo "*****************************************************************" >&2
fi
