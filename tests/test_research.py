"""Research views (SPEC §11): importance from the served model, the factor × symbol matrix and factor
usage — through the real app (TestClient) and the real CLI, checked against their sources: the
numbers of each ic.csv as written, and XGBoost's own `get_score` of the payload's model."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest
import xgboost as xgb
from litestar.testing import TestClient

from model_manager.server.app import create_app
from model_manager.settings import Settings
from model_manager.store import Store
from tests.support import FACTORS, write_group

from .support import run_cli

PASSWORD = "correct horse battery"
IMPORTANCE = ("gain", "total_gain", "cover", "weight")


def ic_text(seed: int, factors=FACTORS) -> str:
    """An ic.csv with distinct, signed numbers (one factor has no kendall_tau)."""
    lines = ["factor,ic,rank_ic,kendall_tau"]
    for i, f in enumerate(factors):
        tau = "nan" if (seed + i) % 7 == 3 else f"{(-1) ** (i + seed) * (0.011 * (i + 1) + 0.003 * seed):.5f}"
        lines.append(f"{f},{0.02 * (i + 1) - 0.01 * seed:.4f},{0.015 * i:.4f},{tau}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def research_dir(tmp_path, models):
    """Four servable groups (pkl regressor, pkl Booster, JSON Booster, named JSON) and one whose model
    has errors (factors.txt lists one factor too few) but whose ic.csv is fine."""
    d = tmp_path / "research"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"], ic=ic_text(1))
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"], ic=ic_text(2))
    write_group(d, "ETHUSDT_mid_chg_1m", model_json=bytes(models["booster"].save_raw(raw_format="json")), ic=ic_text(3))
    write_group(d, "ADAUSDT_mid_chg_1m", model_json=bytes(models["named"].get_booster().save_raw(raw_format="json")),
                ic=ic_text(4))
    write_group(d, "XRPUSDT_mid_chg_1m", model=models["regressor"], factors=FACTORS[:4], ic=ic_text(5, FACTORS[:4]))
    return d


@pytest.fixture
def api(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    Store(settings.db_path).init_password(PASSWORD)
    with TestClient(create_app(settings)) as client:
        token = client.post("/api/auth/login", json={"password": PASSWORD}).json()["token"]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def ic_from_file(path) -> dict[str, dict[str, float | None]]:
    """{metric: {factor: value}} read straight from an ic.csv (the test's own reading)."""
    out: dict[str, dict[str, float | None]] = {}
    for row in csv.DictReader(io.StringIO(path.read_text())):
        for metric, cell in row.items():
            if metric != "factor":
                value = float(cell)
                out.setdefault(metric, {})[row["factor"]] = None if math.isnan(value) else value
    return out


def served_importance(api, name: str, symbol: str) -> dict[str, dict[str, float]]:
    """get_score of the model a trading engine receives, keyed by factor through the payload's mapping."""
    body = api.get(f"/api/models/{name}/model/{symbol}").json()["payload"]
    booster = xgb.Booster()
    booster.load_model(bytearray(body["model_json"].encode()))
    names = {f"f{d['dim']}": d["factor_name"] for d in body["dim_factors"]}
    names.update({d["factor_name"]: d["factor_name"] for d in body["dim_factors"]})  # a model that stores names
    return {t: {names[k]: v for k, v in booster.get_score(importance_type=t).items()} for t in IMPORTANCE}


def expected_matrix(columns: dict[str, dict[str, float | None]]) -> tuple[list[str], list[str], list[list]]:
    """Symbols, factors (by mean |value| over present values, then name) and values, computed here."""
    cells = {s: {f: v for f, v in col.items() if v is not None} for s, col in columns.items()}
    symbols = sorted(s for s, col in cells.items() if col)
    factors = {f for col in cells.values() for f in col}
    mean = {f: sum(abs(cells[s][f]) for s in symbols if f in cells[s]) / sum(f in cells[s] for s in symbols) for f in factors}
    order = sorted(factors, key=lambda f: (-mean[f], f))
    return symbols, order, [[cells[s].get(f) for s in symbols] for f in order]


def test_detail_importance_is_get_score_of_the_served_model(api, research_dir):
    assert api.post("/api/models", json={"name": "r", "path": str(research_dir)}).status_code == 201
    for symbol in ("SOLUSDT", "BTCUSDT", "ETHUSDT", "ADAUSDT"):
        detail = api.get(f"/api/models/r/symbols/{symbol}").json()
        expected = served_importance(api, "r", symbol)
        assert detail["importance"] == expected
        assert set(detail["importance"]) == set(IMPORTANCE) and expected["gain"]
        assert set(detail["importance"]["gain"]) <= set(FACTORS)
    # a group with errors serves no model, so it has no importance
    assert api.get("/api/models/r/symbols/XRPUSDT").json()["importance"] is None


def test_matrix_equals_the_ic_files_and_get_score(api, research_dir):
    api.post("/api/models", json={"name": "r", "path": str(research_dir)})
    ic = {p.name.split("_")[0]: ic_from_file(p) for p in research_dir.glob("*_ic.csv")}
    for metric in ("kendall_tau", "ic", "rank_ic"):
        r = api.get("/api/models/r/matrix", params={"metric": metric})
        assert r.status_code == 200, r.text
        symbols, factors, values = expected_matrix({s: cols[metric] for s, cols in ic.items()})
        assert r.json() == {"model_name": "r", "metric": metric, "symbols": symbols, "factors": factors, "values": values}
        assert "XRPUSDT" in symbols  # IC of a group with model errors still counts
    served = {s: served_importance(api, "r", s) for s in ("SOLUSDT", "BTCUSDT", "ETHUSDT", "ADAUSDT")}
    for metric in IMPORTANCE:
        body = api.get(f"/api/models/r/matrix?metric={metric}").json()
        symbols, factors, values = expected_matrix({s: imp[metric] for s, imp in served.items()})
        assert (body["symbols"], body["factors"], body["values"]) == (symbols, factors, values)
        assert "XRPUSDT" not in body["symbols"]
    top = api.get("/api/models/r/matrix?metric=kendall_tau&top=2").json()
    full = api.get("/api/models/r/matrix?metric=KENDALL_TAU").json()
    assert top["factors"] == full["factors"][:2] and top["values"] == full["values"][:2]
    assert top["symbols"] == full["symbols"]


def test_matrix_errors(api, research_dir):
    api.post("/api/models", json={"name": "r", "path": str(research_dir)})
    r = api.get("/api/models/r/matrix?metric=sharpe")
    assert r.status_code == 400
    detail = r.json()["detail"]
    for known in ("kendall_tau", "ic", "rank_ic", "gain", "total_gain", "cover", "weight"):
        assert known in detail
    assert api.get("/api/models/r/matrix?metric=gain&top=-1").status_code == 400
    assert api.get("/api/models/nope/matrix?metric=gain").status_code == 404


def test_factor_usage(api, research_dir):
    api.post("/api/models", json={"name": "r", "path": str(research_dir)})
    body = api.get("/api/models/r/factors").json()
    assert body["factors"] == sorted(FACTORS)
    usage = {u["factor"]: u for u in body["usage"]}
    assert [u["factor"] for u in body["usage"]] == body["factors"]
    assert usage[FACTORS[4]]["symbols"] == 4 and usage[FACTORS[0]]["symbols"] == 5
    for metric in ("kendall_tau", "gain"):
        matrix = api.get(f"/api/models/r/matrix?metric={metric}").json()
        for factor, row in zip(matrix["factors"], matrix["values"]):
            present = [abs(v) for v in row if v is not None]
            assert usage[factor]["mean_abs"][metric] == pytest.approx(sum(present) / len(present), rel=1e-12)


def test_a_restart_serves_payloads_before_its_research_index_and_a_reader_gets_the_whole_index(
        api, research_dir, tmp_path):
    """A start serves payloads as soon as they are loaded and builds the research indexes after; a
    research read in between builds it first: never an empty or partial index."""
    from model_manager.service import ModelManager

    api.post("/api/models", json={"name": "r", "path": str(research_dir)})
    factors, matrix = api.get("/api/models/r/factors").json(), api.get("/api/models/r/matrix?metric=gain").json()
    symbols = api.get("/api/models/r/symbols").json()
    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    store = Store(settings.db_path)
    try:
        manager = ModelManager(settings, store=store)
        registry = manager.serve()
        registry.load_registered()  # a start's first load (the server sets `ready` once it returns)
        model = registry.get("r")
        assert model.view.research_pending
        assert registry.payload("r", "SOLUSDT").size > 0
        assert json.loads(manager.symbols_json("r")) == symbols
        assert manager.factors("r") == factors and manager.matrix("r", "gain") == matrix
        assert not model.view.research_pending
        registry.build_research()  # what the server queues once `ready` is set: nothing left to build
        assert manager.matrix("r", "kendall_tau")["symbols"]
    finally:
        store.close()


def test_research_reads_right_after_a_refresh_see_the_new_files(api, research_dir):
    """A refresh builds its research index in the background, after its payloads are served: a read
    that comes at once still gets the index of the new files."""
    api.post("/api/models", json={"name": "r", "path": str(research_dir)})
    for rounds in range(3):
        (research_dir / "SOLUSDT_mid_chg_1m_ic.csv").write_text(ic_text(10 + rounds))
        assert api.post("/api/models/r/refresh").status_code == 200
        ic = {p.name.split("_")[0]: ic_from_file(p) for p in research_dir.glob("*_ic.csv")}
        symbols, factors, values = expected_matrix({s: cols["ic"] for s, cols in ic.items()})
        body = api.get("/api/models/r/matrix", params={"metric": "ic"}).json()
        assert (body["symbols"], body["factors"], body["values"]) == (symbols, factors, values)


def test_importance_is_cached_with_the_model_info(api, research_dir, tmp_path):
    api.post("/api/models", json={"name": "r", "path": str(research_dir)})
    metas = [json.loads(p.read_text()) for p in (tmp_path / "data" / "cache" / "models").glob("*.meta.json")]
    assert metas and all(set(m["importance"]) == set(IMPORTANCE) for m in metas)


def test_cli_matrix_json_and_table(research_dir):
    done = run_cli("inspect", str(research_dir), "--matrix", "kendall_tau", "--json")
    assert done.returncode == 0, done.stderr
    ic = {p.name.split("_")[0]: ic_from_file(p) for p in research_dir.glob("*_ic.csv")}
    symbols, factors, values = expected_matrix({s: cols["kendall_tau"] for s, cols in ic.items()})
    assert json.loads(done.stdout) == {"model_name": "research", "metric": "kendall_tau", "symbols": symbols,
                                       "factors": factors, "values": values}
    gain = json.loads(run_cli("inspect", str(research_dir), "-m", "gain", "--top", "3", "--json").stdout)
    assert len(gain["factors"]) == 3 and "XRPUSDT" not in gain["symbols"]

    table = run_cli("inspect", str(research_dir), "--matrix", "kendall_tau", env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    assert "\x1b[" not in table.stdout  # piped: plain text
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    for factor in factors:
        assert factor in table.stdout
    assert f"{values[0][0]:+.3g}" in table.stdout

    bad = run_cli("inspect", str(research_dir), "--matrix", "sharpe")
    assert bad.returncode == 2 and "kendall_tau" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_symbol_shows_importance(research_dir, models):
    done = run_cli("inspect", str(research_dir), "--symbol", "BTCUSDT")
    assert done.returncode == 0, done.stderr
    assert "Importance (from the model)" in done.stdout
    gain = models["booster"].get_score(importance_type="gain")
    best = max(gain, key=gain.get)
    section = done.stdout.split("Importance (from the model)")[1]
    row = next(line for line in section.splitlines() if line.strip().startswith(FACTORS[int(best[1:])] + " "))
    assert f"{gain[best]:.4g}" in row
    detail = json.loads(run_cli("inspect", str(research_dir), "--symbol", "BTCUSDT", "--json").stdout)
    assert detail["importance"]["gain"] == {FACTORS[int(k[1:])]: v for k, v in gain.items()}
    broken = run_cli("inspect", str(research_dir), "--symbol", "XRPUSDT")
    assert "no importance" in broken.stdout


def test_sparse_matrix_lays_out_like_a_dense_one():
    """The index keeps each row's present cells only; laid out, they are the dense matrix computed
    here (columns given in another order than their labels', a row of ints stays ints)."""
    from model_manager.research import Column, ResearchIndex

    columns = {"ZZZUSDT": {"a": 0.5, "b": -2.0, "c": None}, "AAAUSDT": {"a": -0.25, "c": 3},
               "MMMUSDT": {"b": 1.0, "c": 1}, "BBBUSDT": {"d": None}}
    index = ResearchIndex.build(Column(label, list(values), {"m": values}) for label, values in columns.items())
    symbols, factors, values = expected_matrix(columns)
    full = index.matrix("m").to_dict("x")
    assert full == {"model_name": "x", "metric": "m", "symbols": symbols, "factors": factors, "values": values}
    assert json.dumps(full["values"]) == json.dumps(values)  # 3 stays 3, not 3.0
    assert index.matrix("m").to_dict("x", 2)["values"] == values[:2] == index.matrix("m").values[:2]
    assert {u["factor"]: u["symbols"] for u in index.usage} == {"a": 2, "b": 2, "c": 3, "d": 1}


def _snapshot(rng, key: str, pool: list[str]):
    """A parsed group with its own factors, IC table (floats, an int, missing cells) and importance."""
    from model_manager.artifacts import GroupSnapshot

    factors = rng.sample(pool, rng.randint(3, 8))
    rows = [[f, round(rng.uniform(-1, 1), 4), rng.choice([None, 1, round(rng.uniform(-1, 1), 3)])] for f in factors]
    importance = {kind: {f: round(rng.uniform(0, 5), 3) for f in factors if rng.random() < 0.8} or {factors[0]: 1.0}
                  for kind in IMPORTANCE}
    return GroupSnapshot(key, key.split("_")[0], "mid_chg_1m", {"factors.txt": f"{key}_factors.txt"}, factors,
                         ic={"columns": ["factor", "ic", "rank_ic"], "rows": rows}, importance=importance)


def test_a_refresh_updates_the_research_index_to_what_a_whole_build_gives():
    """A retrained group among many updates only its rows of the index (`updated_index`); the result is
    the index built from scratch, value for value and in the same order, whatever changed."""
    import random

    from model_manager.research import build_index, updated_index

    rng = random.Random(11)
    pool = [f"f{i:02d}" for i in range(40)]
    groups = {f"S{i:03d}USDT_mid_chg_1m": None for i in range(60)}
    for key in groups:
        snap = _snapshot(rng, key, pool)
        groups[key] = (snap, snap)

    def whole(pairs):
        return build_index(pairs[k] for k in sorted(pairs))

    def same(a, b):
        assert a.metrics == b.metrics and a.usage == b.usage
        for metric in a.metrics:
            x, y = a.matrix(metric), b.matrix(metric)
            assert (x.to_dict("m"), x.mean_abs, x.counts) == (y.to_dict("m"), y.mean_abs, y.counts)

    index, incremental = whole(groups), 0
    for step in range(120):
        after = dict(groups)
        for key in rng.sample(sorted(groups), rng.randint(1, 4)):
            snap = _snapshot(rng, key, pool)
            kind = step % 4
            # a retrain; new IC only (the served model kept); a model that fails (no importance); it is back
            after[key] = (snap, snap) if kind in (0, 3) else (snap, groups[key][1]) if kind == 1 else (snap, None)
        updated = updated_index(index, groups, after)
        built = whole(after)
        if updated is not None:
            same(updated, built)
            incremental += 1
        groups, index = after, updated or built
    assert incremental >= 50  # a retrain takes the short way (a symbol gaining or losing a metric does not)
    assert updated_index(index, groups, {k: v for k, v in groups.items() if k != min(groups)}) is None  # a group went


def test_model_importance_is_get_score_to_the_bit(models):
    """`model_importance` makes `gain` from total_gain and weight instead of asking XGBoost: it must be
    what `get_score` says, bit for bit, for every kind of model (deeper, multi-class ones too)."""
    from model_manager.conversion import model_importance
    from tests.support import training_data

    x, y = training_data()
    deep = xgb.XGBRegressor(n_estimators=40, max_depth=6, n_jobs=1, random_state=3).fit(x, y)
    multi = xgb.XGBClassifier(n_estimators=10, max_depth=4, n_jobs=1).fit(x, (y > 0).astype(int) + (y > 1).astype(int))
    for model in (*models.values(), deep, multi):
        booster = model if isinstance(model, xgb.Booster) else model.get_booster()
        names = list(booster.feature_names or [])
        ours = model_importance(booster)
        for kind in IMPORTANCE:
            expected = {str(names.index(k) if names else int(k[1:])): v for k, v in booster.get_score(importance_type=kind).items()}
            assert ours[kind] == expected, kind
        assert ours["gain"]  # (a model that splits at all)
