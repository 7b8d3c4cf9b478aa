"""The shipped shell completions match the CLI, and they complete real commands and options."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support import REPO

FILES = ["model-manager.bash", "_model-manager", "model-manager.fish"]
BIN = REPO / ".venv" / "bin"


def completion_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def test_completions_match_the_cli(tmp_path):
    result = subprocess.run([str(REPO / "scripts" / "gen-completions.sh"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    drifted = [name for name in FILES
               if not (REPO / "completions" / name).exists()
               or (REPO / "completions" / name).read_bytes() != (tmp_path / name).read_bytes()]
    assert not drifted, f"completions/ is out of date ({', '.join(drifted)}): run scripts/gen-completions.sh"


def bash_complete(*words: str) -> list[str]:
    """What bash offers after typing `words` (the last one being completed), via the shipped script."""
    script = (
        f"source {REPO / 'completions' / 'model-manager.bash'}\n"
        f"COMP_WORDS=({' '.join(words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_model_manager_completion model-manager\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                            env=completion_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_commands_and_options():
    assert "inspect" in bash_complete("model-manager", "ins")
    assert {"serve", "register", "password"} <= set(bash_complete("model-manager", "''"))
    options = bash_complete("model-manager", "inspect", "--s")
    assert "--symbol" in options and "--strict" in options
    assert "--port" in bash_complete("model-manager", "serve", "--p")


def test_fish_and_zsh_protocols_answer():
    """The fish and zsh scripts call the CLI back with these variables; the answers name real commands."""
    fish = subprocess.run([str(BIN / "model-manager")], capture_output=True, text=True, timeout=60, env=completion_env(
        _MODEL_MANAGER_COMPLETE="complete_fish", _TYPER_COMPLETE_FISH_ACTION="get-args",
        _TYPER_COMPLETE_ARGS="model-manager conv"))
    assert fish.returncode == 0, fish.stderr
    assert "convert" in fish.stdout
    zsh = subprocess.run([str(BIN / "model-manager")], capture_output=True, text=True, timeout=60, env=completion_env(
        _MODEL_MANAGER_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="model-manager serve --h"))
    assert zsh.returncode == 0, zsh.stderr
    assert "--host" in zsh.stdout


def test_fish_completes_with_the_shipped_script():
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed (./test.sh installs it on Debian); the protocol test covers the CLI side")
    script = (f"source {REPO / 'completions' / 'model-manager.fish'}; "
              'complete -C "model-manager ins"; complete -C "model-manager inspect --st"')
    result = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True,
                            env=completion_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    offered = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "inspect" in offered and "--strict" in offered


def test_zsh_registers_the_shipped_script():
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (./test.sh installs it on Debian); the protocol test covers the CLI side")
    script = (f"autoload -U compinit && compinit -u -D; source {REPO / 'completions' / '_model-manager'}; "
              "print -r -- ${_comps[model-manager]}")
    result = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, env=completion_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "_model_manager_completion"
