#!/usr/bin/env bash
# Install model-manager for this checkout: .venv with the package (editable, dev extras) and, when npm is
# available and pm2 is not on PATH, a project-local pm2 under .tools/. Safe to run again: it only redoes
# what is missing or out of date (the package is reinstalled when pyproject.toml changes).
#
#   ./setup.sh            quiet, one line per step
#   ./setup.sh -v         show pip and npm output
#
# Environment: PYTHON=/path/to/python3.11+ picks the interpreter that builds .venv;
# MODEL_MANAGER_NO_PM2=1 skips the pm2 install; MODEL_MANAGER_NO_JEMALLOC=1 skips the jemalloc install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.model-manager-setup"
TOOLS="$ROOT/.tools"
MIN_MAJOR=3
MIN_MINOR=11
VERBOSE=0

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

for arg in "$@"; do
    case "$arg" in
        -v|--verbose) VERBOSE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'setup.sh: error: unknown option %s (try ./setup.sh --help)\n' "$arg" >&2; exit 2 ;;
    esac
done

# Run a command quietly; on failure show the end of its output so the cause is visible.
run_quiet() {
    local log
    if [ "$VERBOSE" = 1 ]; then
        "$@"
        return
    fi
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        echo "---- last lines of: $* ----" >&2
        tail -n 40 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# Prints "MAJOR.MINOR" of an interpreter, or nothing when it cannot run.
py_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

py_ok() {
    local version major minor
    version="$(py_version "$1")"
    [ -n "$version" ] || return 1
    major="${version%%.*}"
    minor="${version#*.}"
    [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

find_python() {
    local candidate found=""
    if [ -n "${PYTHON:-}" ]; then
        py_ok "$PYTHON" && { echo "$PYTHON"; return 0; }
        die "PYTHON=$PYTHON is Python $(py_version "$PYTHON" | sed 's/^$/(not runnable)/'); model-manager needs Python >= $MIN_MAJOR.$MIN_MINOR: point PYTHON at a newer interpreter"
    fi
    for candidate in python3.13 python3.12 python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && py_ok "$candidate"; then
            found="$(command -v "$candidate")"
            break
        fi
    done
    if [ -z "$found" ]; then
        local seen=""
        for candidate in python3 python; do
            command -v "$candidate" >/dev/null 2>&1 && seen="$seen $candidate=$(py_version "$candidate")"
        done
        die "model-manager needs Python >= $MIN_MAJOR.$MIN_MINOR (found:${seen:- none}). Install it, e.g. 'sudo apt-get install python3.11 python3.11-venv' on Debian/Ubuntu or 'brew install python@3.12' on macOS, or set PYTHON=/path/to/python3.11"
    fi
    echo "$found"
}

# --- 1. the virtualenv -------------------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && py_ok "$VENV/bin/python"; then
    say "Python $(py_version "$VENV/bin/python") in .venv"
else
    PY="$(find_python)"
    if [ -e "$VENV" ]; then
        say "recreating .venv (the existing one has no working Python >= $MIN_MAJOR.$MIN_MINOR)"
        rm -rf "$VENV"
    fi
    if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        die "$PY cannot create virtual environments: install its venv module (Debian/Ubuntu: 'sudo apt-get install python3-venv', or python3.X-venv for your version)"
    fi
    say "creating .venv with $PY (Python $(py_version "$PY"))"
    run_quiet "$PY" -m venv "$VENV" || die "could not create .venv with $PY (see the lines above)"
    rm -f "$STAMP"
fi

# --- 2. the package ------------------------------------------------------------------------------
# The stamp records what was installed: pyproject.toml's content and the venv's Python. The install is
# editable, so code changes need no reinstall; dependency changes (pyproject.toml) do.
want_stamp="$(cat pyproject.toml; "$VENV/bin/python" -c 'import sys; print(sys.version)')"
want_stamp="$(printf '%s' "$want_stamp" | cksum)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && [ -x "$VENV/bin/model-manager" ]; then
    say "model-manager package up to date in .venv"
else
    say "installing model-manager and its dependencies into .venv (pip, a few minutes the first time)"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    run_quiet "$VENV/bin/python" -m pip install -e '.[dev]' \
        || die "pip install -e '.[dev]' failed (see the lines above; is the package index reachable?)"
    printf '%s\n' "$want_stamp" >"$STAMP"
    say "installed model-manager $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("model-manager"))')"
fi
# An editable install leaves the package's bytecode to the first import, which cannot write it where
# PYTHONDONTWRITEBYTECODE is set: every start would compile the package again (0.2 CPU-s a process).
# Compiled here, as pip compiles a regular install; up-to-date files are skipped.
"$VENV/bin/python" -m compileall -q model_manager >/dev/null || die "model_manager does not compile (see python -m compileall model_manager)"

# --- 3. jemalloc (optional) ----------------------------------------------------------------------
# The model check process runs with jemalloc when the system has it: XGBoost loads a model's JSON
# through many small allocations, and with jemalloc a check takes 12-25 % less CPU (bench/README.md,
# item 38). Debian/Ubuntu package libjemalloc2, installed when apt-get can run (as root, or through
# sudo without a password); without it the checks use glibc's malloc, as before.
jemalloc_found() {
    "$VENV/bin/python" -c 'import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library("jemalloc") else 1)' 2>/dev/null
}
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    run_quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
        || { run_quiet $sudo apt-get update \
             && run_quiet $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; }
}
if [ "${MODEL_MANAGER_NO_JEMALLOC:-0}" = 1 ]; then
    say "jemalloc: skipped (MODEL_MANAGER_NO_JEMALLOC=1); model checks use glibc's malloc"
elif jemalloc_found; then
    say "jemalloc found: model checks use it"
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    say "installing libjemalloc2 (apt-get): model checks take less CPU with it"
    if apt_install libjemalloc2 && jemalloc_found; then
        say "libjemalloc2 installed"
    else
        say "jemalloc: libjemalloc2 could not be installed (see above); model checks use glibc's malloc"
    fi
else
    say "jemalloc: not installed (no apt-get, or no root); install libjemalloc2 for faster model checks"
fi

# --- 4. pm2 (optional) ---------------------------------------------------------------------------
PM2_LOCAL="$TOOLS/node_modules/.bin/pm2"
# Read from package.json: asking pm2 itself may spawn its daemon.
pm2_version() {
    sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$TOOLS/node_modules/pm2/package.json" 2>/dev/null | head -n 1
}
if [ "${MODEL_MANAGER_NO_PM2:-0}" = 1 ]; then
    say "pm2: skipped (MODEL_MANAGER_NO_PM2=1); ./start.sh will run a background process"
elif [ -x "$PM2_LOCAL" ]; then
    say "pm2 $(pm2_version) in .tools"
elif command -v pm2 >/dev/null 2>&1; then
    say "pm2 found on PATH: $(command -v pm2)"
elif command -v npm >/dev/null 2>&1; then
    say "installing pm2 into .tools (npm, project-local)"
    mkdir -p "$TOOLS"
    run_quiet npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error pm2@7 \
        || die "npm install pm2 failed (see the lines above); set MODEL_MANAGER_NO_PM2=1 to go without pm2"
    say "pm2 $(pm2_version) installed in .tools"
else
    say "pm2: not installed (no npm); ./start.sh will run a background process instead"
fi

say "ready: ./start.sh --demo starts the server with a demo model; ./test.sh runs the tests"
