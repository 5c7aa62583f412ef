#!/usr/bin/env bash
# NATS JetStream ingest vs batch HTTP of the same events, measured in the
# same run: the streams section of bench.sh for NATS only, repeated.
#
# Usage: scripts/nats-ratio.sh [TRIALS] (default 3); BIN=... to choose the
# binary (default target/release/analytics; no build); EVENTS=... (200000).
# NATS_EXTRA=... adds lines to the service's nats section (e.g.
# '  batch_size: 20000'). POLL=curl polls the committed count with a curl
# every 50 ms (the method before `analytics bench-committed`), for A/B runs.
# Per trial prints: the commits of both phases, the NATS phase's wall time
# and machine idle time; then trial, batch-HTTP events/s, NATS events/s,
# ratio %, and the CPU seconds of the service (both phases) and nats-server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/analytics}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
EVENTS="${EVENTS:-200000}"
TRIALS="${1:-3}"
WORK="$(mktemp -d /tmp/nats-ratio.XXXXXX)"
SERVICE_PID=""
STREAMS=()

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
stop_service() { stop_service_process; }
cleanup() {
    stop_service
    for stream in "${STREAMS[@]}"; do nats_delete_stream "$stream"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_service() { # start_service NAME: fresh SQLite store, EXTRA_CONFIG appended
    local name="$1"
    write_service_config "$WORK/$name"
    "$BIN" --config "$CONFIG" serve 2>"$WORK/$name/service.log" &
    SERVICE_PID=$!
    URL="http://127.0.0.1:$API_PORT"
    for _ in $(seq 1 150); do
        curl -fsS "$URL/health" >/dev/null 2>&1 && return 0
        kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/$name/service.log" >&2; exit 1; }
        sleep 0.2
    done
    echo "service did not become healthy" >&2; exit 1
}
# consume_rate SOURCE COUNT: as in bench.sh (committed_rate of
# bench-lib.sh); POLL=curl polls with a curl every 50 ms instead, as both
# scripts did before `analytics bench-committed`.
consume_rate() {
    if [ "${POLL:-}" = curl ]; then
        local committed=0 first_ns="" first=0 body
        for _ in $(seq 1 12000); do
            body="$(curl -fsS "$URL/api/v1/internal/ingestion-metrics")"
            if [[ "$body" =~ \"$1\":\{[^}]*\"committed\":([0-9]+) ]]; then committed="${BASH_REMATCH[1]}"; else committed=0; fi
            if [ -z "$first_ns" ] && [ "$committed" -gt 0 ]; then first_ns="$(date +%s%N)"; first="$committed"; fi
            [ "$committed" -ge "$2" ] && break
            sleep 0.05
        done
        awk -v n="$((committed - first))" -v ns="$(( $(date +%s%N) - ${first_ns:-$(date +%s%N)} ))" 'BEGIN {if (ns > 0) printf "%.0f", n / (ns / 1e9); else print 0}'
        return
    fi
    committed_rate "$1" "$2"
}

# cpu_ticks PID: user + system clock ticks of PID so far (0 when unknown).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# idle_ticks: idle clock ticks of all CPUs so far.
idle_ticks() { awk '$1 == "cpu" {print $5 + $6}' /proc/stat; }
NATS_SERVER_PID="$(pgrep -o nats-server || echo 0)"

# commit_stats: commits, mean events per commit, seconds spent committing.
commit_stats() {
    curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" | awk '
        /^analytics_batch_size_events_count/ {n = $2}
        /^analytics_batch_size_events_sum/ {e = $2}
        /^analytics_batch_duration_seconds_sum/ {d = $2}
        END {printf "%d commits of %.0f events, %.2f s committing", n, (n > 0) ? e / n : 0, d}'
}

echo "trial batch_http_eps nats_eps ratio_pct (events=$EVENTS, bin=$BIN)"
for trial in $(seq 1 "$TRIALS"); do
    EXTRA_CONFIG="" start_service "baseline$trial"
    BASE_TICKS="$(cpu_ticks "$SERVICE_PID")"
    BASE="$("$BIN" loadgen --url "$URL" --quiet --json --target http-batch --batch-size 10000 \
        --concurrency 2 --count "$EVENTS" --seed 2 2>>"$WORK/loadgen.log")"
    BASE_EPS="$(jq -r '.events_accepted / .elapsed_seconds' <<<"$BASE")"
    BASE_TICKS="$(( $(cpu_ticks "$SERVICE_PID") - BASE_TICKS ))"
    BASE_COMMITS="$(commit_stats)"
    stop_service

    STREAM="RATIO_$$_$trial"
    SUBJECT="ratio$$t$trial"
    STREAMS+=("$STREAM")
    "$BIN" loadgen --url http://127.0.0.1:1 --quiet --json --target nats --nats-url "$NATS_URL" \
        --nats-stream "$STREAM" --nats-subjects "$SUBJECT.>" --subject "$SUBJECT.events" \
        --count "$EVENTS" --seed 2 >/dev/null 2>>"$WORK/loadgen.log"
    EXTRA_CONFIG="nats:
  servers: [\"$NATS_URL\"]
  stream: \"$STREAM\"
  subjects: [\"$SUBJECT.>\"]
  durable: \"bench\"
${NATS_EXTRA:-}" start_service "nats$trial"
    [ -n "${ON_NATS_START:-}" ] && eval "$ON_NATS_START"
    SERVICE_TICKS="$(cpu_ticks "$SERVICE_PID")"
    SERVER_TICKS="$(cpu_ticks "$NATS_SERVER_PID")"
    IDLE_TICKS="$(idle_ticks)"
    NATS_START_NS="$(date +%s%N)"
    NATS_EPS="$(consume_rate nats "$EVENTS")"
    SERVICE_TICKS="$(( $(cpu_ticks "$SERVICE_PID") - SERVICE_TICKS ))"
    SERVER_TICKS="$(( $(cpu_ticks "$NATS_SERVER_PID") - SERVER_TICKS ))"
    IDLE_TICKS="$(( $(idle_ticks) - IDLE_TICKS ))"
    NATS_WALL_S="$(awk -v ns="$(( $(date +%s%N) - NATS_START_NS ))" 'BEGIN {printf "%.2f", ns / 1e9}')"
    NATS_COMMITS="$(commit_stats)"
    stop_service
    nats_delete_stream "$STREAM"
    echo "   http: $BASE_COMMITS; nats: $NATS_COMMITS; nats phase ${NATS_WALL_S}s wall, machine idle $(awk -v i="$IDLE_TICKS" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", i / hz}') cpu-s"
    awk -v t="$trial" -v b="$BASE_EPS" -v n="$NATS_EPS" -v s="$SERVICE_TICKS" -v g="$SERVER_TICKS" -v hz="$(getconf CLK_TCK)" -v h="$BASE_TICKS" \
        'BEGIN {printf "%d %.0f %.0f %.1f (cpu s: http service %.2f; nats service %.2f, nats-server %.2f)\n", t, b, n, 100 * n / b, h / hz, s / hz, g / hz}'
done
