#!/usr/bin/env bash
# The whole test suite: unit, property and black-box tests (the real service
# on port 0, real child processes for the crash and shutdown tests).
#
# Tests that need an external server (PostgreSQL, Redis, NATS) print
# SKIPPED loudly when it is unreachable, and fail instead when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins
cargo test --locked "$@"
