# ruff: noqa: F811  (the fixtures imported from test_ui are parameters of the tests below)
"""The research views in a real browser (see test_ui.py for the set-up): the factor × symbol heatmap of
a model page — including a model of 500 symbols × 200 factors — the factor list sorted by usage, and
the importance in the symbol page's chart and scatter.

With UPDATE_SCREENSHOT=1 the demo heatmap is copied to docs/heatmap.png, the README's picture."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import xgboost as xgb

from model_manager.settings import Settings
from model_manager.store import Store
from tests.support import REPO, ServerProcess
from tests.test_ui import (  # noqa: F401  (fixtures)
    DESKTOP,
    SHOTS,
    State,
    api,
    browser,
    demo_models,
    ensure_demo,
    expect,
    ui,
)

pytestmark = [pytest.mark.browser]

BIG_SYMBOLS, BIG_FACTORS = 500, 200


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose password is already set (the first-run flow is test_ui's business)."""
    data_dir = tmp_path_factory.mktemp("ui-research-data")
    Store(Settings(data_dir=data_dir).db_path).init_password(State.password)
    State.token = None
    with ServerProcess(data_dir, extra_args=("--no-watch",)) as proc:
        yield proc


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """500 groups of 200 factors: one tiny model (200 features, a few trees) written for every symbol
    (its check is cached by content hash, so registering costs little), and an ic.csv of its own each."""
    d = tmp_path_factory.mktemp("big") / "big-models"
    d.mkdir()
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, BIG_FACTORS)).astype(np.float32)
    y = x[:, :20] @ rng.normal(size=20)
    booster = xgb.train({"max_depth": 3, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=4)
    model_json = bytes(booster.save_raw(raw_format="json"))
    factors = [f"factor_{i:03d}" for i in range(BIG_FACTORS)]
    factors_txt = "\n".join(factors) + "\n"
    scale = np.linspace(0.3, 0.01, BIG_FACTORS)
    for s in range(BIG_SYMBOLS):
        key = f"S{s:03d}USDT_mid_chg_1m"
        (d / f"{key}_factors.txt").write_text(factors_txt)
        (d / f"{key}_model.json").write_bytes(model_json)
        taus = rng.normal(size=BIG_FACTORS) * scale
        rows = "".join(f"{f},{t:.6f}\n" if (s + i) % 11 else f"{f},nan\n" for i, (f, t) in enumerate(zip(factors, taus)))
        (d / f"{key}_ic.csv").write_text("factor,kendall_tau\n" + rows)
    return d


def heatmap_cell(page, i: int, j: int) -> tuple[float, float]:
    """Page coordinates of the middle of cell (factor i, symbol j), from the layout the canvas states."""
    canvas = page.locator("#heatmap canvas.heatmap-overlay")
    data = canvas.evaluate("c => ({...c.dataset})")
    inner = (float(data["left"]) + (j + 0.5) * float(data["cellW"]), float(data["top"]) + (i + 0.5) * float(data["cellH"]))
    # the cell in the middle of the scroll box, and the scroll box in the middle of the window
    page.locator("#heatmap .heatmap-scroll").evaluate(
        "(el, [x, y]) => { el.scrollLeft = x - el.clientWidth / 2; el.scrollTop = y - el.clientHeight / 2;"
        " el.scrollIntoView({block: 'center'}); }", list(inner))
    box = canvas.bounding_box()
    x = box["x"] + float(data["left"]) + (j + 0.5) * float(data["cellW"])
    y = box["y"] + float(data["top"]) + (i + 0.5) * float(data["cellH"])
    return x, y


def test_heatmap_of_the_demo_hover_and_click(ui, server, demo_models):
    page = ui.page
    ensure_demo(server, demo_models)
    page.set_viewport_size(DESKTOP)
    ui.sign_in("#/models/demo")
    canvas = page.locator("#heatmap canvas.heatmap-overlay")
    expect(canvas).to_be_visible()
    _, matrix = api(server, "GET", "/api/models/demo/matrix?metric=kendall_tau&top=50")
    expect(canvas).to_have_attribute("data-rows", str(len(matrix["factors"])))
    expect(canvas).to_have_attribute("data-cols", str(len(matrix["symbols"])))

    # Hover: the readout names the cell and shows its value, exactly the API's.
    readout = page.locator("#heatmap-readout")
    i, j = 0, next(j for j, v in enumerate(matrix["values"][0]) if v is not None)
    page.mouse.move(*heatmap_cell(page, i, j))
    expect(readout).to_contain_text(f"{matrix['symbols'][j]} · {matrix['factors'][i]} · kendall_tau")
    assert float(readout.get_attribute("data-value")) == matrix["values"][i][j]

    # Another metric: the importance of the served models.
    page.locator("#heatmap-metric").select_option("gain")
    _, gain = api(server, "GET", "/api/models/demo/matrix?metric=gain&top=50")
    expect(canvas).to_have_attribute("data-metric", "gain")  # redrawn (the row count may be the same)
    expect(canvas).to_have_attribute("data-rows", str(len(gain["factors"])))
    page.mouse.move(*heatmap_cell(page, 1, 0))
    expect(readout).to_contain_text(f"{gain['symbols'][0]} · {gain['factors'][1]} · gain")
    page.mouse.move(*heatmap_cell(page, 2, 3))
    shot = SHOTS / "05-heatmap.png"
    page.locator("#heatmap").screenshot(path=str(shot))
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "heatmap.png")

    # The factor list sorts by usage.
    page.locator("#factor-sort").select_option("mean")
    page.locator("#factor-metric").select_option("gain")
    _, factors = api(server, "GET", "/api/models/demo/factors")
    by_gain = sorted(factors["usage"], key=lambda u: (-u["mean_abs"].get("gain", -1), u["factor"]))
    names = page.locator("#factor-union li .factor-name").all_inner_texts()
    assert names == [u["factor"] for u in by_gain]

    # Click: that symbol's page.
    page.mouse.click(*heatmap_cell(page, 0, 0))
    expect(page.get_by_role("heading", name=gain["symbols"][0], exact=True)).to_be_visible()
    assert page.url.endswith(f"#/models/demo/{gain['symbols'][0]}")


