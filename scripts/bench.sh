#!/usr/bin/env bash
# Benchmarks of B25 Analytics, each figure against a baseline measured in the
# same run on the same machine. Writes the results table into BENCHMARKS.md
# (between the "bench:begin" and "bench:end" markers) and prints it.
#
# Usage: scripts/bench.sh [--large] [--soak SECONDS] [--duration SECONDS]
#                         [--no-build] [--output FILE]
#   --large         also fill the store to 10 000 000 events and measure the
#                   queries there (adds several minutes)
#   --soak S        length of the sustained-ingest RSS run (default 30; the
#                   issue's figure uses 300)
#   --duration S    length of each single-event / baseline run (default 15)
#   --no-build      use the existing target/release/analytics
#   --output FILE   write the table into FILE instead of BENCHMARKS.md
#
# Everything runs on loopback, every loop is bounded, and the services the
# script starts are stopped on exit (trap). Needs curl and jq.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/analytics"
LARGE=0
SOAK=30
DURATION=15
BUILD=1
OUTPUT="$ROOT/BENCHMARKS.md"

while [ $# -gt 0 ]; do
    case "$1" in
        --large) LARGE=1 ;;
        --soak) SOAK="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --output) OUTPUT="$2"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in curl jq; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool (apt-get install $tool)" >&2; exit 2; }
done

if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi

WORK="$(mktemp -d /tmp/analytics-bench.XXXXXX)"
SERVICE_PID=""
SAMPLER_PID=""

stop_service() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
    fi
    if [ -n "$SERVICE_PID" ]; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        # Bounded wait for the drain, then force.
        for _ in $(seq 1 100); do
            kill -0 "$SERVICE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
        SERVICE_PID=""
    fi
}
cleanup() {
    stop_service
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_service NAME: a fresh database and config under $WORK/NAME.
start_service() {
    local name="$1"
    API_PORT="$(free_port)"
    METRICS_PORT="$(free_port)"
    while [ "$METRICS_PORT" = "$API_PORT" ]; do METRICS_PORT="$(free_port)"; done
    mkdir -p "$WORK/$name"
    CONFIG="$WORK/$name/config.yaml"
    cat > "$CONFIG" <<EOF
server:
  host: "127.0.0.1"
  port: $API_PORT
metrics:
  port: $METRICS_PORT
database:
  path: "$WORK/$name/analytics.db"
analytics:
  ingestion:
    # Room for a few 10 000-event batches at once (the default 10 000 holds
    # exactly one: a second concurrent batch is answered 503).
    buffer_size: 50000
logging:
  level: warn
  output: stderr
EOF
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

loadgen() { "$BIN" loadgen --url "$URL" --quiet --json "$@" 2>>"$WORK/loadgen.log"; }

ratio() { # ratio VALUE BASELINE -> percent
    awk -v v="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f %%", 100 * v / b; else print "n/a" }'
}
times() { # times VALUE BASELINE -> factor
    awk -v v="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", v / b; else print "n/a" }'
}
verdict() { # verdict CONDITION-TEXT (awk expression on v) VALUE
    awk -v v="$2" "BEGIN { if ($1) print \"met\"; else print \"**missed**\" }"
}

ROWS="$WORK/rows.md"
: > "$ROWS"
row() { echo "| $1 | $2 | $3 | $4 | $5 | $6 |" >> "$ROWS"; }

# ---------------------------------------------------------------- ingest ---
start_service ingest

log "baseline: GET /health, 64 connections, ${DURATION}s"
HEALTH="$(loadgen --target get --path /health --concurrency 64 --duration "${DURATION}s")"
HEALTH_RPS="$(jq -r .acknowledged_requests_per_second <<<"$HEALTH")"

log "single-event POST /api/v1/events, 64 connections, ${DURATION}s"
SINGLE="$(loadgen --target http-single --concurrency 64 --duration "${DURATION}s" --seed 1)"
SINGLE_RPS="$(jq -r .acknowledged_requests_per_second <<<"$SINGLE")"
SINGLE_P99="$(jq -r .latency_ms.p99 <<<"$SINGLE")"
SINGLE_FAILED="$(jq -r '.requests_failed + .transport_errors + .requests_rejected' <<<"$SINGLE")"
row "single-event POST, 64 connections (events/s acknowledged)" \
    "$(printf %.0f "$SINGLE_RPS") (p99 ${SINGLE_P99} ms, ${SINGLE_FAILED} not acked)" \
    "GET /health same load: $(printf %.0f "$HEALTH_RPS") req/s" \
    "$(ratio "$SINGLE_RPS" "$HEALTH_RPS")" "≥ 50 %" \
    "$(verdict 'v >= 50' "$(awk -v a="$SINGLE_RPS" -v b="$HEALTH_RPS" 'BEGIN{print (b>0)?100*a/b:0}')")"

log "batch ingest over HTTP: 500 000 events in 10 000-event batches, 2 connections"
BATCH="$(loadgen --target http-batch --batch-size 10000 --concurrency 2 --count 500000 --seed 2)"
BATCH_EPS="$(jq -r '.events_accepted / .elapsed_seconds' <<<"$BATCH")"
BATCH_FAILED="$(jq -r '.requests_failed + .transport_errors + .requests_rejected' <<<"$BATCH")"
PEAK_INGEST_KIB="$(status_kib VmHWM)"

