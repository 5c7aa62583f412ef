# Shell functions shared by scripts/bench.sh and scripts/nats-ratio.sh
# (sourced, not run). They use SERVICE_PID and NATS_URL of the caller.

# free_port: a free loopback TCP port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# stop_service_process: SIGTERM to SERVICE_PID, a bounded wait for the
# drain (10 s), then SIGKILL; clears SERVICE_PID.
stop_service_process() {
    if [ -n "$SERVICE_PID" ]; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVICE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
        SERVICE_PID=""
    fi
}

# nats_delete_stream NAME: deletes a JetStream stream the run made, over the
# NATS protocol itself ($JS.API.STREAM.DELETE), so no client is needed.
nats_delete_stream() {
    local hostport="${NATS_URL#nats://}"
    (
        exec 3<>"/dev/tcp/${hostport%:*}/${hostport#*:}" || exit 0
        printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.bench 1\r\nPUB $JS.API.STREAM.DELETE.%s _INBOX.bench 0\r\n\r\nPING\r\n' "$1" >&3
        timeout 2 head -c 4096 <&3 >/dev/null || true
    ) 2>/dev/null
}

# write_service_config DIR [DATABASE_YAML]: picks API_PORT and METRICS_PORT
# and writes DIR/config.yaml for a benchmarked service (sets CONFIG): a
# fresh SQLite file in DIR unless DATABASE_YAML (a whole `database:`
# section) says otherwise, room for a few 10 000-event batches at once (the
# default buffer holds exactly one: a second concurrent batch is answered
# 503), warnings only, then EXTRA_CONFIG.
write_service_config() {
    local dir="$1" database="${2:-}"
    API_PORT="$(free_port)"
    METRICS_PORT="$(free_port)"
    while [ "$METRICS_PORT" = "$API_PORT" ]; do METRICS_PORT="$(free_port)"; done
    mkdir -p "$dir"
    [ -n "$database" ] || database="database:
  path: \"$dir/analytics.db\""
    CONFIG="$dir/config.yaml"
    cat > "$CONFIG" <<EOF
server:
  host: "127.0.0.1"
  port: $API_PORT
metrics:
  port: $METRICS_PORT
$database
analytics:
  ingestion:
    buffer_size: 50000
logging:
  level: warn
  output: stderr
${EXTRA_CONFIG:-}
EOF
}

# committed_rate SOURCE COUNT: waits until the running service at URL has
# committed COUNT events from SOURCE (bounded: 600 s); prints the events/s
# from the first commit seen to the last. The polls (every 20 ms) go over
# one keep-alive connection of `analytics bench-committed` (BIN): a curl
# and a shell loop per poll took about a tenth of a two-core machine during
# the phase measured, which an HTTP baseline timed by the load generator
# does not pay. A timeout still prints its report (complete: false); the
# error goes to WORK/loadgen.log.
committed_rate() {
    local report
    report="$("$BIN" bench-committed --url "$URL" --source "$1" --count "$2" 2>>"$WORK/loadgen.log")" || true
    [ -n "$report" ] || report='{}'
    jq -r '.events_per_second // 0 | floor' <<<"$report"
}
