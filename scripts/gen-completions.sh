#!/usr/bin/env bash
# Regenerate the shell completion scripts in completions/ from the CLI itself (Typer's generator).
# Run after adding or renaming commands, or after upgrading Typer; tests/test_completions.py fails
# when the committed files differ from what this produces.
#
# Usage: scripts/gen-completions.sh [OUTPUT_DIR]     (default: completions/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLI="$ROOT/.venv/bin/model-manager"
OUT="${1:-$ROOT/completions}"

[ -x "$CLI" ] || { echo "gen-completions.sh: error: $CLI is missing: run ./setup.sh first" >&2; exit 2; }
mkdir -p "$OUT"

generate() {  # SHELL FILE
    local tmp="$OUT/.$2.tmp"
    # The env var selects Typer's completion mode; the program name written into the script is
    # the console script's name, model-manager.
    if ! _MODEL_MANAGER_COMPLETE="source_$1" "$CLI" >"$tmp"; then
        rm -f "$tmp"
        echo "gen-completions.sh: error: model-manager failed to produce the $1 completion script" >&2
        exit 1
    fi
    [ -s "$tmp" ] || { rm -f "$tmp"; echo "gen-completions.sh: error: the $1 completion script is empty" >&2; exit 1; }
    mv "$tmp" "$OUT/$2"
    echo "wrote ${OUT#"$ROOT"/}/$2"
}

generate bash model-manager.bash
generate zsh _model-manager
generate fish model-manager.fish
