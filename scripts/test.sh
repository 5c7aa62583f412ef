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
    ANALYTICS_TEST_STORE=postgres cargo test --locked --test it "$@"
elif [ "${CI:-}" = "true" ]; then
    echo "FAILED: PostgreSQL unreachable at ${pg_host}:${pg_port}, and CI=true requires the PostgreSQL run" >&2
    exit 1
else
    echo "*****************************************************************" >&2
    echo "SKIPPED: PostgreSQL unreachable at ${pg_host}:${pg_port}; the black-box suite ran on SQLite only" >&2
    echo "*****************************************************************" >&2
fi