def test_heatmap_of_500_symbols_by_200_factors(ui, server, big_model):
    status, model = api(server, "POST", "/api/models", {"name": "big", "path": str(big_model)})
    assert status in (200, 201), model
    assert model["symbol_count"] == BIG_SYMBOLS
    page = ui.page
    ui.sign_in("#/models/big")
    canvas = page.locator("#heatmap canvas.heatmap-overlay")
    expect(canvas).to_have_attribute("data-cols", str(BIG_SYMBOLS))
    page.locator("#heatmap-top").select_option("0")
    expect(canvas).to_have_attribute("data-rows", str(BIG_FACTORS), timeout=20_000)
    _, matrix = api(server, "GET", "/api/models/big/matrix?metric=kendall_tau")
    assert len(matrix["factors"]) == BIG_FACTORS and len(matrix["symbols"]) == BIG_SYMBOLS
    readout = page.locator("#heatmap-readout")
    for i, j in [(0, 0), (57, 311), (BIG_FACTORS - 1, BIG_SYMBOLS - 1)]:
        page.mouse.move(*heatmap_cell(page, i, j))
        value = matrix["values"][i][j]
        expect(readout).to_contain_text(f"{matrix['symbols'][j]} · {matrix['factors'][i]} · kendall_tau")
        assert readout.get_attribute("data-value") == ("" if value is None else None) or \
            float(readout.get_attribute("data-value")) == value
    page.locator("#heatmap").screenshot(path=str(SHOTS / "06-heatmap-500x200.png"))
    page.mouse.click(*heatmap_cell(page, 57, 311))
    expect(page.get_by_role("heading", name=matrix["symbols"][311], exact=True)).to_be_visible()


def test_importance_in_the_chart_and_the_scatter(ui, server, demo_models):
    page = ui.page
    ensure_demo(server, demo_models)
    ui.sign_in("#/models/demo/SOLUSDT")
    _, detail = api(server, "GET", "/api/models/demo/symbols/SOLUSDT")
    gain = detail["importance"]["gain"]
    assert gain

    page.locator("#chart-metric").select_option("gain")
    expect(page.locator("#chart-title")).to_have_text("gain per factor")
    bars = page.locator("#ic-chart svg rect.bar")
    expect(bars).to_have_count(len(gain))
    charted = {page.locator("#ic-chart g.bar-row").nth(i).get_attribute("data-factor"): float(v)
               for i, v in enumerate(bars.evaluate_all("els => els.map(e => e.dataset.value)"))
               if page.locator("#ic-chart g.bar-row").nth(i).locator("rect.bar").count()}
    assert charted == gain

    # The scatter: one point per factor with a kendall_tau; unused factors hollow on the zero line.
    points = page.locator("#importance circle.scatter-point")
    tau = {r[0]: r[detail["ic"]["columns"].index("kendall_tau")] for r in detail["ic"]["rows"]}
    expect(points).to_have_count(sum(1 for f in set(detail["factors"]) if tau.get(f) is not None))
    shown = points.evaluate_all("els => els.map(e => [e.dataset.factor, e.dataset.tau, e.dataset.gain])")
    for factor, t, g in shown:
        assert float(t) == tau[factor]
        assert (float(g) if g else None) == gain.get(factor)
    expect(page.locator("#importance .scatter-unused")).to_have_count(
        sum(1 for f in set(detail["factors"]) if tau.get(f) is not None and f not in gain))
    expect(page.locator("#disagreement-table")).to_be_visible()
    page.locator("#importance").screenshot(path=str(SHOTS / "07-importance.png"))
    assert State.token is not None
