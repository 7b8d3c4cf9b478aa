#!/usr/bin/env bash
# Start the model-manager server in the background and wait until it answers.
#
# Usage: ./start.sh [--web-host H] [--web-port P] [--data-dir D] [--demo]
#
#   --web-host H   interface to bind (MODEL_MANAGER_HTTP_HOST, default 0.0.0.0)
#   --web-port P   TCP port (MODEL_MANAGER_HTTP_PORT, default 6300)
#   --data-dir D   database and cache directory (MODEL_MANAGER_DATA_DIR, default: the per-user app dir)
#   --demo         generate the demo model directory once and register it as "demo"
#
# Flags win over MODEL_MANAGER_* environment variables, which win over ecosystem.config.js.
# Runs under pm2 when it is available (.tools/ from ./setup.sh, or pm2 on PATH; PM2_HOME is honoured),
# otherwise as a background process with run/model-manager.pid and logs/model-manager.log.
#
# Environment: MODEL_MANAGER_NO_PM2=1 never uses pm2; MODEL_MANAGER_RUN_DIR=DIR keeps run/ and logs/
# under DIR instead of this directory; MODEL_MANAGER_START_TIMEOUT=S waits up to S seconds (default 60).
# Stop with ./stop.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"
VENV_BIN="$ROOT/.venv/bin"
LOG_FILE="$RUN_BASE/logs/$APP.log"
PM2_OUT="$RUN_BASE/logs/$APP.out.log"
PM2_ERR="$RUN_BASE/logs/$APP.err.log"
TIMEOUT="${MODEL_MANAGER_START_TIMEOUT:-60}"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { printf 'start.sh: error: %s\n' "$*" >&2; exit "${2:-1}"; }
usage_error() { printf 'start.sh: error: %s (see ./start.sh --help)\n' "$*" >&2; exit 2; }

# --- options -------------------------------------------------------------------------------------
SERVE_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --web-host|--web-port|--data-dir)
            [ $# -ge 2 ] && [ -n "$2" ] || usage_error "$1 needs a value"
            case "$1" in
                --web-host) export MODEL_MANAGER_HTTP_HOST="$2" ;;
                --web-port) export MODEL_MANAGER_HTTP_PORT="$2" ;;
                --data-dir) export MODEL_MANAGER_DATA_DIR="$2" ;;
            esac
            shift 2 ;;
        --web-host=*) export MODEL_MANAGER_HTTP_HOST="${1#*=}"; shift ;;
        --web-port=*) export MODEL_MANAGER_HTTP_PORT="${1#*=}"; shift ;;
        --data-dir=*) export MODEL_MANAGER_DATA_DIR="${1#*=}"; shift ;;
        --demo) SERVE_ARGS+=(--demo); shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown option $1" ;;
    esac
done

HOST="${MODEL_MANAGER_HTTP_HOST:-0.0.0.0}"
PORT="${MODEL_MANAGER_HTTP_PORT:-6300}"
case "$PORT" in
    ''|*[!0-9]*) usage_error "port '$PORT' is not a number: use --web-port 1-65535" ;;
esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || usage_error "port $PORT is out of range: use 1-65535"
if [ -n "${MODEL_MANAGER_DATA_DIR:-}" ]; then
    case "$MODEL_MANAGER_DATA_DIR" in
        /*) ;;
        *) export MODEL_MANAGER_DATA_DIR="$PWD/$MODEL_MANAGER_DATA_DIR" ;;  # pm2 runs from another cwd
    esac
fi
case "$HOST" in
    0.0.0.0|'') PROBE_HOST="127.0.0.1" ;;
    ::|'[::]') PROBE_HOST="[::1]" ;;
    *:*) PROBE_HOST="[${HOST#[}"; PROBE_HOST="${PROBE_HOST%]}]" ;;
    *) PROBE_HOST="$HOST" ;;
esac
URL="http://$PROBE_HOST:$PORT"

[ -x "$VENV_BIN/model-manager" ] || die "model-manager is not installed in .venv: run ./setup.sh first"
export PYTHONUNBUFFERED=1

# --- helpers -------------------------------------------------------------------------------------

healthy() {
    "$VENV_BIN/python" - "$URL/healthz" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
with opener.open(sys.argv[1], timeout=2) as response:
    sys.exit(0 if response.status == 200 else 1)
EOF
}

# Lines each log gained since this start (LOGS_WITH_OFFSETS holds the sizes before it).
new_log_lines() {  # FILE OFFSET ...
    while [ $# -ge 2 ]; do
        if [ -s "$1" ]; then tail -c +"$(( $2 + 1 ))" "$1"; fi
        shift 2
    done
}

show_log_tail() {
    local lines
    lines="$(new_log_lines "${LOGS_WITH_OFFSETS[@]}" | tail -n 25)"
    if [ -n "$lines" ]; then
        echo "---- last log lines ----"
        printf '%s\n' "$lines"
        echo "------------------------"
    else
        echo "(the server wrote nothing to its log: ${LOGS[*]})"
    fi
}

STARTED=""
cleanup_failed_start() {
    [ -n "$STARTED" ] || return 0
    MODEL_MANAGER_QUIET_STOP=1 "$ROOT/stop.sh" >/dev/null 2>&1 || true
}

fail_start() {
    printf 'start.sh: error: %s\n' "$1" >&2
    show_log_tail >&2
    cleanup_failed_start
    exit 1
}

trap 'echo "start.sh: interrupted, stopping the server" >&2; cleanup_failed_start; exit 130' INT TERM

# --- refuse to start twice -----------------------------------------------------------------------
if [ -f "$PID_FILE" ]; then
    old_pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if alive "$old_pid" && is_model_manager "$old_pid"; then
        die "model-manager is already running (pid $old_pid, $PID_FILE): stop it first with ./stop.sh"
    fi
    rm -f "$PID_FILE"  # stale: the process is gone
fi
if [ -n "$PM2" ]; then
    "$PM2" ping >/dev/null 2>&1 || die "pm2 does not answer ($PM2 ping failed): check PM2_HOME, or set MODEL_MANAGER_NO_PM2=1"
    read -r state _restarts _pid <<<"$(pm2_state)" || true
    case "${state:-}" in
        '') ;;
        online|launching) die "model-manager is already running under pm2 (pm2 status: $state): stop it first with ./stop.sh" ;;
        *) "$PM2" delete "$APP" >/dev/null 2>&1 || true ;;  # a stopped/errored leftover: start afresh
    esac
fi

# Fail early and clearly when the address is taken (another server, an old instance under other control).
if ! bind_error="$("$VENV_BIN/python" - "$HOST" "$PORT" <<'EOF' 2>&1
import errno, socket, sys
host, port = sys.argv[1] or "0.0.0.0", int(sys.argv[2])
host = host.strip("[]")
try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
except OSError as exc:
    if getattr(exc, "errno", None) == errno.EADDRINUSE:
        print(f"port {port} on {host} is already in use: stop what listens there or choose another port with --web-port")
    else:
        print(f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --web-host / MODEL_MANAGER_HTTP_HOST")
    sys.exit(1)
EOF
)"; then
    die "$bind_error"
fi

# --- start ---------------------------------------------------------------------------------------
mkdir -p "$RUN_BASE/run" "$RUN_BASE/logs"
if [ -n "$PM2" ]; then
    MODE="pm2"
    LOGS=("$PM2_ERR" "$PM2_OUT")
else
    MODE="background"
    LOGS=("$LOG_FILE")
fi
LOGS_WITH_OFFSETS=()
for f in "${LOGS[@]}"; do
    size=0
    if [ -f "$f" ]; then size="$(wc -c <"$f")"; fi
    LOGS_WITH_OFFSETS+=("$f" "$size")
done

echo "starting model-manager on $HOST:$PORT ($MODE)..."
if [ "$MODE" = pm2 ]; then
    export MODEL_MANAGER_RUN_DIR="$RUN_BASE"
    export MODEL_MANAGER_SERVE_ARGS="${SERVE_ARGS[*]:-}"
    if ! pm2_out="$("$PM2" start "$ROOT/ecosystem.config.js" --only "$APP" 2>&1)"; then
        STARTED=1
        fail_start "pm2 could not start the app: $(printf '%s' "$pm2_out" | tail -n 5)"
    fi
    STARTED=1
    PID=""
    for _ in $(seq 1 40); do  # pm2 reports the pid once the process is spawned
        read -r state _restarts PID <<<"$(pm2_state)" || true
        alive "${PID:-}" && break
        case "${state:-}" in errored|stopped) break ;; esac
        sleep 0.25
    done
    alive "${PID:-}" || fail_start "the server exited right after starting (pm2 status: ${state:-unknown})"
else
    # Job control gives the server its own process group (so stop.sh can reach all of it) and keeps
    # SIGINT deliverable; nohup keeps it alive when this terminal closes.
    set -m
    nohup "$VENV_BIN/model-manager" serve ${SERVE_ARGS[@]+"${SERVE_ARGS[@]}"} >>"$LOG_FILE" 2>&1 </dev/null &
    PID=$!
    set +m
    disown "$PID" 2>/dev/null || true
    echo "$PID" >"$PID_FILE"
    STARTED=1
fi

# --- wait for /healthz ---------------------------------------------------------------------------
deadline=$(( SECONDS + TIMEOUT ))
until healthy; do
    alive "$PID" || fail_start "the server exited during startup (see the log lines below)"
    if [ "$SECONDS" -ge "$deadline" ]; then
        fail_start "no answer from $URL/healthz after ${TIMEOUT}s (raise MODEL_MANAGER_START_TIMEOUT if loading is slow)"
    fi
    sleep 0.5
done
alive "$PID" || fail_start "the server exited during startup (see the log lines below)"
trap - INT TERM

# --- report --------------------------------------------------------------------------------------
shown() { case "$1" in "$PWD"/*) echo "${1#"$PWD"/}" ;; *) echo "$1" ;; esac; }
echo "model-manager is running ($MODE, pid $PID)"
echo "  UI:    $URL/"
echo "  API:   $URL/api  (docs: $URL/schema, OpenAPI JSON: $URL/schema/openapi.json)"
if [ "$HOST" = "0.0.0.0" ] || [ "$HOST" = "::" ]; then
    echo "         listening on all interfaces ($HOST:$PORT)"
fi
if [ "$MODE" = pm2 ]; then
    echo "  logs:  $(shown "$PM2_ERR") (and .out.log), or: $(shown "$PM2") logs $APP"
else
    echo "  logs:  $(shown "$LOG_FILE")"
fi
echo "  stop:  ./stop.sh"

initialized="$("$VENV_BIN/python" - "$URL/api/auth/status" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=5) as response:
    print("yes" if json.load(response).get("initialized") else "no")
EOF
)"
if [ "$initialized" = no ]; then
    echo
    code="$(new_log_lines "${LOGS_WITH_OFFSETS[@]}" | grep -o -i 'setup code: *[A-Z0-9-]*' | tail -n 1 \
            | sed 's/.*: *//' || true)"
    if [ -n "$code" ]; then
        echo "No password is set yet. Open this link to set it (it carries the one-time setup code $code):"
        echo "  $URL/#setup=$code"
        echo "or run:"
    else
        echo "No password is set yet. Open $URL/ to set it (it asks for the setup code in the log), or run:"
    fi
    if [ -n "${MODEL_MANAGER_DATA_DIR:-}" ]; then
        # shell-quoted, so the line works pasted as it is whatever the path holds
        echo "  .venv/bin/model-manager password init --data-dir $(printf '%q' "$MODEL_MANAGER_DATA_DIR")"
    else
        echo "  .venv/bin/model-manager password init"
    fi
fi
