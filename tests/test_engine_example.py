"""examples/engine.py, run as a real subprocess against a real server process through a retrain:
it loads version 1, then version 2 soon after the change, predicts with the model it holds, and
refuses a model whose factor mapping is not the engine's."""
from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xgboost as xgb

from tests.support import FACTORS, REPO, ServerProcess, prepare_data_dir, replace_file, write_group

PASSWORD = "engine password"
GROUP = "SOLUSDT_mid_chg_1m"
ROW = [0.3, -1.2, 0.5, 2.0, -0.7]


class Engine:
    """examples/engine.py in a subprocess; its stdout lines arrive in a queue."""

    def __init__(self, url: str, token: str, *args: str):
        cmd = [sys.executable, str(REPO / "examples" / "engine.py"), url, "engines", "SOLUSDT", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "MODEL_MANAGER_KEY": token}, cwd=REPO)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def next_line(self, timeout: float = 60) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; stderr: {self.stderr}") from None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def expected(model) -> float:
    return float(model.predict(np.array([ROW], dtype=np.float32))[0])


@pytest.fixture(scope="module")
def served(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("engine")
    directory = root / "models"
    write_group(directory, GROUP, model=models["regressor"])
    prepare_data_dir(root / "data", PASSWORD, {"engines": directory})
    with ServerProcess(root / "data", extra_args=("--watch-debounce", "0.3")) as server:
        yield server, server.login(PASSWORD), directory


def test_engine_follows_a_retrain_by_long_poll_and_by_polling(served, models, training_data):
    server, token, directory = served
    row = ["--row", ",".join(map(str, ROW))]
    long_poll = Engine(server.url, token, "--factors", ",".join(FACTORS), *row)
    polling = Engine(server.url, token, "--factors", ",".join(FACTORS), "--wait", "0", "--interval", "0.5", *row)
    try:
        for engine in (long_poll, polling):
            first = engine.next_line()
            assert first.startswith("loaded SOLUSDT "), first
            got = fields(first)
            assert got["version"] == "1" and got["dim"] == "5" and got["etag"].startswith('"')
            assert float(got["prediction"]) == pytest.approx(expected(models["regressor"]), rel=1e-5, abs=1e-6)

        x, y = training_data
        retrained = xgb.XGBRegressor(n_estimators=12, max_depth=3, n_jobs=1).fit(x, y * 2)
        replace_file(directory / f"{GROUP}_model.pkl", pickle.dumps(retrained))
        changed = time.monotonic()
        for engine in (long_poll, polling):
            line = engine.next_line()
            assert time.monotonic() - changed < 20, "the engine should load the new model within seconds"
            got = fields(line)
            assert line.startswith("loaded SOLUSDT ") and got["version"] == "2", line
            assert float(got["prediction"]) == pytest.approx(expected(retrained), rel=1e-5, abs=1e-6)
            assert float(got["prediction"]) != pytest.approx(expected(models["regressor"]), rel=1e-3)
        assert long_poll.proc.poll() is None and polling.proc.poll() is None
        assert not any("does not hold" in line for line in long_poll.stderr)  # it kept long polling
    finally:
        long_poll.stop()
        polling.stop()


def test_engine_refuses_a_model_whose_mapping_differs(served, tmp_path):
    server, token, _ = served
    factors = tmp_path / "factors.txt"
    factors.write_text("\n".join([FACTORS[1], FACTORS[0], *FACTORS[2:]]) + "\n")  # two dims swapped
    engine = Engine(server.url, token, "--factors-file", str(factors))
    try:
        line = engine.next_line()
        assert line.startswith("refused version=") and "dim 0" in line, line
        assert engine.proc.poll() is None  # it keeps following: the next model may fit
    finally:
        engine.stop()


def test_engine_stops_on_a_refused_key(served):
    server, _, _ = served
    engine = Engine(server.url, "not-a-key", "--factors", ",".join(FACTORS))
    assert engine.proc.wait(timeout=60) == 1
    time.sleep(0.2)
    assert any("refused the key (401)" in line for line in engine.stderr), engine.stderr
