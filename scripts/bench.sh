#!/usr/bin/env bash
# Benchmarks of B25 Analytics, each figure against a baseline measured in the
# same run on the same machine. Writes the results table into BENCHMARKS.md
# (between the "bench:begin" and "bench:end" markers) and prints it.
#
# Usage: scripts/bench.sh [--large] [--soak SECONDS] [--duration SECONDS]
#                         [--postgres | --no-postgres] [--postgres-only]
#                         [--pg-events N] [--no-build] [--output FILE]
#   --large         also fill the store to 10 000 000 events and measure the
#                   queries there (adds several minutes; on PostgreSQL too)
#   --postgres      run the PostgreSQL scenarios and fail if PostgreSQL does
#                   not answer (default: run them when it answers, else the
#                   rows say "not available (PostgreSQL unreachable)")
#   --no-postgres   skip the PostgreSQL scenarios
#   --postgres-only run only the PostgreSQL scenarios (implies --postgres)
#   --pg-events N   events of the PostgreSQL batch / COPY runs (default 500000)
#   --soak S        length of the sustained-ingest RSS run (default 30; the
#                   issue's figure uses 300)
#   --duration S    length of each single-event / baseline run (default 15)
#   --no-redis      skip the Redis limiter scenario (default: run it when
#                   Redis answers on REDIS_HOST:REDIS_PORT, 127.0.0.1:6379)
#   --sections LIST run only these sections, comma-separated, of: ingest,
#                   queries, redis, postgresql, streams, trading (default all)
#   --no-build      use the existing target/release/analytics
#   --output FILE   write the table into FILE instead of BENCHMARKS.md
#   --ratio-rounds N rounds of the same-run ratios that sit near their
#                   targets (default 3): single-event POST vs GET /health,
#                   PostgreSQL batch ingest vs COPY, Kafka and NATS vs batch
#                   HTTP; each round gives its own ratio and the verdict is
#                   on their median
#   --query-rounds N rounds of the query measurements (default 3); with
#                   --large each round measures the 100 k and the 10 M
#                   store side by side and gives a ratio of its own
#
# Everything runs on loopback, every loop is bounded, and the services the
# script starts are stopped on exit (trap). Needs curl and jq; the PostgreSQL
# scenarios also need psql, pgbench and python3, and a server on loopback
# (PGHOST, PGPORT, PGUSER, PGDATABASE; default 127.0.0.1:5432, postgres,
# test). Each PostgreSQL scenario uses a fresh schema `bench_<pid>_...`,
# dropped on exit (trap).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
BIN="${BIN:-$ROOT/target/release/analytics}" # BIN=... overrides (use with --no-build)
LARGE=0
SOAK=30
DURATION=15
BUILD=1
OUTPUT="$ROOT/BENCHMARKS.md"
POSTGRES=auto
SQLITE=1
PG_EVENTS=500000
SECTIONS=",ingest,queries,redis,postgresql,streams,trading,"
QUERY_ROUNDS=3
RATIO_ROUNDS=3
REDIS=auto
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
PG_HOST="${PGHOST:-127.0.0.1}"
PG_PORT="${PGPORT:-5432}"
PG_USER="${PGUSER:-postgres}"
PG_DATABASE="${PGDATABASE:-test}"

while [ $# -gt 0 ]; do
    case "$1" in
        --large) LARGE=1 ;;
        --soak) SOAK="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --no-redis) REDIS=0 ;;
        --output) OUTPUT="$2"; shift ;;
        --postgres) POSTGRES=1 ;;
        --no-postgres) POSTGRES=0 ;;
        --postgres-only) POSTGRES=1; SQLITE=0 ;;
        --pg-events) PG_EVENTS="$2"; shift ;;
        --sections) SECTIONS=",$2,"; shift ;;
        --query-rounds) QUERY_ROUNDS="$2"; shift ;;
        --ratio-rounds) RATIO_ROUNDS="$2"; shift ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

section() { case "$SECTIONS" in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
section postgresql || POSTGRES=0

for tool in curl jq; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool (apt-get install $tool)" >&2; exit 2; }
done

case "$PG_HOST" in
    127.0.0.1|localhost|::1) ;;
    *) echo "bench.sh runs on loopback only; PGHOST=$PG_HOST is not" >&2; exit 2 ;;
esac
pg_psql() { # psql on the benchmark database, stopping at the first error
    PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DATABASE" "$@"
}
if [ "$POSTGRES" != 0 ]; then
    if command -v psql >/dev/null && command -v pgbench >/dev/null && pg_psql -Atc 'SELECT 1' >/dev/null 2>&1; then
        POSTGRES=1
    elif [ "$POSTGRES" = 1 ]; then
        echo "--postgres: PostgreSQL at $PG_HOST:$PG_PORT (user $PG_USER, database $PG_DATABASE) does not answer, or psql/pgbench is missing" >&2
        exit 2
    else
        echo "PostgreSQL at $PG_HOST:$PG_PORT does not answer: its rows will say not available" >&2
        POSTGRES=unreachable
    fi
fi

if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

WORK="$(mktemp -d /tmp/analytics-bench.XXXXXX)"
SERVICE_PID=""
SAMPLER_PID=""
# Fresh PostgreSQL schemas this run created, dropped on exit.
PG_SCHEMA_PREFIX="bench_$$_$(date +%s)"
PG_SCHEMAS=()

stop_service() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
    fi
    stop_service_process
}
NATS_STREAMS=()
MOCK_PID=""
stop_mock() { # the Kafka mock cluster of the streams section
    if [ -n "$MOCK_PID" ]; then
        kill -TERM "$MOCK_PID" 2>/dev/null || true
        wait "$MOCK_PID" 2>/dev/null || true
        MOCK_PID=""
    fi
}
# Services parked beside the current one (the 100 k store while the 10 M
# store is filled and measured), stopped on exit.
PARKED_PID=""
PARKED_URL=""
park_service() { PARKED_PID="$SERVICE_PID" PARKED_URL="$URL" SERVICE_PID=""; }
stop_parked() {
    if [ -n "$PARKED_PID" ]; then
        local current="$SERVICE_PID"
        SERVICE_PID="$PARKED_PID"
        stop_service_process
        SERVICE_PID="$current" PARKED_PID=""
    fi
}
cleanup() {
    stop_service
    stop_parked
    stop_mock
    for stream in "${NATS_STREAMS[@]}"; do nats_delete_stream "$stream"; done
    for schema in "${PG_SCHEMAS[@]}"; do
        pg_psql -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 ||
            echo "could not drop schema $schema (drop it by hand)" >&2
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }


# pg_new_schema NAME: sets PG_SCHEMA to a fresh schema name of this run and
# registers it for the drop on exit (the store or `migrate` creates it).
pg_new_schema() {
    PG_SCHEMA="${PG_SCHEMA_PREFIX}_$1"
    PG_SCHEMAS+=("$PG_SCHEMA")
}

# write_config NAME [SCHEMA]: config under $WORK/NAME (sets CONFIG); a
# fresh SQLite file, or with SCHEMA the postgres driver on that schema.
write_config() {
    local name="$1" schema="${2:-}" database=""
    if [ -n "$schema" ]; then
        database="database:
  driver: postgres
  host: \"$PG_HOST\"
  port: $PG_PORT
  user: \"$PG_USER\"
  password: \"\"
  database: \"$PG_DATABASE\"
  schema: \"$schema\"
  max_connections: 20"
    fi
    write_service_config "$WORK/$name" "$database"
}

# start_service NAME [SCHEMA]: the service on a fresh store (see write_config).
start_service() {
    local name="$1"
    write_config "$@"
    "$BIN" --config "$CONFIG" serve 2>"$WORK/$name/service.log" &
    SERVICE_PID=$!
    URL="http://127.0.0.1:$API_PORT"
    for _ in $(seq 1 150); do
        if curl -fsS "$URL/health" >/dev/null 2>&1; then
            log "service $name up at $URL (pid $SERVICE_PID)"
            return 0
        fi
        kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/$name/service.log" >&2; echo "service failed to start" >&2; exit 1; }
        sleep 0.2
    done
    echo "service did not become healthy in 30 s" >&2
    exit 1
}

