"""The offline CLI as a user runs it: a real subprocess, real files, exit codes and messages."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from tests.support import run_cli, write_group


def assert_one_line_error(result, code: int, *needles: str):
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version_and_help():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("model-manager ")
    for command in ("inspect", "convert", "demo", "register", "password", "serve", "audit"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0, (command, helped.stderr)
        assert "Usage" in helped.stdout and len(helped.stdout.splitlines()) > 5


def test_demo_then_inspect(tmp_path):
    d = tmp_path / "demo-models"
    made = run_cli("demo", str(d))
    assert made.returncode == 0, made.stderr
    again = run_cli("demo", str(d))
    assert_one_line_error(again, 2, "not empty")

    table = run_cli("inspect", str(d), env={"COLUMNS": "160"})
    assert table.returncode == 0, table.stderr
    for symbol in ("SOLUSDT", "BTCUSDT", "ETHUSDT", "XRPUSDT"):
        assert symbol in table.stdout
    assert "6 groups" in table.stdout

    listing = json.loads(run_cli("inspect", str(d), "--json").stdout)
    assert listing["group_count"] == 6 and listing["symbol_count"] == 6
    sol = next(s for s in listing["symbols"] if s["symbol"] == "SOLUSDT")
    assert set(sol) >= {"symbol", "group_key", "return_name", "dim", "factor_count", "model_source", "status", "issues"}
    assert sol["status"] == "ok" and sol["model_source"] == "pkl" and sol["dim"] == sol["factor_count"]

    detail = json.loads(run_cli("inspect", str(d), "--symbol", "SOLUSDT", "--json").stdout)
    assert set(detail) >= {"model_name", "symbol", "group_key", "return_name", "dim", "factors", "ic", "info", "files", "status", "issues"}
    assert detail["ic"]["columns"][0] == "factor" and "kendall_tau" in detail["ic"]["columns"]
    assert detail["info"]["train_start"].startswith("20")

    shown = run_cli("inspect", str(d), "--symbol", "SOLUSDT", env={"COLUMNS": "160"})
    assert shown.returncode == 0
    for heading in ("Training metadata", "IC", "Factors (dimension order)", "█", "kendall_tau"):
        assert heading in shown.stdout
    # sorted by |kendall_tau|, largest first
    tau = {r[0]: abs(r[detail["ic"]["columns"].index("kendall_tau")]) for r in detail["ic"]["rows"]}
    biggest = max(tau, key=tau.get)
    ic_part = shown.stdout.split("IC")[1]
    assert ic_part.index(biggest) < min(ic_part.index(f) for f in tau if f != biggest and f in ic_part)

    assert_one_line_error(run_cli("inspect", str(d), "--symbol", "NOPE"), 2, "NOPE", "SOLUSDT")
    assert_one_line_error(run_cli("inspect", str(d), "--symbol", "SOLUSDT", "--sort", "bogus"), 2, "bogus")


def test_inspect_bad_paths_and_strict(tmp_path, models):
    assert_one_line_error(run_cli("inspect", str(tmp_path / "missing")), 2, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("inspect", str(tmp_path / "empty")), 2, "no model groups")
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"], factors=["a", "b"])
    assert run_cli("inspect", str(d)).returncode == 0
    strict = run_cli("inspect", str(d), "--strict", env={"COLUMNS": "250"})
    assert strict.returncode == 1
    assert "the model has 5 features but factors.txt lists 2 factors" in strict.stdout


def test_convert_directory_verifies_and_skips(tmp_path, demo_dir):
    out = tmp_path / "out"
    result = run_cli("convert", str(demo_dir), "-o", str(out))
    assert result.returncode == 0, result.stderr
    pickles = sorted(p.name for p in demo_dir.glob("*_model.pkl"))
    written = sorted(p.name for p in out.glob("*_model.json"))
    assert written == [p.replace(".pkl", ".json") for p in pickles]
    assert "verified bit-identical" in result.stdout
    assert not list(demo_dir.glob("*.tmp")) and not list(out.glob(".*"))

    # the JSON predicts exactly what the pickle predicts
    rng = np.random.default_rng(1)
    for pkl in demo_dir.glob("*_model.pkl"):
        model = pickle.loads(pkl.read_bytes())
        booster = model if isinstance(model, xgb.Booster) else model.get_booster()
        restored = xgb.Booster()
        restored.load_model(str(out / pkl.name.replace(".pkl", ".json")))
        x = xgb.DMatrix(rng.normal(size=(200, booster.num_features())).astype(np.float32), feature_names=booster.feature_names)
        assert booster.predict(x).tobytes() == restored.predict(x).tobytes()

    again = run_cli("convert", str(demo_dir), "-o", str(out))
    assert again.returncode == 0 and f"0 converted, {len(pickles)} skipped" in again.stdout
    forced = run_cli("convert", str(demo_dir / pickles[0]), "-o", str(out), "--force", "--no-verify")
    assert forced.returncode == 0 and "1 converted" in forced.stdout


def test_convert_failures(tmp_path):
    assert_one_line_error(run_cli("convert", str(tmp_path / "missing")), 2, "does not exist")
    (tmp_path / "x").mkdir()
    assert_one_line_error(run_cli("convert", str(tmp_path / "x")), 2, "no *_model.pkl")
    bad = tmp_path / "x" / "EVIL_x_model.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    result = run_cli("convert", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "os.system" in result.stdout.replace("\n", "") and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "x" / "EVIL_x_model.json").exists()


@pytest.mark.parametrize("args", [("inspect",), ("convert",), ("inspect", "--bogus")])
def test_bad_usage_exits_2(args):
    result = run_cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["/proc/newdir", "/dev/null/x", "FILE/sub", "FILE", "/sys/newdir"])
def test_convert_output_that_cannot_be_made_is_one_usage_error(tmp_path, model_dir, where):
    if where.startswith("/") and not Path(where).parent.exists():
        pytest.skip(f"no {Path(where).parent} here")
    output = where.replace("FILE", str(model_dir / "SOLUSDT_mid_chg_1m_factors.txt"))
    result = run_cli("convert", str(model_dir), "-o", output)
    assert_one_line_error(result, 2, f"cannot create the output directory {output}: ")


def test_convert_writes_nothing_to_stderr_and_names_a_fifo(tmp_path, model_dir):
    done = run_cli("convert", str(model_dir), "-o", str(tmp_path / "out"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert_one_line_error(run_cli("convert", str(tmp_path / "missing")), 2, "does not exist")  # and only that line
    fifo = tmp_path / "SOLUSDT_x_model.pkl"
    os.mkfifo(fifo)
    assert_one_line_error(run_cli("convert", str(fifo)), 2, str(fifo), "is not a regular file")
    missing_source = run_cli("convert", str(tmp_path / "missing"), "-o", str(tmp_path / "never"))
    assert missing_source.returncode == 2 and not (tmp_path / "never").exists()  # the source is checked first


@pytest.mark.parametrize("args, names", [
    (("register", "--list", "--remove", "m", "--data-dir", "DATA"), ("--list", "--remove")),
    (("register", "--list", "m", "DIR", "--data-dir", "DATA"), ("--list", "NAME PATH")),
    (("inspect", "DIR", "--symbol", "SOLUSDT", "--matrix", "gain"), ("--symbol", "--matrix")),
    (("inspect", "DIR", "--group-key", "SOLUSDT_mid_chg_1m"), ("--group-key", "--symbol")),
    (("inspect", "DIR", "--sort", "ic"), ("--sort", "--symbol")),
    (("inspect", "DIR", "--top", "3"), ("--top", "--symbol", "--matrix")),
    (("diff", "m", "SOLUSDT", "--json", "--metric", "ic", "--data-dir", "DATA"), ("--json", "--metric")),
    (("diff", "m", "SOLUSDT", "--json", "--top", "3", "--data-dir", "DATA"), ("--json", "--top")),
])
def test_options_that_would_be_ignored_are_refused(tmp_path, model_dir, args, names):
    data = tmp_path / "data"
    assert run_cli("register", "m", str(model_dir), "--data-dir", str(data)).returncode == 0
    result = run_cli(*[{"DIR": str(model_dir), "DATA": str(data)}.get(a, a) for a in args])
    assert_one_line_error(result, 2, *names)
    assert result.stdout == ""
    listed = json.loads(run_cli("register", "--list", "--json", "--data-dir", str(data)).stdout)
    assert [m["name"] for m in listed["models"]] == ["m"]  # nothing was removed


def test_register_remove_json(tmp_path, model_dir):
    data = tmp_path / "data"
    assert run_cli("register", "m", str(model_dir), "--data-dir", str(data)).returncode == 0
    removed = run_cli("register", "--remove", "m", "--json", "--data-dir", str(data))
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"name": "m", "removed": True}
