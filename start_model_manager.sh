#!/usr/bin/env bash
# Compatibility entry point kept for existing deployments and scripts.
#
#   ./start_model_manager.sh --init-password P [OPTIONS]   set the first password, then exit
#   ./start_model_manager.sh --set-password P [OPTIONS]    change it (revokes every token), then exit
#   ./start_model_manager.sh [SERVE OPTIONS]               run `model-manager serve` in the foreground
#
# OPTIONS after a password flag go to `model-manager password init|set` (e.g. --data-dir D). The password
# reaches the CLI on stdin, never on its command line; prefer `model-manager password init` (it prompts)
# where a shell history or process list should not see it. Settings come from MODEL_MANAGER_* variables
# as for the CLI; see `model-manager serve --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLI="$ROOT/.venv/bin/model-manager"

if [ ! -x "$CLI" ]; then
    printf 'start_model_manager.sh: error: model-manager is not installed in .venv: run ./setup.sh first\n' >&2
    exit 2
fi

password_action() {  # init|set PASSWORD [OPTIONS...]
    local action="$1" password="$2"
    shift 2
    printf '%s\n' "$password" | "$CLI" password "$action" --password-stdin "$@"
}

case "${1:-}" in
    -h|--help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
        exit 0 ;;
    --init-password|--set-password)
        flag="$1"
        action="init"
        [ "$flag" = --set-password ] && action="set"
        if [ $# -lt 2 ] || [ -z "$2" ]; then
            printf 'start_model_manager.sh: error: %s needs the password as its value: %s PASSWORD\n' "$flag" "$flag" >&2
            exit 2
        fi
        password="$2"
        shift 2
        password_action "$action" "$password" "$@"
        exit $? ;;
    --init-password=*|--set-password=*)
        action="init"
        case "$1" in --set-password=*) action="set" ;; esac
        password="${1#*=}"
        shift
        if [ -z "$password" ]; then
            printf 'start_model_manager.sh: error: the password is empty: give one after the "="\n' >&2
            exit 2
        fi
        password_action "$action" "$password" "$@"
        exit $? ;;
esac

export PYTHONUNBUFFERED=1
exec "$CLI" serve "$@"
