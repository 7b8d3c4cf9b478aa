#!/usr/bin/env bash
# Stop the model-manager server started by ./start.sh, whichever way it runs (pm2 or a background
# process), gracefully: SIGINT, a wait for a clean shutdown, then SIGKILL as a last resort.
# Nothing running is not an error (exit 0).
#
# Environment (as for ./start.sh): MODEL_MANAGER_RUN_DIR, MODEL_MANAGER_NO_PM2=1, PM2_HOME;
# MODEL_MANAGER_STOP_TIMEOUT=S seconds to wait after SIGINT (default 10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"
GRACE="${MODEL_MANAGER_STOP_TIMEOUT:-10}"
QUIET="${MODEL_MANAGER_QUIET_STOP:-0}"

case "${1:-}" in
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    '') ;;
    *) printf 'stop.sh: error: unknown option %s (see ./stop.sh --help)\n' "$1" >&2; exit 2 ;;
esac

say() { [ "$QUIET" = 1 ] || echo "$*"; }
# Wait up to $2 seconds for process $1 to exit; true when it did.
wait_gone() {
    local pid="$1" tenths=$(( $2 * 10 ))
    while alive "$pid"; do
        [ "$tenths" -gt 0 ] || return 1
        sleep 0.1
        tenths=$(( tenths - 1 ))
    done
}

# Same for every process of process group $1.
wait_group_gone() {
    local group="$1" tenths=$(( $2 * 10 ))
    while kill -0 -- "-$group" 2>/dev/null; do
        [ "$tenths" -gt 0 ] || return 1
        sleep 0.1
        tenths=$(( tenths - 1 ))
    done
}

STOPPED=0

# --- a background process (pid file) -------------------------------------------------------------
if [ -f "$PID_FILE" ]; then
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if is_model_manager "$pid"; then
        say "stopping model-manager (pid $pid): SIGINT, waiting up to ${GRACE}s..."
        kill -INT "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" "$GRACE"; then
            say "still running after ${GRACE}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 5 || true
        fi
        # start.sh made the server a process-group leader: its worker processes follow it out;
        # end any that linger.
        if ! wait_group_gone "$pid" 3; then
            kill -TERM -- "-$pid" 2>/dev/null || true
            wait_group_gone "$pid" 3 || kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        say "stopped model-manager (pid $pid)"
        STOPPED=1
    elif [ -n "$pid" ]; then
        say "removing a stale pid file (pid $pid is not a running model-manager)"
    fi
    rm -f "$PID_FILE"
fi

# --- pm2 -----------------------------------------------------------------------------------------
# Only ask pm2 when its daemon runs: asking would otherwise start one.
if [ -n "$PM2" ] && [ -f "$PM2_DIR/pm2.pid" ] && alive "$(cat "$PM2_DIR/pm2.pid" 2>/dev/null || true)"; then
    read -r state _restarts pid <<<"$(pm2_state)" || true
    if [ -n "${state:-}" ]; then
        if alive "${pid:-}"; then
            say "stopping model-manager under pm2 (pid $pid): SIGINT, then SIGKILL after the kill_timeout..."
        fi
        "$PM2" delete "$APP" >/dev/null 2>&1 || true
        if alive "${pid:-}" && ! wait_gone "$pid" "$GRACE"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        if [ "$state" = online ] || [ "$state" = launching ]; then
            say "stopped model-manager (pm2 app deleted)"
        else
            say "removed the pm2 app model-manager (it was $state)"
        fi
        STOPPED=1
    fi
fi

if [ "$STOPPED" = 0 ]; then
    say "model-manager is not running: nothing to stop"
fi
exit 0
