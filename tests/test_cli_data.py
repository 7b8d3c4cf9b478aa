"""The CLI over a data dir a real server has used: a mistyped --data-dir is refused rather than made,
tables keep whole names, numbers and dates (piped and in a narrow terminal), and `hold --json` prints
the model object of the HTTP API."""
from __future__ import annotations

import json
import re

import pytest

from .support import PASSWORD, ServerProcess, prepare_data_dir, run_cli, write_group
from .test_cli import assert_one_line_error

MODEL = "long-named-model"
KEY = "SOLUSDT_mid_chg_1m"
# long names with shared prefixes: a table that cuts them shows `funding_r…`
FACTORS = ["funding_rate_zscore_8h_ewm", "funding_rate_zscore_24h_ewm", "open_interest_change_4h",
           "basis_annualized_perp_quarterly", "liquidations_imbalance_1h"]
CLIENT_KEY = "engine-with-a-rather-long-name"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DATE = re.compile(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def served(tmp_path_factory, models):
    """A data dir with versions 1 and 2 of SOLUSDT, a key, a fetch by a session, and the model object
    that POST /api/models/NAME/hold answered; recorded by a real server, once."""
    root = tmp_path_factory.mktemp("cli-data")
    data, directory = root / "data", root / "models"
    write_group(directory, KEY, model=models["regressor"], factors=FACTORS)
    prepare_data_dir(data, PASSWORD, {MODEL: directory})
    made = run_cli("keys", "create", CLIENT_KEY, "--expires-in-days", "30", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    with ServerProcess(data, extra_args=("--no-watch",)) as server:
        token = server.login(PASSWORD)
        status, _, raw = server.get(f"/api/models/{MODEL}/model/SOLUSDT", token=token)
        assert status == 200, raw
        write_group(directory, KEY, model=models["booster"], factors=FACTORS,
                    ic="factor,ic,kendall_tau\n" + "".join(f"{f},0.0{i + 1},-0.0{i + 2}\n" for i, f in enumerate(FACTORS)))
        status, _, raw = server.post(f"/api/models/{MODEL}/refresh", token=token)
        assert status == 200, raw
        status, _, raw = server.post(f"/api/models/{MODEL}/hold", token=token)
        assert status == 200, raw
        held = json.loads(raw)
        status, _, raw = server.get(f"/api/models/{MODEL}/model/SOLUSDT", token=token)  # so the fleet has a row
        assert status == 200, raw
    assert run_cli("release", MODEL, "--data-dir", str(data)).returncode == 0
    return data, held


def cli(data, *args, env=None):
    return run_cli(*args, "--data-dir", str(data), env=env)


@pytest.mark.parametrize("args", [("keys", "list"), ("keys", "revoke", "x"), ("keys", "create", "x"), ("register", "--list"),
                                  ("register", "--remove", "x"), ("audit",), ("fleet", "m"), ("versions", "m", "S"),
                                  ("hold", "m")])
def test_a_mistyped_data_dir_is_refused_not_created(tmp_path, args):
    typo = tmp_path / "dta"
    result = run_cli(*args, "--data-dir", str(typo), input=PASSWORD + "\n")
    assert_one_line_error(result, 2, f"no database in {typo}")
    assert not typo.exists()


def test_registering_and_setting_a_password_create_the_data_dir(tmp_path, model_dir):
    """(`password set` too: start_model_manager.sh --set-password provisions a new machine with it.)"""
    assert run_cli("register", "m", str(model_dir), "--data-dir", str(tmp_path / "a")).returncode == 0
    for action, where in (("init", "b"), ("set", "c")):
        made = run_cli("password", action, "--password-stdin", "--data-dir", str(tmp_path / where), input=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
    assert all((tmp_path / where / "model-manager.sqlite3").is_file() for where in "abc")


@pytest.mark.parametrize("columns", ["60", "80"])
def test_piped_tables_keep_names_numbers_and_dates_whole(served, columns):
    data, _ = served
    env = {"COLUMNS": columns}
    shown = {args: cli(data, *args, env=env) for args in [("versions", MODEL, "SOLUSDT"), ("fleet", MODEL), ("keys", "list"),
                                                          ("audit",), ("diff", MODEL, "SOLUSDT"), ("register", "--list")]}
    for args, result in shown.items():
        assert result.returncode == 0, (args, result.stderr)
        assert not [line for line in result.stdout.splitlines() if line != line.rstrip()], f"trailing spaces: {args}"
        assert "…" not in result.stdout, result.stdout
    versions = shown[("versions", MODEL, "SOLUSDT")].stdout.splitlines()
    v1 = next(line for line in versions if line.startswith("v1"))
    assert len(DATE.findall(v1)) == 3, v1  # created, live from, live until: on one line
    fleet_row = next(line for line in shown[("fleet", MODEL)].stdout.splitlines() if line.startswith("session"))
    assert "127.0.0.1" in fleet_row and DATE.search(fleet_row), fleet_row
    keys = next(line for line in shown[("keys", "list")].stdout.splitlines() if line.startswith(CLIENT_KEY))
    assert len(DATE.findall(keys)) == 2, keys  # created and expires
    diff = shown[("diff", MODEL, "SOLUSDT")].stdout
    for factor in FACTORS:
        assert re.search(rf"^{factor}\s+[+-]", diff, re.M), factor


def test_a_narrow_terminal_drops_columns_and_never_cuts(served):
    data, _ = served
    terminal = {"COLUMNS": "60", "FORCE_COLOR": "1"}
    diff = ANSI.sub("", cli(data, "diff", MODEL, "SOLUSDT", env=terminal).stdout)
    assert "…" not in diff
    for factor in FACTORS:
        assert factor in diff, factor
    audit = ANSI.sub("", cli(data, "audit", env=terminal).stdout)
    assert "…" not in audit and re.search(r"\s127\.0\.0\.1\s", audit), audit  # an address is never split
    for args in [("versions", MODEL, "SOLUSDT"), ("fleet", MODEL), ("keys", "list")]:
        out = ANSI.sub("", cli(data, *args, env=terminal).stdout)
        assert "…" not in out and "not shown at 60 columns" in " ".join(out.split()), out  # --json has them


def test_hold_json_is_the_model_object_of_the_api(served, tmp_path):
    data, from_api = served
    held = cli(data, "hold", MODEL, "--json")
    assert held.returncode == 0, held.stderr
    model = json.loads(held.stdout)
    assert list(model) == list(from_api)
    assert list(model["groups"][0]) == list(from_api["groups"][0])
    for key in ("name", "path", "registered_at", "group_count", "symbol_count", "error", "held"):
        assert model[key] == from_api[key], key
    assert model["status"] is None and model["refreshed_at"] is None  # only a serving process knows them
    assert model["groups"][0]["version"] == 2 and model["groups"][0]["symbol"] == "SOLUSDT"
    released = json.loads(cli(data, "release", MODEL, "--json").stdout)
    assert list(released) == list(from_api) and released["held"] is False and released["hold"] is None


def test_diff_with_one_version_names_no_http_parameter(tmp_path, model_dir):
    data = tmp_path / "data"
    assert run_cli("register", "m", str(model_dir), "--data-dir", str(data)).returncode == 0
    result = cli(data, "diff", "m", "SOLUSDT")
    assert_one_line_error(result, 2, "no version before v1", "name two versions")
    assert "from=" not in result.stderr
