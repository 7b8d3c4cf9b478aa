#!/usr/bin/env bash
# Run the test suite: ./test.sh [PYTEST ARGS...]   e.g. ./test.sh tests/test_ops.py -x -q
# With no arguments: ruff, then every test, spread over the cores (pytest-xdist, `-n N --dist loadfile`);
# chosen tests run in one process unless given `-n N` themselves.
#
# First makes sure the test-only system needs are there: the browser tests drive Debian's `chromium`
# package (never a downloaded browser build), the completion tests run zsh and fish. Missing ones are
# installed with apt-get when this runs as root or `sudo -n` works; otherwise this says what to install
# and the tests that need them are skipped.
# A pytest run that collects no test at all fails (exit 1) instead of passing silently.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"

say() { printf '==> %s\n' "$*"; }

[ -x "$PY" ] || { echo "test.sh: error: no .venv here: run ./setup.sh first" >&2; exit 2; }

find_chromium() {
    local candidate
    for candidate in chromium chromium-browser; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

install_packages() {  # Debian package names
    local sudo=() log
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$(id -u)" != 0 ]; then
        sudo -n true 2>/dev/null || return 1
        sudo=(sudo -n)
    fi
    say "installing test-only system packages with apt-get: $*"
    log="$(mktemp)"
    if ! { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
           && ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends "$@"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# chromium: the browser tests; zsh and fish: the completion scripts are exercised in their own shells.
missing=()
find_chromium >/dev/null || missing+=(chromium fonts-liberation)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
if [ "${#missing[@]}" -gt 0 ] && ! install_packages "${missing[@]}"; then
    echo "test.sh: warning: could not install ${missing[*]} (needs root or passwordless sudo, and apt-get);" \
         "the tests that need them will be skipped." >&2
    echo "test.sh: install them with: sudo apt-get install ${missing[*]}   (Debian/Ubuntu packages; no browser download)" >&2
fi
if chromium_path="$(find_chromium)"; then
    say "browser tests use $chromium_path"
fi

if [ "$#" = 0 ]; then  # a full run also lints, and runs the tests on every core (at most 4)
    say ".venv/bin/ruff check ."
    "$ROOT/.venv/bin/ruff" check . || { echo "test.sh: error: ruff found problems (fix them, or run .venv/bin/ruff check --fix .)" >&2; exit 1; }
    # most tests wait on real servers, timers and child processes rather than compute, so two at a
    # time halve the run even on two cores; a file's tests stay together (its fixtures are built once)
    cores="$(nproc 2>/dev/null || echo 1)"
    [ "$cores" -gt 4 ] && cores=4
    [ "$cores" -gt 1 ] && set -- -n "$cores" --dist loadfile
fi

# the suite starts hundreds of `model-manager` processes: each would compile the package from source
# where PYTHONDONTWRITEBYTECODE is set and its bytecode is out of date (see setup.sh)
"$PY" -m compileall -q model_manager >/dev/null || true

say ".venv/bin/python -m pytest $*"
set +e
"$PY" -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "test.sh: error: pytest collected no tests (check the paths and -k/-m filters given)" >&2
    exit 1
fi
exit "$status"
