"""What the CLI prints, as a user sees it: narrow terminals and pipes lose no data, every command that
prints data has --json, and every mistake is one line on stderr with the right exit code."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from model_manager.settings import ENV_TABLE
from tests.support import run_in_terminal, write_group

from .support import CLI, REPO, ServerProcess, http, run_cli
from .test_cli import assert_one_line_error

# factor names that share long prefixes: a table that cuts names shows them all as `realized_vo…`
FACTORS = ["realized_vol_5m_ewm_halflife_long", "realized_vol_30m_ewm_halflife_long", "realized_vol_60m_parkinson",
           "order_flow_imbalance_level_10", "order_flow_imbalance_level_20"]
IC_VALUES = [[0.291234, -0.112345, 0.187654, 5.123456], [-0.301122, 0.098765, -0.209876, -6.234567],
             [0.012345, 0.023456, 0.034567, 0.456789], [-0.045678, -0.056789, -0.067891, -1.234567],
             [0.078912, 0.089123, 0.091234, 2.345678]]
LONG_RETURN = "mid_chg_1m_vwap_adjusted_horizon"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def long_names_dir(tmp_path, models):
    d = tmp_path / "long-names"
    ic = "factor,ic,rank_ic,kendall_tau,ic_ir\n" + "".join(
        f"{f},{','.join(str(v) for v in values)}\n" for f, values in zip(FACTORS, IC_VALUES))
    write_group(d, f"SOLUSDT_{LONG_RETURN}", model=models["regressor"], factors=FACTORS, ic=ic)
    write_group(d, f"BTCUSDT_{LONG_RETURN}", model=models["booster"], factors=FACTORS, ic=ic)
    return d


def numbers() -> list[str]:
    return [f"{v:+.4f}" for row in IC_VALUES for v in row]


@pytest.mark.parametrize("columns", ["60", "80"])
def test_piped_tables_keep_every_name_and_number(long_names_dir, columns):
    env = {"COLUMNS": columns}
    groups = run_cli("inspect", str(long_names_dir), env=env)
    assert groups.returncode == 0, groups.stderr
    assert groups.stdout.count(LONG_RETURN) == 2 and "…" not in groups.stdout
    detail = run_cli("inspect", str(long_names_dir), "--symbol", "SOLUSDT", env=env)
    assert detail.returncode == 0, detail.stderr
    ic_part = detail.stdout.split("Factors (dimension order)")[0]
    for name in FACTORS:
        assert re.search(rf"^\s*{name}\s", ic_part, re.M), name  # whole, in the IC table
    for number in numbers():  # every metric of every factor, whole
        assert number in ic_part, number
    for out in (groups.stdout, detail.stdout):
        assert "…" not in out
        assert not [line for line in out.splitlines() if line != line.rstrip()], "trailing spaces on a piped line"
    assert "█" not in ic_part  # too narrow for the bars: the decoration goes, not the data
    wide = run_cli("inspect", str(long_names_dir), "--symbol", "SOLUSDT", env={"COLUMNS": "160"})
    assert "█" in wide.stdout


def test_a_narrow_terminal_drops_bars_then_columns_never_cuts(long_names_dir):
    # FORCE_COLOR makes rich treat the pipe as a terminal: the terminal layout, in a real process
    shown = run_cli("inspect", str(long_names_dir), "--symbol", "SOLUSDT", env={"COLUMNS": "60", "FORCE_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    out = ANSI.sub("", shown.stdout)
    ic_part = out.split("Factors (dimension order)")[0].split("IC ─")[1]
    assert "█" not in ic_part and "…" not in out
    for name in FACTORS:
        assert name in ic_part
    for values in IC_VALUES:  # the sorted metric (kendall_tau) stays, whole
        assert f"{values[2]:+.4f}" in ic_part
    assert "not shown at 60 columns: rank_ic, ic_ir" in " ".join(ic_part.split())
    sorted_by_ir = ANSI.sub("", run_cli("inspect", str(long_names_dir), "-s", "SOLUSDT", "--sort", "ic_ir",
                                        env={"COLUMNS": "60", "FORCE_COLOR": "1"}).stdout)
    for values in IC_VALUES:
        assert f"{values[3]:+.4f}" in sorted_by_ir


def test_serve_help_shows_every_env_var_whole():
    helped = run_cli("serve", "--help", env={"COLUMNS": "80"})
    assert helped.returncode == 0
    for field in ("host", "port", "watch_enabled", "watch_interval", "watch_debounce", "watch_polling", "token_ttl"):
        assert ENV_TABLE[field][0] in helped.stdout, field
    assert "MODEL_MANAGER_DATA_DIR" in helped.stdout and "…" not in helped.stdout
    # each paragraph is wrapped once, to the terminal: no line is a leftover fragment of a longer one
    paragraph = helped.stdout.split("\n\n")[2]
    assert all(len(line) > 40 for line in paragraph.splitlines()[:-1]), paragraph


def test_inspect_sort_is_checked_first_and_applies_to_json(long_names_dir):
    bad = run_cli("inspect", str(long_names_dir), "--symbol", "SOLUSDT", "--sort", "bogus")
    assert_one_line_error(bad, 2, "--sort bogus", "kendall_tau")
    assert bad.stdout == ""  # nothing printed before the error

    by_ic = json.loads(run_cli("inspect", str(long_names_dir), "-s", "SOLUSDT", "--sort", "ic", "--top", "2", "--json").stdout)
    assert [r[0] for r in by_ic["ic"]["rows"]] == [FACTORS[1], FACTORS[0]]  # |ic| largest first, two rows
    as_file = json.loads(run_cli("inspect", str(long_names_dir), "-s", "SOLUSDT", "--json").stdout)
    assert [r[0] for r in as_file["ic"]["rows"]] == FACTORS  # no --sort: the file's order, as the API
    table = run_cli("inspect", str(long_names_dir), "-s", "SOLUSDT", "--sort", "ic", "--top", "2").stdout
    ic_part = table.split("Factors (dimension order)")[0]
    assert FACTORS[1] in ic_part and FACTORS[0] in ic_part and FACTORS[2] not in ic_part


def test_inspect_summary_counts_directory_problems_and_lists_unused_files(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "SOLUSDT_mid_chg_5m", model=models["regressor"])  # one symbol in two groups
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["regressor"])
    (d / "README.md").write_text("notes\n")
    (d / "ETHUSDT_mid_chg_1m_factor.txt").write_text("a\n")
    shown = run_cli("inspect", str(d), "--strict")
    assert shown.returncode == 1, shown.stderr
    assert "3 groups: 3 ok, 0 warning, 0 error; 1 directory problem (the server refuses this directory)" in shown.stdout
    assert "symbol SOLUSDT is in several groups" in shown.stdout
    assert "2 unused file(s)" in shown.stdout and "README.md" in shown.stdout
    assert re.search(r"ETHUSDT_mid_chg_1m_factor\.txt +did you mean ETHUSDT_mid_chg_1m_factors\.txt\?", shown.stdout)
    assert "not UTF-8" not in shown.stdout
    listing = json.loads(run_cli("inspect", str(d), "--json").stdout)
    assert listing["status"] == "error"
    assert [p["code"] for p in listing["problems"]] == ["duplicate_symbol"]
    assert {f["file"] for f in listing["ignored_files"]} == {"README.md", "ETHUSDT_mid_chg_1m_factor.txt"}

    (d / "SOLUSDT_mid_chg_5m_factors.txt").unlink()
    (d / "SOLUSDT_mid_chg_5m_ic.csv").unlink()
    (d / "SOLUSDT_mid_chg_5m_model.pkl").unlink()
    assert run_cli("inspect", str(d), "--strict").returncode == 0


def test_register_refuses_a_directory_where_nothing_is_servable(tmp_path, models):
    data = str(tmp_path / "data")
    d = tmp_path / "broken"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"], factors=["a", "b"])  # 5 features, 2 factors
    write_group(d, "BTCUSDT_mid_chg_1m", factors=["a"])  # no model file
    refused = run_cli("register", "broken", str(d), "--data-dir", data)
    assert_one_line_error(refused, 1, "nothing in", "is servable", "all 2 groups have errors", "nothing was registered")
    assert json.loads(run_cli("register", "--list", "--json", "--data-dir", data).stdout) == {"models": []}

    write_group(d, "ETHUSDT_mid_chg_1m", model=models["regressor"])
    done = run_cli("register", "mixed", str(d), "--data-dir", data)
    assert done.returncode == 0, done.stderr
    assert "registered mixed" in done.stdout and "3 groups" in done.stdout
    assert "warning: 2 of 3 groups have errors" in done.stderr and len(done.stderr.splitlines()) == 1
    again = json.loads(run_cli("register", "mixed", str(d), "--json", "--data-dir", data).stdout)
    assert again["created"] is False and again["name"] == "mixed"
    listed = run_cli("register", "--list", "--data-dir", data, env={"COLUMNS": "60"})
    assert str(d) in listed.stdout and "…" not in listed.stdout


@pytest.mark.parametrize("args", [(), ("password",)])
def test_bare_command_prints_its_help_once(args):
    result = run_cli(*args)
    assert result.returncode == 2 and result.stderr == ""
    assert result.stdout.count("Usage:") == 1 and result.stdout.count("Commands:") == 1
    assert not [line for line in result.stdout.splitlines()[1:] if line.endswith("...")]  # no summary cut short


def test_audit_rejects_an_unknown_event_in_one_line(tmp_path):
    data = str(tmp_path / "data")
    # whether or not the data dir holds a database, the event name is checked first
    assert_one_line_error(run_cli("audit", "-e", "logins", "--data-dir", data), 2, "unknown audit event 'logins'", "login_failed")
    made = run_cli("password", "init", "--password-stdin", "--data-dir", data, input="correct horse battery\n")
    assert made.returncode == 0, made.stderr
    assert_one_line_error(run_cli("audit", "--event", "nope", "--data-dir", data), 2, "'nope'", "bootstrap")
    shown = run_cli("audit", "-e", "bootstrap", "--json", "--data-dir", data)
    assert shown.returncode == 0 and [e["event"] for e in json.loads(shown.stdout)["events"]] == ["bootstrap"]


def test_password_without_a_terminal_points_to_password_stdin(tmp_path):
    for command in ("set", "init"):
        # a new session has no controlling terminal: what cron, CI and ssh without -t give
        result = subprocess.run([*CLI, "password", command, "--data-dir", str(tmp_path / command)], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120, cwd=REPO, start_new_session=True)
        assert_one_line_error(result, 2, "no terminal", "--password-stdin", f"password {command}")
        assert "Warning" not in result.stderr and "aborted" not in result.stderr


def test_serve_hint_sets_the_password_of_that_data_dir(tmp_path):
    data = tmp_path / "data dir [test]"  # a space and brackets: quoted, and not taken for markup
    with ServerProcess(data, extra_args=("--no-watch",)) as server:
        deadline = time.monotonic() + 30
        while "password init" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        command = re.search(r"`(model-manager password init[^`]*)`", server.output()).group(1)
        assert "--data-dir" in command
        printed = run_in_terminal(command, ["correct horse battery", "correct horse battery"])
        assert "password set" in printed
        status, _, raw = http("POST", server.url + "/api/auth/login", body={"password": "correct horse battery"})
        assert status == 200, raw


def test_convert_prints_one_whole_line_per_file_and_json(tmp_path, model_dir):
    out = tmp_path / "out"
    result = run_cli("convert", str(model_dir), "-o", str(out), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "…" not in result.stdout  # two pickles and the count
    for key in ("BTCUSDT_mid_chg_1m", "SOLUSDT_mid_chg_1m"):
        line = next(line for line in lines if key in line)
        assert line.startswith("converted") and f"{key}_model.pkl → {key}_model.json: 5 features" in line
        assert "verified bit-identical" in line
    again = json.loads(run_cli("convert", str(model_dir), "-o", str(out), "--json").stdout)
    assert (again["converted"], again["skipped"], again["failed"]) == (0, 2, 0)
    assert {r["status"] for r in again["results"]} == {"skipped"}
    assert {os.path.basename(r["target"]) for r in again["results"]} == {"BTCUSDT_mid_chg_1m_model.json",
                                                                           "SOLUSDT_mid_chg_1m_model.json"}


@pytest.mark.parametrize("flag, value", [("--token-ttl", "-5"), ("--watch-interval", "-1"), ("--watch-interval", "0"),
                                         ("--watch-debounce", "-1"), ("--header-timeout", "0"), ("--port", "70000")])
def test_a_bad_serve_flag_is_named_not_its_env_var(flag, value):
    result = run_cli("serve", flag, value, "--no-watch")
    assert_one_line_error(result, 2, f"'{flag}", f": {value} is out of range")
    assert "MODEL_MANAGER_" not in result.stderr


def test_every_help_has_an_example_and_describes_every_argument():
    commands = [c for c in re.findall(r"^  (\w+)  ", run_cli("--help").stdout, re.M) if c not in ("keys", "password")]
    commands += ["keys create", "keys list", "keys revoke", "password init", "password set"]
    assert {"inspect", "versions", "fleet", "audit", "serve"} <= set(commands)
    for command in commands:
        helped = run_cli(*command.split(), "--help", env={"COLUMNS": "80"})
        assert helped.returncode == 0, (command, helped.stderr)
        assert helped.stdout.rstrip().splitlines()[-1].startswith(f"  Example: model-manager {command}"), (command, helped.stdout)
        arguments = helped.stdout.split("Arguments:")[1].split("Options:")[0] if "Arguments:" in helped.stdout else ""
        for line in arguments.strip().splitlines():
            if re.match(r"^  \S", line):  # an argument's first line: its name, its type, then its help
                assert len(line.split()) > 3, (command, line)