log "baseline: raw SQLite insert vs store commit_batch, in process, 200 000 events"
BASELINE="$("$BIN" bench-baseline --count 200000 --batch-size 10000 --dir "$WORK/baseline" --json 2>>"$WORK/loadgen.log")"
RAW_EPS="$(jq -r .raw_insert_events_per_second <<<"$BASELINE")"
STORE_EPS="$(jq -r .store_commit_events_per_second <<<"$BASELINE")"
row "batch ingest over HTTP, 10 000-event batches (events/s stored)" \
    "$(printf %.0f "$BATCH_EPS") (${BATCH_FAILED} batches not acked)" "—" "—" "≥ 100 000/s" \
    "$(verdict 'v >= 100000' "$BATCH_EPS")"
row "batch ingest over HTTP vs raw SQLite insert of the same rows" \
    "$(printf %.0f "$BATCH_EPS") events/s" "raw insert (1 prepared stmt, 10 000/txn): $(printf %.0f "$RAW_EPS") rows/s" \
    "$(ratio "$BATCH_EPS" "$RAW_EPS")" "≥ 70 %" \
    "$(verdict 'v >= 70' "$(awk -v a="$BATCH_EPS" -v b="$RAW_EPS" 'BEGIN{print (b>0)?100*a/b:0}')")"
row "store commit_batch (rollups included) vs raw insert, in process" \
    "$(printf %.0f "$STORE_EPS") events/s" "$(printf %.0f "$RAW_EPS") rows/s" \
    "$(ratio "$STORE_EPS" "$RAW_EPS")" "(diagnostic)" "—"

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
stop_service

# --------------------------------------------------------------- queries ---
QUERIES=(
    "stats|/api/v1/events/stats"
    "metrics|/api/v1/metrics?metric_name=orders.latency_ms&interval=1m"
    "dashboard|/api/v1/dashboard/metrics"
)
measure_queries() { # measure_queries LABEL -> writes $WORK/q.LABEL.NAME (p50 p99)
    local label="$1"
    for entry in "${QUERIES[@]}"; do
        local name="${entry%%|*}" path="${entry#*|}"
        loadgen --target get --path "$path" --concurrency 1 --count 20 >/dev/null # warm
        local result
        result="$(loadgen --target get --path "$path" --concurrency 1 --count 200)"
        jq -r '"\(.latency_ms.p50) \(.latency_ms.p99) \(.requests_acknowledged)"' <<<"$result" > "$WORK/q.$label.$name"
    done
}
fill() { # fill COUNT SEED: backfill spread over the 3 days before now
    loadgen --target http-batch --batch-size 10000 --concurrency 2 --count "$1" --seed "$2" \
        --start now-3d --spread 3d >"$WORK/fill.$2.json"
    jq -r '"filled \(.events_accepted) events at \(.events_per_second | floor) events/s, \(.requests_failed + .transport_errors) failed"' "$WORK/fill.$2.json" >&2
}

start_service queries
log "filling 100 000 events over 3 days"
fill 100000 10
measure_queries small
if [ "$LARGE" = 1 ]; then
    log "filling to 10 000 000 events over the same 3 days (takes minutes)"
    fill 9900000 11
    measure_queries large
fi
for entry in "${QUERIES[@]}"; do
    name="${entry%%|*}" path="${entry#*|}"
    read -r S50 S99 _ < "$WORK/q.small.$name"
    if [ "$LARGE" = 1 ]; then
        read -r L50 L99 _ < "$WORK/q.large.$name"
        row "\`GET $path\` p50 / p99 at 10 M events (ms)" "$L50 / $L99" "at 100 k events: $S50 / $S99" \
            "p50 $(times "$L50" "$S50"), p99 $(times "$L99" "$S99")" "p99 ≤ 2×" \
            "$(verdict 'v <= 2' "$(awk -v a="$L99" -v b="$S99" 'BEGIN{print (b>0)?a/b:99}')")"
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
RSS_END_KIB="$(status_kib VmRSS)"
RSS_PEAK_KIB="$(status_kib VmHWM)"
SOAK_EPS="$(jq -r '.events_accepted / .elapsed_seconds' <<<"$SOAK_RESULT")"
RSS_MAX_SAMPLE="$(sort -n "$SAMPLES" | tail -1)"
row "peak RSS of the service during the ingest runs (VmHWM)" "$(mib "$PEAK_INGEST_KIB") MiB" "—" "—" "reported" "met"
row "RSS over a ${SOAK}s sustained ingest at $(printf %.0f "$SOAK_EPS") events/s: start → end (max sample)" \
    "$(mib "$RSS_START_KIB") → $(mib "$RSS_END_KIB") MiB (max $(mib "${RSS_MAX_SAMPLE:-0}"), VmHWM $(mib "$RSS_PEAK_KIB"))" \
    "start" "$(times "$RSS_END_KIB" "$RSS_START_KIB")" "flat" \
    "$(verdict 'v <= 1.25' "$(awk -v a="$RSS_END_KIB" -v b="$RSS_START_KIB" 'BEGIN{print (b>0)?a/b:99}')")"
stop_service

row "batch ingest vs raw PostgreSQL COPY" "not available (no PostgreSQL store yet)" "—" "—" "—" "—"
row "Kafka ingest vs batch HTTP" "not available (no Kafka source yet)" "—" "—" "—" "—"
row "NATS JetStream ingest vs batch HTTP" "not available (no NATS source yet)" "—" "—" "—" "—"

# ---------------------------------------------------------------- report ---
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- . 2>/dev/null || echo ' (dirty tree)')"
CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
TABLE="$WORK/table.md"
{
    echo "Run of $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) CPUs ($CPU), soak ${SOAK}s, large=$LARGE."
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