status_kib() { # status_kib FIELD: VmRSS / VmHWM of the service in KiB
    awk -v field="$1:" '$1 == field {print $2}' "/proc/$SERVICE_PID/status"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

loadgen_at() { # loadgen_at URL ARGS...: the load generator against the service at URL
    local url="$1"
    shift
    "$BIN" loadgen --url "$url" --quiet --json "$@" 2>>"$WORK/loadgen.log"
}
loadgen() { loadgen_at "$URL" "$@"; }

ratio() { # ratio VALUE BASELINE -> percent
    awk -v v="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f %%", 100 * v / b; else print "n/a" }'
}
times() { # times VALUE BASELINE -> factor
    awk -v v="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", v / b; else print "n/a" }'
}
verdict() { # verdict CONDITION-TEXT (awk expression on v) VALUE
    awk -v v="$2" "BEGIN { if ($1) print \"met\"; else print \"**missed**\" }"
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# median_of FILE COLUMN -> the median of a column of FILE (one line per round)
median_of() { awk -v c="$2" '{print $c}' "$1" | median; }
# round_percents FILE -> "MEDIAN|R1 / R2 / ...": 100 × column 2 / column 1
# of each round (value over its same-round baseline), and their median.
round_percents() {
    local percents
    percents="$(awk '{if ($1 > 0) printf "%.1f\n", 100 * $2 / $1; else print 0}' "$1")"
    echo "$(median <<<"$percents")|$(paste -sd'/' <<<"$percents" | sed 's|/| / |g')"
}

ROWS="$WORK/rows.md"
: > "$ROWS"
row() { echo "| $1 | $2 | $3 | $4 | $5 | $6 |" >> "$ROWS"; }

# ---------------------------------------------------------------- ingest ---
if [ "$SQLITE" = 1 ] && section ingest; then
    start_service ingest

    # Rounds of both loads, in an order that alternates, so that drift of
    # the shared machine hits both sides alike; one ratio per round.
    : > "$WORK/single.rounds"
    for round in $(seq 1 "$RATIO_ROUNDS"); do
        for load in health single; do
            if [ $((round % 2)) = 0 ]; then load="$([ "$load" = health ] && echo single || echo health)"; fi
            if [ "$load" = health ]; then
                log "round $round/$RATIO_ROUNDS, baseline: GET /health, 64 connections, ${DURATION}s"
                HEALTH="$(loadgen --target get --path /health --concurrency 64 --duration "${DURATION}s")"
            else
                log "round $round/$RATIO_ROUNDS: single-event POST /api/v1/events, 64 connections, ${DURATION}s"
                SINGLE="$(loadgen --target http-single --concurrency 64 --duration "${DURATION}s" --seed 1)"
            fi
        done
        echo "$(jq -r .acknowledged_requests_per_second <<<"$HEALTH") $(jq -r .acknowledged_requests_per_second <<<"$SINGLE")" \
            "$(jq -r .latency_ms.p99 <<<"$SINGLE") $(jq -r '.requests_failed + .transport_errors + .requests_rejected' <<<"$SINGLE")" \
            >> "$WORK/single.rounds"
    done
    HEALTH_RPS="$(median_of "$WORK/single.rounds" 1)"
    SINGLE_RPS="$(median_of "$WORK/single.rounds" 2)"
    SINGLE_P99="$(median_of "$WORK/single.rounds" 3)"
    SINGLE_FAILED="$(awk '{n += $4} END {print n + 0}' "$WORK/single.rounds")"
    IFS='|' read -r SINGLE_PCT SINGLE_PCTS < <(round_percents "$WORK/single.rounds")
    row "single-event POST, 64 connections (events/s acknowledged, median of $RATIO_ROUNDS rounds)" \
        "$(printf %.0f "$SINGLE_RPS") (p99 ${SINGLE_P99} ms, ${SINGLE_FAILED} not acked)" \
        "GET /health same load, same rounds: $(printf %.0f "$HEALTH_RPS") req/s" \
        "$SINGLE_PCT % (rounds: $SINGLE_PCTS)" "≥ 50 %" "$(verdict 'v >= 50' "$SINGLE_PCT")"

    log "batch ingest over HTTP: 500 000 events in 10 000-event batches, 2 connections"
    BATCH="$(loadgen --target http-batch --batch-size 10000 --concurrency 2 --count 500000 --seed 2)"
    BATCH_EPS="$(jq -r '.events_accepted / .elapsed_seconds' <<<"$BATCH")"
    BATCH_FAILED="$(jq -r '.requests_failed + .transport_errors + .requests_rejected' <<<"$BATCH")"
    PEAK_INGEST_KIB="$(status_kib VmHWM)"

    row "batch ingest over HTTP, 10 000-event batches (events/s stored)" \
        "$(printf %.0f "$BATCH_EPS") (${BATCH_FAILED} batches not acked)" "—" "—" "≥ 100 000/s" \
        "$(verdict 'v >= 100000' "$BATCH_EPS")"

    log "time from acknowledged event to visible in /events/stats (20 probes)"
    # Each probe posts an event of a type of its own, then reads the stats until
    # that type shows up. The read count says whether there is any lag beyond
    # the answer time of one stats query (which is reported with it).
    VISIBLE="$WORK/visible.txt"
    : > "$VISIBLE"
    for probe in $(seq 1 20); do
        TYPE="bench.visibility.$probe.$RANDOM"
        curl -fsS -o /dev/null -H 'Content-Type: application/json' \
            -d "{\"event_type\":\"$TYPE\"}" "$URL/api/v1/events"
        ACKED="$(date +%s%N)"
        for reads in $(seq 1 200); do
            if curl -fsS "$URL/api/v1/events/stats" | jq -e --arg t "$TYPE" '.by_type[$t] == 1' >/dev/null; then
                echo "$(( ($(date +%s%N) - ACKED) / 1000 )) $reads" >> "$VISIBLE"
                break
            fi
        done
    done
    VISIBLE_P50="$(sort -n "$VISIBLE" | awk '{a[NR]=$1} END {if (NR) printf "%.1f", a[int((NR+1)/2)]/1000; else print "n/a"}')"
    VISIBLE_MAX="$(sort -n "$VISIBLE" | awk 'END {if (NR) printf "%.1f", $1/1000; else print "n/a"}')"
    VISIBLE_N="$(wc -l < "$VISIBLE")"
    FIRST_READ="$(awk '$2 == 1' "$VISIBLE" | wc -l)"
    row "acknowledged event → visible in /events/stats, store holding the ingest runs' events (ms)" \
        "p50 $VISIBLE_P50, max $VISIBLE_MAX; visible on the first read in $FIRST_READ/20 probes ($VISIBLE_N/20 seen)" \
        "no lag beyond one stats query (commit before ack)" "—" "visible at ack" \
        "$(verdict 'v == 20' "$FIRST_READ")"

    # The ratio to the raw insert in rounds: each a fresh service taking
    # the same number of events over HTTP as the raw insert writes into a
    # fresh file, one right after the other; the verdict is on the median.
    : > "$WORK/batch.rounds"
    for round in $(seq 1 "$RATIO_ROUNDS"); do
        stop_service
        start_service "batch$round"
        log "round $round/$RATIO_ROUNDS: batch ingest over HTTP into a fresh store, 200 000 events, then the raw insert (and the store's commit_batch in process) of 200 000"
        ROUND_BATCH="$(loadgen --target http-batch --batch-size 10000 --concurrency 2 --count 200000 --seed 2 | jq -r '.events_accepted / .elapsed_seconds')"
        BASELINE="$("$BIN" bench-baseline --count 200000 --batch-size 10000 --dir "$WORK/baseline" --json 2>>"$WORK/loadgen.log")"
        # The same with the trading tables off: the pipeline of events and
        # rollups alone (the trading tables have their own target, below).
        stop_service
        export ANALYTICS_ANALYTICS__AGGREGATION__TRADING=false
        start_service "batch-untraded$round"
        unset ANALYTICS_ANALYTICS__AGGREGATION__TRADING
        ROUND_UNTRADED="$(loadgen --target http-batch --batch-size 10000 --concurrency 2 --count 200000 --seed 2 | jq -r '.events_accepted / .elapsed_seconds')"
        echo "$(jq -r .raw_insert_events_per_second <<<"$BASELINE") $ROUND_BATCH $(jq -r .store_commit_events_per_second <<<"$BASELINE") $ROUND_UNTRADED" >> "$WORK/batch.rounds"
    done
    RAW_EPS="$(median_of "$WORK/batch.rounds" 1)"
    IFS='|' read -r BATCH_PCT BATCH_PCTS < <(round_percents "$WORK/batch.rounds")
    awk '{print $1, $3}' "$WORK/batch.rounds" > "$WORK/commit.rounds"
    IFS='|' read -r COMMIT_PCT COMMIT_PCTS < <(round_percents "$WORK/commit.rounds")
    row "batch ingest over HTTP vs raw SQLite insert of the same number of rows, fresh store and file each round (median of $RATIO_ROUNDS rounds)" \
        "$(printf %.0f "$(median_of "$WORK/batch.rounds" 2)") events/s" "raw insert (1 prepared stmt, 10 000/txn): $(printf %.0f "$RAW_EPS") rows/s" \
        "$BATCH_PCT % (rounds: $BATCH_PCTS)" "≥ 70 %" "$(verdict 'v >= 70' "$BATCH_PCT")"
    awk '{print $1, $4}' "$WORK/batch.rounds" > "$WORK/untraded.rounds"
    IFS='|' read -r UNTRADED_PCT UNTRADED_PCTS < <(round_percents "$WORK/untraded.rounds")
    row "the same, trading tables off (\`analytics.aggregation.trading: false\`: events and rollups only), same rounds" \
        "$(printf %.0f "$(median_of "$WORK/batch.rounds" 4)") events/s" "$(printf %.0f "$RAW_EPS") rows/s" \
        "$UNTRADED_PCT % (rounds: $UNTRADED_PCTS)" "(diagnostic)" "—"
    row "store commit_batch (rollups and trading tables included) vs raw insert, in process (median of $RATIO_ROUNDS rounds)" \
        "$(printf %.0f "$(median_of "$WORK/batch.rounds" 3)") events/s" "$(printf %.0f "$RAW_EPS") rows/s" \
        "$COMMIT_PCT % (rounds: $COMMIT_PCTS)" "(diagnostic)" "—"
    stop_service
fi

# --------------------------------------------------------------- queries ---
QUERIES=(
    "stats|/api/v1/events/stats"
    "metrics|/api/v1/metrics?metric_name=orders.latency_ms&interval=1m"
    "dashboard|/api/v1/dashboard/metrics"
    "trading-orders|/api/v1/trading/orders?interval=1h"
    "trading-execution|/api/v1/trading/execution?interval=1h"
    "trading-bars|/api/v1/trading/markets/BTCUSDT/bars?interval=5m"
    "trading-strategies|/api/v1/trading/strategies?interval=1h"
    "trading-strategy|/api/v1/trading/strategies/strat-momentum-00?interval=1h"
)
# measure_queries LABEL URL [LABEL URL] -> writes $WORK/q.LABEL.NAME (p50
# p99 answered) and $WORK/rounds.LABEL.NAME (p50 p99 of each round):
# QUERY_ROUNDS rounds over all the queries (200 requests each after a
# warm-up), the median p50 and p99 of the rounds, so that a burst of load
# from elsewhere on the machine moves one round, not the figure. With two
# services (the 100 k and the 10 M store, both running), each round asks
# every query of both, one right after the other, in an order that
# alternates between rounds: each round then gives a ratio of its own,
# measured under the same load.
measure_queries() {
    local round entry name path count=200 warm=20 result label url i
    local -a labels=() urls=()
    while [ $# -gt 0 ]; do labels+=("$1"); urls+=("$2"); shift 2; done
    for i in "${!labels[@]}"; do
        for entry in "${QUERIES[@]}"; do
            loadgen_at "${urls[$i]}" --target get --path "${entry#*|}" --concurrency 1 --count "$warm" >/dev/null # warm
        done
    done
    for round in $(seq 1 "$QUERY_ROUNDS"); do
        for entry in "${QUERIES[@]}"; do
            name="${entry%%|*}" path="${entry#*|}"
            for i in "${!labels[@]}"; do
                # Odd rounds ask the services in order, even rounds in reverse.
                [ $((round % 2)) = 1 ] || i=$(( ${#labels[@]} - 1 - i ))
                label="${labels[$i]}" url="${urls[$i]}"
                result="$(loadgen_at "$url" --target get --path "$path" --concurrency 1 --count "$count")"
                if [ "$(jq -r .requests_acknowledged <<<"$result")" != "$count" ]; then
                    echo "$path ($label): only $(jq -r .requests_acknowledged <<<"$result") of $count requests answered 2xx; its latency is not that of answers" >&2
                    exit 1
                fi
                jq -r '"\(.latency_ms.p50) \(.latency_ms.p99)"' <<<"$result" >> "$WORK/rounds.$label.$name"
            done
        done
    done
    for label in "${labels[@]}"; do
        for entry in "${QUERIES[@]}"; do
            name="${entry%%|*}"
            echo "$(cut -d' ' -f1 "$WORK/rounds.$label.$name" | median) $(cut -d' ' -f2 "$WORK/rounds.$label.$name" | median) $((count * QUERY_ROUNDS))" > "$WORK/q.$label.$name"
        done
    done
}
# round_ratios SMALL LARGE NAME -> "MEDIAN|R1 / R2 / ...": the p99 ratio
# large / small of each round of a paired measure_queries, and their median.
round_ratios() {
    local ratios
    ratios="$(paste -d' ' "$WORK/rounds.$1.$3" "$WORK/rounds.$2.$3" |
        awk '{ if ($2 > 0) printf "%.2f\n", $4 / $2; else print 99 }')"
    echo "$(median <<<"$ratios")|$(paste -sd'/' <<<"$ratios" | sed 's|/| / |g')"
}
# settle_summaries LABEL: waits until the trading summary refresher has
# caught up with what was ingested (a pass that started after this call found
# no mark), and logs how long that took: the reports are exact either way,
# but cheap only once summarised.
settle_summaries() {
    local metrics="$URL/api/v1/internal/ingestion-metrics" first passes marks started
    started="$(date +%s)"
    first="$(curl -fsS "$metrics" | jq -r .trading_summaries.passes)"
    while :; do
        read -r passes marks < <(curl -fsS "$metrics" | jq -r '"\(.trading_summaries.passes) \(.trading_summaries.marks)"')
        if [ "$passes" -ge $((first + 2)) ] && [ "$marks" = 0 ]; then break; fi
        sleep 1
    done
    log "$1: trading summaries caught up $(( $(date +%s) - started )) s after the fill ($passes passes in all)"
    echo "$(( $(date +%s) - started ))" > "$WORK/settle.$1"
}
fill() { # fill COUNT SEED: backfill spread over the 3 days before now
    loadgen --target http-batch --batch-size 10000 --concurrency 2 --count "$1" --seed "$2" \
        --start now-3d --spread 3d >"$WORK/fill.$2.json"
    jq -r '"filled \(.events_accepted) events at \(.events_per_second | floor) events/s, \(.requests_failed + .transport_errors) failed"' "$WORK/fill.$2.json" >&2
}

if [ "$SQLITE" = 1 ] && section queries; then
    start_service queries
    log "filling 100 000 events over 3 days"
    fill 100000 10
    settle_summaries small
    # The same /metrics query over a fixed past range (cacheable) and ending
    # at "now" (every request resolves another millisecond: never cached).
    CACHE_END_MS="$(( $(date +%s) / 60 * 60000 - 60000 ))"
    CACHE_START_MS="$(( CACHE_END_MS - 86400000 ))"
    CACHED_PATH="/api/v1/metrics?metric_name=orders.latency_ms&interval=1m&start_time=$CACHE_START_MS&end_time=$CACHE_END_MS"
    UNCACHED_PATH="/api/v1/metrics?metric_name=orders.latency_ms&interval=1m&start_time=$CACHE_START_MS"
    loadgen --target get --path "$UNCACHED_PATH" --concurrency 1 --count 20 >/dev/null # warm
    UNCACHED="$(loadgen --target get --path "$UNCACHED_PATH" --concurrency 1 --count 200)"
    loadgen --target get --path "$CACHED_PATH" --concurrency 1 --count 1 >/dev/null # fill the entry
    CACHED="$(loadgen --target get --path "$CACHED_PATH" --concurrency 1 --count 200)"
    row "\`GET /api/v1/metrics\` (orders.latency_ms, 1m, 24 h) p50 / p99, cached, 100 k events (ms)" \
        "$(jq -r '"\(.latency_ms.p50) / \(.latency_ms.p99)"' <<<"$CACHED")" \
        "the same query ending at now (never cached): $(jq -r '"\(.latency_ms.p50) / \(.latency_ms.p99)"' <<<"$UNCACHED")" \
        "p99 $(times "$(jq -r .latency_ms.p99 <<<"$UNCACHED")" "$(jq -r .latency_ms.p99 <<<"$CACHED")") faster" "reported" "—"
    if [ "$LARGE" = 1 ]; then
        # The 100 k store keeps running beside a second store filled with
        # the same 100 k and 9.9 M more, so both are measured in the same
        # rounds.
        park_service
        start_service queries-large
        log "filling a second store with the same 100 000 and 9 900 000 more over the same 3 days (takes minutes)"
        fill 100000 10
        fill 9900000 11
        settle_summaries large
        measure_queries small "$PARKED_URL" large "$URL"
        stop_parked
    else
        measure_queries small "$URL"
    fi
    for entry in "${QUERIES[@]}"; do
        name="${entry%%|*}" path="${entry#*|}"
        read -r S50 S99 _ < "$WORK/q.small.$name"
        if [ "$LARGE" = 1 ]; then
            read -r L50 L99 _ < "$WORK/q.large.$name"
            IFS='|' read -r RATIO RATIOS < <(round_ratios small large "$name")
            row "\`GET $path\` p50 / p99 at 10 M events (ms, median of $QUERY_ROUNDS rounds)" "$L50 / $L99" "at 100 k events, same rounds: $S50 / $S99" \
                "p50 $(times "$L50" "$S50"); p99 ${RATIO}× (median of the rounds' ratios: $RATIOS)" "p99 ≤ 2×" \
                "$(verdict 'v <= 2' "$RATIO")"
        else
            row "\`GET $path\` p50 / p99 at 100 k events (ms)" "$S50 / $S99" "10 M step not run (--large)" "—" "p99 ≤ 2× at 10 M" "not measured"
        fi
    done

    log "sustained ingest for ${SOAK}s at 20 000 events/s (1 000-event batches), sampling RSS"
    RSS_START_KIB="$(status_kib VmRSS)"
    SAMPLES="$WORK/rss.txt"
    ( while kill -0 "$SERVICE_PID" 2>/dev/null; do awk '$1=="VmRSS:"{print $2}' "/proc/$SERVICE_PID/status" >> "$SAMPLES"; sleep 5; done ) &
    SAMPLER_PID=$!
    SOAK_RESULT="$(loadgen --target http-batch --batch-size 1000 --rate 20 --concurrency 4 --duration "${SOAK}s" --seed 12)"
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    RSS_END_KIB="$(status_kib VmRSS)"
    RSS_PEAK_KIB="$(status_kib VmHWM)"
    SOAK_EPS="$(jq -r '.events_accepted / .elapsed_seconds' <<<"$SOAK_RESULT")"
    RSS_MAX_SAMPLE="$(sort -n "$SAMPLES" | tail -1)"
    # Flat means no growth over the run: the level of the last fifth of the
    # samples against the level of the second fifth (the first is the
    # warm-up, when the working set of the load itself comes in: buffers,
    # page cache, connections), each the median of its samples. The idle
    # start is reported beside it.
    SAMPLE_COUNT="$(wc -l < "$SAMPLES")"
    FIFTH=$(( SAMPLE_COUNT / 5 > 0 ? SAMPLE_COUNT / 5 : 1 ))
    RSS_EARLY_KIB="$(sed -n "$(( SAMPLE_COUNT > FIFTH ? FIFTH + 1 : 1 )),$(( 2 * FIFTH ))p" "$SAMPLES" | median)"
    RSS_LATE_KIB="$(tail -n "$FIFTH" "$SAMPLES" | median)"
    if [ -n "${PEAK_INGEST_KIB:-}" ]; then
        row "peak RSS of the service during the ingest runs (VmHWM)" "$(mib "$PEAK_INGEST_KIB") MiB" "—" "—" "reported" "met"
    fi
    row "RSS over a ${SOAK}s sustained ingest at $(printf %.0f "$SOAK_EPS") events/s: after the warm-up → last fifth (medians of 5 s samples)" \
        "$(mib "$RSS_EARLY_KIB") → $(mib "$RSS_LATE_KIB") MiB (idle start $(mib "$RSS_START_KIB"), end $(mib "$RSS_END_KIB"), max sample $(mib "${RSS_MAX_SAMPLE:-0}"), VmHWM $(mib "$RSS_PEAK_KIB"))" \
        "second fifth of the run" "$(times "$RSS_LATE_KIB" "$RSS_EARLY_KIB") (end vs idle start $(times "$RSS_END_KIB" "$RSS_START_KIB"))" "flat (≤ 1.25×)" \
        "$(verdict 'v <= 1.25' "$(awk -v a="$RSS_LATE_KIB" -v b="$RSS_EARLY_KIB" 'BEGIN{print (b>0)?a/b:99}')")"
    stop_service
fi

# ------------------------------------------------------------------ redis ---
# The shared rate limiter (one Lua script per request in Redis) against the
# in-process one, same budget (large enough that nothing is refused), same
# load: the realistic rate-limited call (single-event POST) and a call that
# costs next to nothing besides the limiter (the worst case for the ratio).
if [ "$REDIS" != 0 ]; then
    if (exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT") 2>/dev/null; then
        REDIS=1
    else
        REDIS=unreachable
    fi
fi
if [ "$SQLITE" = 1 ] && [ "$REDIS" = 1 ] && section redis; then
    LIMIT_CONFIG="security:
  rate_limit:
    enabled: true
    requests_per_minute: 1000000
    burst: 1000000
    exempt: []"
    limiter_run() { # limiter_run LABEL: both loads against the running service -> $WORK/limit.LABEL.*
        loadgen --target http-single --concurrency 64 --duration "${DURATION}s" --seed 3 > "$WORK/limit.$1.post"
        loadgen --target get --path /api/v1/internal/ingestion-metrics --concurrency 64 --duration "${DURATION}s" > "$WORK/limit.$1.get"
    }
    EXTRA_CONFIG="$LIMIT_CONFIG" start_service limit-local
    log "rate limiter in process: single-event POST and GET, 64 connections, ${DURATION}s each"
    limiter_run local
    stop_service
    EXTRA_CONFIG="$LIMIT_CONFIG
redis:
  enabled: true
  host: \"$REDIS_HOST\"
  port: $REDIS_PORT
  key_prefix: \"bench_$$_$(date +%s):\"" start_service limit-redis
    log "rate limiter in Redis: the same loads"
    limiter_run redis
    stop_service
    for kind in post get; do
        LOCAL_RPS="$(jq -r .acknowledged_requests_per_second "$WORK/limit.local.$kind")"
        REDIS_RPS="$(jq -r .acknowledged_requests_per_second "$WORK/limit.redis.$kind")"
        LOCAL_P50="$(jq -r .latency_ms.p50 "$WORK/limit.local.$kind")"
        REDIS_P50="$(jq -r .latency_ms.p50 "$WORK/limit.redis.$kind")"
        REFUSED="$(jq -s -r 'map(.requests_failed + .transport_errors + .requests_rejected) | add' "$WORK/limit.local.$kind" "$WORK/limit.redis.$kind")"
        if [ "$kind" = post ]; then
            what="single-event POST"; target="≥ 80 %"
            judged="$(verdict 'v >= 80' "$(awk -v a="$REDIS_RPS" -v b="$LOCAL_RPS" 'BEGIN{print (b>0)?100*a/b:0}')")"
        else
            what="GET /api/v1/internal/ingestion-metrics (worst case: the limiter is most of the work)"; target="(reported)"; judged="—"
        fi
        row "Redis rate limiter, $what, 64 connections (req/s; p50 added by Redis)" \
            "$(printf %.0f "$REDIS_RPS") (p50 $REDIS_P50 ms, +$(awk -v a="$REDIS_P50" -v b="$LOCAL_P50" 'BEGIN{printf "%.3f", a-b}') ms; $REFUSED not acked in both runs)" \
            "in-process limiter, same load: $(printf %.0f "$LOCAL_RPS") req/s (p50 $LOCAL_P50 ms)" \
            "$(ratio "$REDIS_RPS" "$LOCAL_RPS")" "$target" "$judged"
    done
elif [ "$REDIS" = unreachable ]; then
    row "Redis rate limiter vs in-process limiter" "not available (Redis unreachable at $REDIS_HOST:$REDIS_PORT)" "—" "—" "≥ 80 %" "—"
fi

# ------------------------------------------------------------ postgresql ---
# The same kinds of figures on the PostgreSQL store, each in fresh schemas,
# each against a raw-SQL baseline run in this script on the same server.
pg_time_ms() { # pg_time_ms FILE: the "Time: N ms" lines psql's \timing printed, one number a line
    awk '$1 == "Time:" {print $2}' "$1"
}
percentiles() { # percentiles FILE -> "p50 p99" of the numbers in FILE (nearest rank)
    sort -n "$1" | awk '{a[NR] = $1} END {
        if (NR == 0) { print "n/a n/a"; exit }
        i50 = int(0.50 * NR + 0.999999); i99 = int(0.99 * NR + 0.999999)
        printf "%.3f %.3f\n", a[i50 < 1 ? 1 : i50], a[i99 < 1 ? 1 : i99] }'
}
pg_migrate() { # pg_migrate NAME SCHEMA: the service's schema, created by `analytics migrate`
    write_config "$1" "$2"
    "$BIN" --config "$CONFIG" migrate 2>"$WORK/$1/migrate.log" ||
        { cat "$WORK/$1/migrate.log" >&2; echo "analytics migrate failed" >&2; exit 1; }
}
pg_count() { # pg_count SCHEMA TABLE: rows stored
    pg_psql -Atc "SELECT count(*) FROM $1.$2"
}
# raw_queries LABEL REPEATS: times the raw-SQL equivalents of $QUERIES over
# the events table of $PG_SCHEMA (one psql session per query, one warm-up
# run, then REPEATS timed runs) -> $WORK/r.LABEL.NAME (p50 p99 runs)
raw_queries() {
    local label="$1" repeats="$2" now_ms name file args
    now_ms="$(( $(date +%s%N) / 1000000 ))"
    for name in stats metrics dashboard; do
        file="$ROOT/scripts/pg_raw_$name.sql"
        args=(-c '\o /dev/null' -f "$file" -c '\timing on')
        for _ in $(seq 1 "$repeats"); do args+=(-f "$file"); done
        PGOPTIONS="-c search_path=$PG_SCHEMA" pg_psql -v now_ms="$now_ms" "${args[@]}" > "$WORK/raw.$label.$name.out"
        pg_time_ms "$WORK/raw.$label.$name.out" > "$WORK/raw.$label.$name.ms"
        echo "$(percentiles "$WORK/raw.$label.$name.ms") $(wc -l < "$WORK/raw.$label.$name.ms")" > "$WORK/r.$label.$name"
    done
}

if [ "$POSTGRES" = 1 ]; then
    # 1. Batch ingest through the service vs a plain COPY of the same rows,
    # in rounds (fresh schemas each): one COPY is a single timing, and a
    # checkpoint falling inside it moves it by a quarter.
    "$BIN" loadgen --target ndjson --count "$PG_EVENTS" --seed 2 --quiet -o "$WORK/pg-events.ndjson" 2>>"$WORK/loadgen.log"
    python3 "$ROOT/scripts/pg_ndjson_to_tsv.py" "$WORK/pg-events.ndjson" \
        "$WORK/pg-events.tsv" "$WORK/pg-event_ids.tsv"
    : > "$WORK/pg-batch.rounds"
    for round in $(seq 1 "$RATIO_ROUNDS"); do
        pg_new_schema "batch$round"
        start_service "pg-batch$round" "$PG_SCHEMA"
        log "round $round/$RATIO_ROUNDS, postgres: batch ingest over HTTP, $PG_EVENTS events in 10 000-event batches, 2 connections"
        PG_BATCH="$(loadgen --target http-batch --batch-size 10000 --concurrency 2 --count "$PG_EVENTS" --seed 2)"
        stop_service
        PG_BATCH_STORED="$(pg_count "$PG_SCHEMA" events)"

        log "round $round/$RATIO_ROUNDS, postgres baseline: COPY of the same $PG_EVENTS rows into a second schema made by analytics migrate"
        pg_new_schema "copy$round"
        pg_migrate "pg-copy$round" "$PG_SCHEMA"
        COPY_START="$(date +%s%N)"
        PGOPTIONS="-c search_path=$PG_SCHEMA" pg_psql > "$WORK/pg-copy$round/copy.out" <<EOF
\timing on
BEGIN;
\copy event_ids (id, ts) FROM '$WORK/pg-event_ids.tsv'
\copy events (id, ts, event_type, user_id, session_id, properties, created_at) FROM '$WORK/pg-events.tsv'
COMMIT;
EOF
        COPY_END="$(date +%s%N)"
        COPY_STORED="$(pg_count "$PG_SCHEMA" events)"
        mapfile -t COPY_MS < <(pg_time_ms "$WORK/pg-copy$round/copy.out") # BEGIN, ids, events, COMMIT
        # One line per round: COPY rows/s, service events/s, the events
        # COPY alone, rows stored by each side, batches not acked.
        echo "$(awk -v n="$COPY_STORED" -v ns="$((COPY_END - COPY_START))" 'BEGIN {printf "%.0f", n / (ns / 1e9)}')" \
            "$(jq -r '.events_accepted / .elapsed_seconds' <<<"$PG_BATCH")" \
            "$(awk -v n="$COPY_STORED" -v ms="${COPY_MS[2]:-0}" 'BEGIN {if (ms > 0) printf "%.0f", n / (ms / 1000); else print 0}')" \
            "$COPY_STORED $PG_BATCH_STORED $(jq -r '.requests_failed + .transport_errors + .requests_rejected' <<<"$PG_BATCH")" \
            >> "$WORK/pg-batch.rounds"
    done
    COPY_RPS="$(median_of "$WORK/pg-batch.rounds" 1)"
    PG_BATCH_EPS="$(median_of "$WORK/pg-batch.rounds" 2)"
    COPY_EVENTS_ONLY_RPS="$(median_of "$WORK/pg-batch.rounds" 3)"
    COPY_STORED="$(median_of "$WORK/pg-batch.rounds" 4)"
    PG_BATCH_STORED="$(median_of "$WORK/pg-batch.rounds" 5)"
    PG_BATCH_FAILED="$(awk '{n += $6} END {print n + 0}' "$WORK/pg-batch.rounds")"
    IFS='|' read -r PG_BATCH_PCT PG_BATCH_PCTS < <(round_percents "$WORK/pg-batch.rounds")
    row "PostgreSQL: batch ingest over HTTP, 10 000-event batches, rollups included (events/s stored, median of $RATIO_ROUNDS rounds)" \
        "$(printf %.0f "$PG_BATCH_EPS") ($PG_BATCH_STORED stored per round, ${PG_BATCH_FAILED} batches not acked)" \
        "plain COPY of the same $COPY_STORED rows into \`events\` + \`event_ids\` of a schema made the same way, one transaction, same rounds: $(printf %.0f "$COPY_RPS") rows/s (the \`events\` COPY alone: $(printf %.0f "$COPY_EVENTS_ONLY_RPS") rows/s)" \
        "$PG_BATCH_PCT % (rounds: $PG_BATCH_PCTS)" "≥ 60 %" "$(verdict 'v >= 60' "$PG_BATCH_PCT")"

    # 2. Single-event POSTs vs one INSERT per transaction (the old service).
    pg_new_schema single
    start_service pg-single "$PG_SCHEMA"
    log "postgres: single-event POST /api/v1/events, 64 connections, ${DURATION}s"
    PG_SINGLE="$(loadgen --target http-single --concurrency 64 --duration "${DURATION}s" --seed 1)"
    PG_SINGLE_RPS="$(jq -r .acknowledged_requests_per_second <<<"$PG_SINGLE")"
    PG_SINGLE_P99="$(jq -r .latency_ms.p99 <<<"$PG_SINGLE")"
    PG_SINGLE_FAILED="$(jq -r '.requests_failed + .transport_errors + .requests_rejected' <<<"$PG_SINGLE")"
    stop_service

    log "postgres baseline: pgbench, one INSERT per transaction, 64 clients, ${DURATION}s"
    pg_new_schema pgbench
    pg_migrate pg-pgbench "$PG_SCHEMA"
    PGOPTIONS="-c search_path=$PG_SCHEMA" PGCONNECT_TIMEOUT=5 pgbench -n -c 64 -j 2 -T "$DURATION" \
        -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -f "$ROOT/scripts/pg_single_insert.sql" "$PG_DATABASE" \
        > "$WORK/pg-pgbench/pgbench.out" 2>&1 || { cat "$WORK/pg-pgbench/pgbench.out" >&2; echo "pgbench failed" >&2; exit 1; }
    PGBENCH_TPS="$(awk '/^tps = / {print $3; exit}' "$WORK/pg-pgbench/pgbench.out")"
    PGBENCH_LATENCY="$(awk '/^latency average/ {print $4; exit}' "$WORK/pg-pgbench/pgbench.out")"
    row "PostgreSQL: single-event POST, 64 connections (events/s acknowledged)" \
        "$(printf %.0f "$PG_SINGLE_RPS") (p99 ${PG_SINGLE_P99} ms, ${PG_SINGLE_FAILED} not acked)" \
        "pgbench, 64 clients, ${DURATION}s, one \`INSERT\` into \`events\` per transaction: $(printf %.0f "$PGBENCH_TPS") rows/s (mean ${PGBENCH_LATENCY} ms)" \
        "$(times "$PG_SINGLE_RPS" "$PGBENCH_TPS")" "≥ 3×" \
        "$(verdict 'v >= 3' "$(awk -v a="$PG_SINGLE_RPS" -v b="$PGBENCH_TPS" 'BEGIN{print (b>0)?a/b:0}')")"

    # 3. Query latency at 100 k (and 10 M) stored events vs raw GROUP BY.
    pg_new_schema queries
    start_service pg-queries "$PG_SCHEMA"
    log "postgres: filling 100 000 events over 3 days"
    fill 100000 20
    settle_summaries pgsmall
    log "postgres baseline: raw GROUP BY equivalents at 100 000 events, 30 runs each"
    raw_queries pgsmall 30
    if [ "$LARGE" = 1 ]; then
        # As on SQLite: a second schema with the same 100 k and 9.9 M more,
        # both services measured in the same rounds.
        park_service
        pg_new_schema queries_large
        start_service pg-queries-large "$PG_SCHEMA"
        log "postgres: filling a second schema with the same 100 000 and 9 900 000 more over the same 3 days (takes many minutes)"
        fill 100000 20
        fill 9900000 21
        settle_summaries pglarge
        measure_queries pgsmall "$PARKED_URL" pglarge "$URL"
        stop_parked
        log "postgres baseline: raw GROUP BY equivalents at 10 000 000 events, 5 runs each"
        raw_queries pglarge 5
    else
        measure_queries pgsmall "$URL"
    fi
    PG_QUERIES_STORED="$(pg_count "$PG_SCHEMA" events)"
    stop_service
    for entry in "${QUERIES[@]}"; do
        name="${entry%%|*}" path="${entry#*|}"
        read -r S50 S99 _ < "$WORK/q.pgsmall.$name"
        if [ ! -f "$WORK/r.pgsmall.$name" ]; then
            # The trading reports have no one-query raw equivalent: only
            # the 10 M / 100 k ratio is judged.
            if [ "$LARGE" = 1 ]; then
                read -r L50 L99 _ < "$WORK/q.pglarge.$name"
                IFS='|' read -r RATIO RATIOS < <(round_ratios pgsmall pglarge "$name")
                row "PostgreSQL: \`GET $path\` p50 / p99 at 10 M events ($PG_QUERIES_STORED stored) (ms, median of $QUERY_ROUNDS rounds)" "$L50 / $L99" \
                    "at 100 k events, same rounds: $S50 / $S99" "p99 ${RATIO}× of 100 k (median of the rounds' ratios: $RATIOS)" "p99 ≤ 2× of 100 k" \
                    "$(verdict 'v <= 2' "$RATIO")"
            else
                row "PostgreSQL: \`GET $path\` p50 / p99 at 100 k events (ms)" "$S50 / $S99" "10 M step not run (--large)" "—" "p99 ≤ 2× at 10 M" "not measured"
            fi
            continue
        fi
        read -r R50 R99 RN < "$WORK/r.pgsmall.$name"
        # The issue sets the 10× target at 10 M events; at 100 k the raw
        # query is cheap too, so the ratio is reported, not judged.
        row "PostgreSQL: \`GET $path\` p50 / p99 at 100 k events (ms)" "$S50 / $S99" \
            "raw SQL (scripts/pg_raw_$name.sql) on the same events table: $R50 / $R99 ($RN runs)" \
            "p99 $(times "$R99" "$S99") faster than raw" "(reported; the targets apply at 10 M)" "—"
        if [ "$LARGE" = 1 ]; then
            read -r L50 L99 _ < "$WORK/q.pglarge.$name"
            read -r RL50 RL99 RLN < "$WORK/r.pglarge.$name"
            IFS='|' read -r RATIO RATIOS < <(round_ratios pgsmall pglarge "$name")
            row "PostgreSQL: \`GET $path\` p50 / p99 at 10 M events ($PG_QUERIES_STORED stored) (ms, median of $QUERY_ROUNDS rounds)" "$L50 / $L99" \
                "raw SQL, same table: $RL50 / $RL99 ($RLN runs); service at 100 k, same rounds: $S50 / $S99" \
                "p99 $(times "$RL99" "$L99") faster than raw; ${RATIO}× of 100 k (rounds: $RATIOS)" "≥ 10× faster; p99 ≤ 2× of 100 k" \
                "≥ 10×: $(verdict 'v >= 10' "$(awk -v a="$RL99" -v b="$L99" 'BEGIN{print (b>0)?a/b:0}')"); ≤ 2×: $(verdict 'v <= 2' "$RATIO")"
        fi
    done
    if [ "$LARGE" != 1 ]; then
        row "PostgreSQL: query p99 at 10 M events" "10 M step not run (--large)" "—" "—" "≥ 10× faster than raw; p99 ≤ 2× of 100 k" "not measured"
    fi
elif [ "$POSTGRES" = unreachable ]; then
    for figure in "batch ingest vs raw PostgreSQL COPY" "single-event POST on PostgreSQL vs one INSERT per transaction" \
        "query p99 on PostgreSQL at 100 k / 10 M events vs raw GROUP BY"; do
        row "PostgreSQL: $figure" "not available (PostgreSQL unreachable)" "—" "—" "—" "—"
    done
else
    row "PostgreSQL scenarios" "not run (--no-postgres)" "—" "—" "—" "—"
fi

# --------------------------------------------------------------- streams ---
# Kafka (librdkafka's mock cluster: the real protocol on loopback, started by
# `analytics kafka-mock`) and NATS JetStream (the server on $NATS_URL) into
# the embedded store, against batch HTTP of the same events (same
# generator, seed and count) measured in the same rounds. Each stream is
# loaded once; in each round a fresh service consumes all of it (a consumer
# group or durable of the round's own): the rate is the events committed
# from the first commit seen to the last. Then the latency from
# produce/publish to visible, at a steady 5 000 events/s.
STREAM_EVENTS=200000 # the mock cluster keeps about 5 MB per partition
# consume_rate SOURCE COUNT: the events/s from the first commit seen to the
# last (the mock cluster takes seconds to assign partitions to a new group
# member: not ingest time); see committed_rate in bench-lib.sh.
consume_rate() { committed_rate "$1" "$2"; }
# wait_assigned SOURCE: until the running service's SOURCE is connected
# (Kafka: has its partitions assigned), bounded (30 s).
wait_assigned() {
    for _ in $(seq 1 300); do
        curl -fsS "$URL/health" | jq -e --arg s "$1" '.sources[$s] == "connected"' >/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not connect within 30 s" >&2
}
stream_rows() { # stream_rows NAME ROUNDS_FILE VISIBLE_JSON
    local rate pct pcts
    rate="$(median_of "$2" 2)"
    IFS='|' read -r pct pcts < <(round_percents "$2")
    row "$1 ingest into the embedded store, $STREAM_EVENTS events loaded beforehand (events/s committed, median of $RATIO_ROUNDS rounds)" \
        "$(printf %.0f "$rate")" "batch HTTP of the same events (10 000-event batches, 2 connections), same rounds: $(printf %.0f "$(median_of "$2" 1)") events/s" \
        "$pct % (rounds: $pcts)" "≥ 70 %" "$(verdict 'v >= 70' "$pct")"
    row "$1: produce → visible in /api/v1/events at a steady 5 000 events/s (ms)" \
        "$(jq -r '"p50 \(.latency_ms.p50), p99 \(.latency_ms.p99) (\(.requests_acknowledged) probes)"' <<<"$3")" \
        "—" "—" "reported" "—"
}
if [ "$SQLITE" = 1 ] && section streams; then
    log "kafka: mock cluster, $STREAM_EVENTS events loaded"
    # The mock keeps about 5 MB per partition and drops older messages:
    # enough partitions that the whole stream stays.
    "$BIN" kafka-mock --partitions 64 --topics trading.events,bench.latency > "$WORK/kafka.out" 2>>"$WORK/loadgen.log" &
    MOCK_PID=$!
    for _ in $(seq 1 100); do [ -s "$WORK/kafka.out" ] && break; sleep 0.1; done
    BROKERS="$(head -1 "$WORK/kafka.out")"
    "$BIN" loadgen --url http://127.0.0.1:1 --quiet --json --target kafka --brokers "$BROKERS" --topic trading.events \
        --count "$STREAM_EVENTS" --seed 2 > "$WORK/kafka.load.json" 2>>"$WORK/loadgen.log"
    NATS_HOST_PORT="${NATS_URL#nats://}"
    NATS_UP=0
    if (exec 3<>"/dev/tcp/${NATS_HOST_PORT%:*}/${NATS_HOST_PORT#*:}") 2>/dev/null; then
        NATS_UP=1
        log "nats: $STREAM_EVENTS events published to a stream of this run"
        NATS_STREAM="BENCH_$$"
        NATS_SUBJECT="bench$$"
        NATS_STREAMS+=("$NATS_STREAM" "${NATS_STREAM}_L")
        "$BIN" loadgen --url http://127.0.0.1:1 --quiet --json --target nats --nats-url "$NATS_URL" \
            --nats-stream "$NATS_STREAM" --nats-subjects "$NATS_SUBJECT.>" --subject "$NATS_SUBJECT.events" \
            --count "$STREAM_EVENTS" --seed 2 > "$WORK/nats.load.json" 2>>"$WORK/loadgen.log"
    fi
    # Rounds: the batch-HTTP baseline, then Kafka (a consumer group of the
    # round's own) and NATS (a durable of the round's own) each consuming
    # the whole loaded stream into a fresh store; one ratio per round.
    : > "$WORK/kafka.rounds"
    : > "$WORK/nats.rounds"
    : > "$WORK/nats-drain.rounds"
    for round in $(seq 1 "$RATIO_ROUNDS"); do
        log "round $round/$RATIO_ROUNDS, streams baseline: batch HTTP of the same $STREAM_EVENTS events"
        start_service "stream-baseline$round"
        STREAM_BASELINE="$(loadgen --target http-batch --batch-size 10000 --concurrency 2 --count "$STREAM_EVENTS" --seed 2)"
        STREAM_BASELINE_EPS="$(jq -r '.events_accepted / .elapsed_seconds' <<<"$STREAM_BASELINE")"
        stop_service
        log "round $round/$RATIO_ROUNDS, kafka: consuming the $STREAM_EVENTS events"
        # The mock broker holds every fetch for fetch.wait.max.ms even when
        # data waits (a real broker answers at once): 10 ms instead of 500.
        EXTRA_CONFIG="kafka:
  brokers: [\"$BROKERS\"]
  topics: [\"trading.events\"]
  consumer_group: \"bench-$$-$round\"
  properties: {fetch.wait.max.ms: \"10\"}" start_service "kafka-ingest$round"
        echo "$STREAM_BASELINE_EPS $(consume_rate kafka "$STREAM_EVENTS")" >> "$WORK/kafka.rounds"
        stop_service
        if [ "$NATS_UP" = 1 ]; then
            log "round $round/$RATIO_ROUNDS, nats: consuming the $STREAM_EVENTS events"
            EXTRA_CONFIG="nats:
  servers: [\"$NATS_URL\"]
  stream: \"$NATS_STREAM\"
  subjects: [\"$NATS_SUBJECT.>\"]
  durable: \"bench$round\"" start_service "nats-ingest$round"
            echo "$STREAM_BASELINE_EPS $(consume_rate nats "$STREAM_EVENTS")" >> "$WORK/nats.rounds"
            stop_service
            # The floor JetStream sets: the same stream taken and
            # acknowledged as the source does, nothing stored.
            log "round $round/$RATIO_ROUNDS, nats: draining the $STREAM_EVENTS events, storing nothing"
            DRAIN="$("$BIN" bench-nats-drain --nats-url "$NATS_URL" --stream "$NATS_STREAM" --durable "drain$round" \
                --count "$STREAM_EVENTS" 2>>"$WORK/loadgen.log")" || DRAIN='{}'
            echo "$STREAM_BASELINE_EPS $(jq -r '.events_per_second // 0' <<<"$DRAIN")" >> "$WORK/nats-drain.rounds"
        fi
    done
    log "kafka: produce → visible at 5 000 events/s for ${DURATION}s"
    EXTRA_CONFIG="kafka:
  brokers: [\"$BROKERS\"]
  topics: [\"bench.latency\"]
  consumer_group: \"bench-latency-$$\"
  properties: {fetch.wait.max.ms: \"10\"}" start_service kafka-latency
    wait_assigned kafka
    # Warm-up (not measured): the group's first fetch positions take a
    # moment on a new group.
    loadgen --target kafka --brokers "$BROKERS" --topic bench.latency --rate 5000 --count 2000 --seed 5 >/dev/null
    consume_rate kafka 2000 >/dev/null
    KAFKA_VISIBLE="$(loadgen --target kafka --brokers "$BROKERS" --topic bench.latency --rate 5000 \
        --duration "${DURATION}s" --seed 4 --probe-visible | jq -c 'select(.target | endswith("-visible"))')"
    stop_service
    stop_mock
    stream_rows "Kafka" "$WORK/kafka.rounds" "$KAFKA_VISIBLE"

    if [ "$NATS_UP" = 1 ]; then
        log "nats: publish → visible at 5 000 events/s for ${DURATION}s"
        EXTRA_CONFIG="nats:
  servers: [\"$NATS_URL\"]
  stream: \"${NATS_STREAM}_L\"
  subjects: [\"${NATS_SUBJECT}l.>\"]
  durable: \"bench\"" start_service nats-latency
        wait_assigned nats
        loadgen --target nats --nats-url "$NATS_URL" --nats-stream "${NATS_STREAM}_L" \
            --nats-subjects "${NATS_SUBJECT}l.>" --subject "${NATS_SUBJECT}l.events" --rate 5000 --count 2000 --seed 5 >/dev/null
        consume_rate nats 2000 >/dev/null
        NATS_VISIBLE="$(loadgen --target nats --nats-url "$NATS_URL" --nats-stream "${NATS_STREAM}_L" \
            --nats-subjects "${NATS_SUBJECT}l.>" --subject "${NATS_SUBJECT}l.events" --rate 5000 \
            --duration "${DURATION}s" --seed 4 --probe-visible | jq -c 'select(.target | endswith("-visible"))')"
        stop_service
        stream_rows "NATS JetStream" "$WORK/nats.rounds" "$NATS_VISIBLE"
        IFS='|' read -r DRAIN_PCT DRAIN_PCTS < <(round_percents "$WORK/nats-drain.rounds")
        row "NATS JetStream taken and acknowledged as the source does, nothing stored (\`analytics bench-nats-drain\`; events/s, median of $RATIO_ROUNDS rounds)" \
            "$(printf %.0f "$(median_of "$WORK/nats-drain.rounds" 2)")" "batch HTTP into the service, same rounds: $(printf %.0f "$(median_of "$WORK/nats-drain.rounds" 1)") events/s" \
            "$DRAIN_PCT % (rounds: $DRAIN_PCTS)" "(diagnostic: the most the NATS source could reach on this machine)" "—"
    else
        row "NATS JetStream ingest vs batch HTTP" "not available (NATS unreachable at $NATS_URL)" "—" "—" "≥ 70 %" "—"
    fi

    # The streams' ids: a message without one gets a position id (issue 8:
    # its place in the broker and the broker's time, ordered by the time, as
    # HTTP's UUIDv7s are); before session 15 it got a UUIDv5 of its place
    # alone, in random order. The same in-process commit of the same events
    # with each kind of id, in rounds: what the ids alone cost the streams.
    : > "$WORK/ids.position"
    : > "$WORK/ids.v5"
    for round in $(seq 1 "$RATIO_ROUNDS"); do
        log "round $round/$RATIO_ROUNDS: store commit_batch with UUIDv7, position and UUIDv5 ids, in process, 200 000 events"
        V7="$("$BIN" bench-baseline --count 200000 --batch-size 10000 --dir "$WORK/ids" --json 2>>"$WORK/loadgen.log")"
        POSITION="$("$BIN" bench-baseline --count 200000 --batch-size 10000 --dir "$WORK/ids" --ids position --json 2>>"$WORK/loadgen.log")"
        V5="$("$BIN" bench-baseline --count 200000 --batch-size 10000 --dir "$WORK/ids" --ids uuidv5 --json 2>>"$WORK/loadgen.log")"
        V7_RATE="$(jq -r .store_commit_events_per_second <<<"$V7")"
        echo "$V7_RATE $(jq -r .store_commit_events_per_second <<<"$POSITION")" >> "$WORK/ids.position"
        echo "$V7_RATE $(jq -r .store_commit_events_per_second <<<"$V5")" >> "$WORK/ids.v5"
    done
    for kind in position v5; do
        IFS='|' read -r IDS_PCT IDS_PCTS < <(round_percents "$WORK/ids.$kind")
        case "$kind" in
            position) what="the streams' position ids (UUIDv8: broker time, then a hash of the position)" ;;
            v5) what="UUIDv5 ids of the position alone (the streams' ids before session 15)" ;;
        esac
        row "store commit_batch with $what vs with HTTP's UUIDv7 ids, same events, in process (events/s, median of $RATIO_ROUNDS rounds)" \
            "$(printf %.0f "$(median_of "$WORK/ids.$kind" 2)")" "UUIDv7 ids: $(printf %.0f "$(median_of "$WORK/ids.$kind" 1)")" \
            "$IDS_PCT % (rounds: $IDS_PCTS)" "(diagnostic: bounds the stream ratios)" "—"
    done
fi

# --------------------------------------------------------------- trading ---
# Ingest with the trading tables kept (the default) against the same ingest
# with analytics.aggregation.trading off: the same events (generator seed),
# fresh stores, alternating three times so drift hits both sides alike.
TRADING_EVENTS=300000
if [ "$SQLITE" = 1 ] && section trading; then
    : > "$WORK/trading.on"
    : > "$WORK/trading.off"
    for trial in 1 2 3; do
        for mode in on off; do
            if [ "$mode" = off ]; then export ANALYTICS_ANALYTICS__AGGREGATION__TRADING=false; fi
            log "trading $mode (trial $trial): $TRADING_EVENTS events, 10 000-event batches, 2 connections"
            start_service "trading-$mode-$trial"
            unset ANALYTICS_ANALYTICS__AGGREGATION__TRADING
            loadgen --target http-batch --batch-size 10000 --concurrency 2 --count "$TRADING_EVENTS" --seed 6 \
                | jq -r '.events_accepted / .elapsed_seconds' >> "$WORK/trading.$mode"
            stop_service
        done
    done
    TRADING_ON="$(sort -n "$WORK/trading.on" | sed -n 2p)"
    TRADING_OFF="$(sort -n "$WORK/trading.off" | sed -n 2p)"
    row "batch ingest with trading analytics on (events/s stored, median of 3; trials $(paste -sd/ "$WORK/trading.on" | awk -F/ '{for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " / " : ""), $i}'))" \
        "$(printf %.0f "$TRADING_ON")" \
        "trading off (\`analytics.aggregation.trading: false\`), same events, alternating: $(printf %.0f "$TRADING_OFF") (trials $(paste -sd/ "$WORK/trading.off" | awk -F/ '{for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " / " : ""), $i}'))" \
        "$(ratio "$TRADING_ON" "$TRADING_OFF")" "≥ 70 %" \
        "$(verdict 'v >= 70' "$(awk -v a="$TRADING_ON" -v b="$TRADING_OFF" 'BEGIN{print (b>0)?100*a/b:0}')")"
fi

# ---------------------------------------------------------------- report ---
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- . 2>/dev/null || echo ' (dirty tree)')"
CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
TABLE="$WORK/table.md"
{
    echo "Run of $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) CPUs ($CPU), soak ${SOAK}s, large=$LARGE, sqlite=$SQLITE, postgres=$POSTGRES."
    echo
    echo "| figure | value | baseline (same run) | ratio | target | verdict |"
    echo "|---|---|---|---|---|---|"
    cat "$ROWS"
} > "$TABLE"
cat "$TABLE"

if [ -f "$OUTPUT" ] && grep -q '<!-- bench:begin -->' "$OUTPUT"; then
    awk -v table="$TABLE" '
        /<!-- bench:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- bench:end -->/ { skip = 0 }
        !skip { print }
    ' "$OUTPUT" > "$WORK/out.md"
    cp "$WORK/out.md" "$OUTPUT"
else
    { echo "# Benchmarks"; echo; echo "<!-- bench:begin -->"; cat "$TABLE"; echo "<!-- bench:end -->"; } > "$OUTPUT"
fi
log "table written to $OUTPUT"
