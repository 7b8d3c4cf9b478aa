# Shared by start.sh and stop.sh (sourced, not run): where things live, how pm2 is found, and how a
# process is recognised as ours. Expects ROOT (the repository) to be set.

APP="model-manager"
RUN_BASE="${MODEL_MANAGER_RUN_DIR:-$ROOT}"
PID_FILE="$RUN_BASE/run/$APP.pid"

# The pm2 to use: the project-local one from ./setup.sh, else one on PATH; none with MODEL_MANAGER_NO_PM2=1.
PM2=""
if [ "${MODEL_MANAGER_NO_PM2:-0}" != 1 ]; then
    if [ -x "$ROOT/.tools/node_modules/.bin/pm2" ]; then
        PM2="$ROOT/.tools/node_modules/.bin/pm2"
    elif command -v pm2 >/dev/null 2>&1; then
        PM2="$(command -v pm2)"
    fi
fi
PM2_DIR="${PM2_HOME:-$HOME/.pm2}"

# "status restarts pid" of our pm2 app, or nothing when pm2 does not know it.
pm2_state() {
    "$PM2" jlist 2>/dev/null | node -e '
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
        });' "$APP"
}

alive() { [ -n "$1" ] && [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; }

# The command line of pid $1 (empty when it is gone).
command_of() {
    if [ -r "/proc/$1/cmdline" ]; then
        tr '\0' ' ' <"/proc/$1/cmdline"
    else
        ps -o args= -p "$1" 2>/dev/null || true
    fi
}

# True when pid $1 runs model-manager (a pid file may outlive its process, and pids get reused).
is_model_manager() { alive "$1" && [[ "$(command_of "$1")" == *model-manager* ]]; }
