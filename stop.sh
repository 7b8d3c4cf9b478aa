#!/usr/bin/env bash
# Stop the model-manager server started by ./start.sh, whichever way it runs (pm2 or a background
# process), gracefully: SIGINT, a wait for a clean shutdown, then SIGKILL as a last resort.
# Nothing running is not an error (exit 0).
#
# Environment (as for ./start.sh): MODEL_MANAGER_RUN_DIR, MODEL_MANAGER_NO_PM2=1, PM2_HOME;
# MODEL_MANAGER_STOP_TIMEOUT=S seconds to wait after SIGINT (default 10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
APP="model-manager"
RUN_BASE="${MODEL_MANAGER_RUN_DIR:-$ROOT}"
PID_FILE="$RUN_BASE/run/$APP.pid"
GRACE="${MODEL_MANAGER_STOP_TIMEOUT:-10}"
QUIET="${MODEL_MANAGER_QUIET_STOP:-0}"

case "${1:-}" in
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    '') ;;
    *) printf 'stop.sh: error: unknown option %s (see ./stop.sh --help)\n' "$1" >&2; exit 2 ;;
esac

say() { [ "$QUIET" = 1 ] || echo "$*"; }
alive() { [ -n "$1" ] && [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; }

command_of() {
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\0' ' ' <"/proc/$1/cmdline"
    else
        ps -o args= -p "$1" 2>/dev/null || true
    fi
}

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
    if alive "$pid" && [[ "$(command_of "$pid")" == *model-manager* ]]; then
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
PM2=""
if [ "${MODEL_MANAGER_NO_PM2:-0}" != 1 ]; then
    if [ -x "$ROOT/.tools/node_modules/.bin/pm2" ]; then
        PM2="$ROOT/.tools/node_modules/.bin/pm2"
    elif command -v pm2 >/dev/null 2>&1; then
        PM2="$(command -v pm2)"
    fi
fi
PM2_DIR="${PM2_HOME:-$HOME/.pm2}"
# Only ask pm2 when its daemon runs: asking would otherwise start one.
if [ -n "$PM2" ] && [ -f "$PM2_DIR/pm2.pid" ] && alive "$(cat "$PM2_DIR/pm2.pid" 2>/dev/null || true)"; then
    read -r state _restarts pid <<<"$("$PM2" jlist 2>/dev/null | node -e '
        let text = "";
        process.stdin.on("data", (d) => (text += d)).on("end", () => {
            for (const line of text.split("\n")) {
                if (!line.startsWith("[")) continue;
                let list;
                try { list = JSON.parse(line); } catch (e) { continue; }
                for (const p of list) {
                    if (p.name === process.argv[1]) console.log(`${p.pm2_env.status} ${p.pm2_env.restart_time} ${p.pid}`);
                }
            }
        });' "$APP")" || true
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
