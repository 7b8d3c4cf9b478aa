"""The versions UI in a real browser (Debian's headless Chromium, Playwright) against a real
`model-manager serve` process: the Versions panel of a symbol page (history, badges, live periods,
pin / rollback / unpin with a reason), the comparison of two versions, and hold / release on the
models page.

The model directory holds tiny XGBoost models trained here. Its groups are retrained the way a
training job does it — the files rewritten in place — and the server re-reads them with
POST …/refresh, so SOLUSDT and ETHUSDT have versions 1 and 2 before the browser opens.

Screenshots go to test-artifacts/ui/. With UPDATE_SCREENSHOT=1 the symbol page's Versions panel is
also copied to docs/versions.png (a plain run leaves the repo clean).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import xgboost as xgb

from tests.support import FACTORS, REPO, ServerProcess, http, run_cli, write_group
from tests.test_ui import CHROMIUM, CHROMIUM_ARGS, Page, expect, playwright_sync

pytestmark = [pytest.mark.browser]

PASSWORD = "versions ui password"
MODEL = "prod"
# ETHUSDT's retrain drops a factor and adds one whose name is markup: it must stay text.
HOSTILE = '<img src=x onerror="window.__pwned=1">'
SOL_V2_FACTORS = ["spread_bps", "ofi_1m", "depth_imb_5", "ret_lag_1m", "vol_15m"]  # two moved, one renamed
ETH_V2_FACTORS = ["ofi_1m", "spread_bps", "depth_imb_5", HOSTILE]  # dim 5 -> 4


# ---- fixtures ---------------------------------------------------------------------------------

def ic_csv(factors: list[str], scale: float) -> str:
    rows = "".join(f"{f},{scale * (i - 2) / 100:.4f},{scale * 0.02:.4f},{scale * (2 - i) / 80:.4f}\n" for i, f in enumerate(factors))
    return "factor,ic,rank_ic,kendall_tau\n" + rows


def regressor(x, y, *, rounds: int, depth: int):
    return xgb.XGBRegressor(n_estimators=rounds, max_depth=depth, n_jobs=1).fit(x, y)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("versions-ui") / "models"
    info = {"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": len(FACTORS), "n_samples": 80, "learning_rate": 0.3}
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"], info=info, ic=ic_csv(FACTORS, 1.0))
    write_group(d, "ETHUSDT_mid_chg_5m", model=models["regressor"], ic=ic_csv(FACTORS, 0.5))
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    write_group(d, "XRPUSDT_mid_chg_1m", model=models["regressor"])
    return d


def retrain(model_dir, training_data) -> None:
    """Rewrite SOLUSDT (same dim, another model, factors moved and renamed) and ETHUSDT (one factor
    fewer) in place, as a training job does."""
    x, y = training_data
    info = {"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": len(SOL_V2_FACTORS), "n_samples": 80,
            "learning_rate": 0.1, "note": "retrained"}
    write_group(model_dir, "SOLUSDT_mid_chg_1m", model=regressor(x, y * 1.5 + 0.2, rounds=8, depth=3),
                factors=SOL_V2_FACTORS, info=info, ic=ic_csv(SOL_V2_FACTORS, 1.6))
    write_group(model_dir, "ETHUSDT_mid_chg_5m", model=regressor(x[:, :4], y, rounds=6, depth=2),
                factors=ETH_V2_FACTORS, ic=ic_csv(ETH_V2_FACTORS, 0.8))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("versions-ui-data")
    done = run_cli("password", "init", "--password-stdin", "--data-dir", str(data_dir), input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    # Two versions kept per group (plus the pinned and the live one): a third retrain prunes one.
    with ServerProcess(data_dir, extra_args=("--no-watch",), env={"MODEL_MANAGER_KEEP_VERSIONS": "2"}) as proc:
        yield proc


@pytest.fixture(scope="module")
def token(server) -> str:
    status, _, raw = server.post("/api/auth/login", {"password": PASSWORD})
    assert status == 200, raw
    return json.loads(raw)["token"]


@pytest.fixture(scope="module")
def versioned(server, token, model_dir, training_data):
    """`prod` registered (version 1 of every group), then SOLUSDT and ETHUSDT retrained (version 2)."""
    assert call(server, token, "POST", "/api/models", {"name": MODEL, "path": str(model_dir)})[0] == 201
    retrain(model_dir, training_data)
    status, model = call(server, token, "POST", f"/api/models/{MODEL}/refresh")
    assert status == 200, model
    for symbol in ("SOLUSDT", "ETHUSDT"):
        _, versions = call(server, token, "GET", f"/api/models/{MODEL}/symbols/{symbol}/versions")
        assert [v["version"] for v in versions["versions"]] == [2, 1], versions
    return model_dir


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def ui(browser, server):
    tab = Page(browser, server)
    yield tab
    errors = tab.unexpected_errors()
    tab.close()
    assert errors == [], f"console errors: {errors}"


def call(server: ServerProcess, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    status, _, raw = http(method, server.url + path, token=token, body=body)
    return status, (json.loads(raw) if raw else None)


def sign_in(tab: Page, token: str, hash_path: str) -> None:
    """Open the UI with a token of our own in sessionStorage, at hash_path."""
    tab.open(hash_path)
    expect(tab.page.locator("#login-form")).to_be_visible()
    tab.page.evaluate("t => sessionStorage.setItem('model-manager.token', t)", token)
    tab.page.reload()
    expect(tab.page.locator("#logout-button")).to_be_visible()


def row(page, version: int):
    return page.locator(f"#versions-table tr[data-version='{version}']")


def served(server: ServerProcess, token: str, symbol: str, version: int | None = None) -> bytes:
    query = f"?version={version}" if version else ""
    status, _, raw = http("GET", f"{server.url}/api/models/{MODEL}/model/{symbol}{query}", token=token)
    assert status == 200, raw
    return raw


# ---- the Versions panel -------------------------------------------------------------------------

def test_panel_lists_the_history_with_badges_and_live_periods(ui, server, token, versioned):
    page = ui.page
    sign_in(ui, token, f"#/models/{MODEL}/SOLUSDT")
    expect(page.get_by_role("heading", name="Versions", exact=True)).to_be_visible()
    _, versions = call(server, token, "GET", f"/api/models/{MODEL}/symbols/SOLUSDT/versions")

    rows = page.locator("#versions-table tbody tr")
    expect(rows).to_have_count(2)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.version)") == ["2", "1"]  # newest first
    expect(page.locator("#versions-summary")).to_have_text("2 versions · live v2 · latest v2")
    expect(row(page, 2).locator(".badge-live")).to_have_text("live")
    expect(row(page, 1).locator(".badge-live")).to_have_count(0)
    expect(page.locator("#versions-table .badge-pinned")).to_have_count(0)

    # v1 was live from registration until the retrain; v2 since then, still.
    v1 = next(v for v in versions["versions"] if v["version"] == 1)
    v2 = next(v for v in versions["versions"] if v["version"] == 2)
    assert len(v1["live_periods"]) == 1 and v1["live_periods"][0][1] is not None
    periods_v1 = row(page, 1).locator(".periods li")
    expect(periods_v1).to_have_count(1)
    expect(periods_v1.locator("time").first).to_have_attribute("datetime", v1["live_periods"][0][0])
    expect(periods_v1.locator("time").nth(1)).to_have_attribute("datetime", v1["live_periods"][0][1])
    expect(row(page, 2).locator(".periods li")).to_have_count(1)
    expect(row(page, 2).locator(".periods li")).to_contain_text("– now")
    expect(row(page, 2).locator(".periods time").first).to_have_attribute("datetime", v2["live_periods"][0][0])

    # dim, factors, source and status of each version
    for v in (v1, v2):
        cells = row(page, v["version"]).locator("td")
        expect(cells.nth(2)).to_have_text(str(v["dim"]))
        expect(cells.nth(3)).to_have_text(str(v["factor_count"]))
        expect(cells.nth(4)).to_have_text(v["model_source"])
        expect(cells.nth(5)).to_have_text(v["status"])
    # Pin is offered on every kept version that is not pinned yet.
    expect(page.get_by_role("button", name="Pin v1", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Pin v2", exact=True)).to_be_visible()
    expect(page.locator("#unpin-button")).to_be_hidden()


def test_rollback_with_a_reason_serves_v1_then_unpin_serves_v2(ui, server, token, versioned):
    page = ui.page
    v1_bytes = served(server, token, "SOLUSDT", 1)
    v2_bytes = served(server, token, "SOLUSDT", 2)
    assert v1_bytes != v2_bytes
    sign_in(ui, token, f"#/models/{MODEL}/SOLUSDT")
    expect(row(page, 2).locator(".badge-live")).to_be_visible()

    # Keyboard only: type the reason, tab to Roll back, press Enter.
    reason = "v2 trades badly <b>since</b> 14:00"  # markup in a reason stays text
    page.get_by_label("Reason").fill(reason)
    page.get_by_label("Reason").press("Tab")
    expect(page.locator("#rollback-button")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#versions-message")).to_contain_text("Rolled back: v1 is live")
    expect(page.locator("#rollback-button")).to_be_focused()  # the keyboard stays where it was
    expect(row(page, 1).locator(".badge-live")).to_be_visible()
    expect(row(page, 1).locator(".badge-pinned")).to_be_visible()
    expect(row(page, 2).locator(".badge-live")).to_have_count(0)
    expect(row(page, 2).locator(".badge-unknown")).to_have_text("latest")
    expect(page.locator("#pin-notice")).to_contain_text("v1 is served until it is unpinned")
    expect(page.locator("#pin-notice q")).to_have_text(reason)
    assert page.locator("#pin-notice b").count() == 0
    expect(page.locator("#versions-summary")).to_have_text("2 versions · live v1 · latest v2")
    expect(page.get_by_label("Reason")).to_have_value("")
    expect(page.get_by_role("button", name="Pin v1", exact=True)).to_have_count(0)  # already pinned
    # v1 has been live twice now: from registration until the retrain, and since the rollback.
    expect(row(page, 1).locator(".periods li")).to_have_count(2)
    expect(row(page, 1).locator(".periods li").nth(1)).to_contain_text("now")

    # Engines get v1's bytes again, exactly.
    assert served(server, token, "SOLUSDT") == v1_bytes
    payload = json.loads(v1_bytes)
    assert payload["payload"]["metadata"]["version"] == 1
    _, versions = call(server, token, "GET", f"/api/models/{MODEL}/symbols/SOLUSDT/versions")
    assert versions["live_version"] == 1 and versions["pinned_version"] == 1
    assert versions["pin"]["reason"] == reason
    ui.shot("10-versions-rolled-back")

    # Unpin: the latest is served again.
    unpin = page.locator("#unpin-button")
    expect(unpin).to_have_text("Unpin v1")
    page.get_by_label("Reason").fill("fixed upstream")
    unpin.click()
    expect(page.locator("#versions-message")).to_contain_text("Unpinned: v2 is live (the latest)")
    expect(row(page, 2).locator(".badge-live")).to_be_visible()
    expect(page.locator("#versions-table .badge-pinned")).to_have_count(0)
    expect(page.locator("#pin-notice")).to_have_count(0)
    expect(unpin).to_be_hidden()
    assert served(server, token, "SOLUSDT") == v2_bytes

    # Pin from a row: v1 again, then unpin through the API so later tests start from v2.
    page.get_by_role("button", name="Pin v1", exact=True).click()
    expect(page.locator("#versions-message")).to_contain_text("Pinned v1")
    expect(row(page, 1).locator(".badge-pinned")).to_be_visible()
    assert served(server, token, "SOLUSDT") == v1_bytes
    assert call(server, token, "DELETE", f"/api/models/{MODEL}/symbols/SOLUSDT/pin")[0] == 200
    page.locator("#versions-reload").click()
    expect(row(page, 2).locator(".badge-live")).to_be_visible()


def test_refused_rollback_shows_the_api_detail_inline(ui, server, token, versioned):
    """BTCUSDT has one version only: the 409's detail is shown next to the buttons."""
    page = ui.page
    ui.allow(409)
    status, refused = call(server, token, "POST", f"/api/models/{MODEL}/symbols/BTCUSDT/rollback", {"reason": "x"})
    assert status == 409
    sign_in(ui, token, f"#/models/{MODEL}/BTCUSDT")
    expect(page.locator("#versions-table tbody tr")).to_have_count(1)
    page.locator("#rollback-button").click()
    expect(page.locator("#versions-message")).to_have_text(refused["detail"])
    expect(page.locator("#versions-message")).to_have_class("message message-error")
    expect(page.locator("#version-diff")).to_contain_text("Only one version so far")
    expect(page.locator("#diff-form")).to_be_hidden()


# ---- the comparison -----------------------------------------------------------------------------

def test_diff_shows_factor_changes_ic_deltas_and_prediction_agreement(ui, server, token, versioned):
    page = ui.page
    _, diff = call(server, token, "GET", f"/api/models/{MODEL}/symbols/SOLUSDT/diff")
    assert diff["from"]["version"] == 1 and diff["to"]["version"] == 2
    sign_in(ui, token, f"#/models/{MODEL}/SOLUSDT")

    # Default: the latest against the one before.
    expect(page.locator("#diff-from")).to_have_value("1")
    expect(page.locator("#diff-to")).to_have_value("2")
    result = page.locator("#diff-result")
    expect(result.locator("#diff-added li")).to_have_text(diff["factors"]["added"])
    expect(result.locator("#diff-removed li")).to_have_text(diff["factors"]["removed"])
    assert diff["factors"]["added"] == ["vol_15m"] and diff["factors"]["removed"] == ["vol_5m"]
    moved = result.locator("#diff-moved tbody tr")
    expect(moved).to_have_count(len(diff["factors"]["moved"]))
    for i, m in enumerate(diff["factors"]["moved"]):
        expect(moved.nth(i)).to_have_text(f"{m['factor']}{m['from_dim']} → {m['to_dim']}")
    expect(result.locator("#diff-dim dd")).to_have_text("5 (same)")
    trees = diff["model"]["num_trees"]
    expect(result.locator("#diff-trees dd")).to_have_text(f"{trees['from']} → {trees['to']}")

    # Prediction agreement: the API's numbers, six decimals.
    p = diff["predictions"]
    assert p is not None and p["rows"] > 0
    table = result.locator("#diff-predictions table")
    expect(table.locator("tr:has(th:text-is('rows')) td")).to_have_text(f"{p['rows']:,}")
    for key, label in (("mean_abs_diff", "mean abs diff"), ("max_abs_diff", "max abs diff"), ("correlation", "correlation")):
        shown = table.locator(f"tr:has(th:text-is('{label}')) td").inner_text()
        assert float(shown) == pytest.approx(p[key], abs=1e-6)

    # The IC delta chart: one bar per factor with a value on both sides, kendall_tau by default.
    expect(result.locator("#diff-metric")).to_have_value("kendall_tau")
    deltas = {d["factor"]: d["delta"] for d in diff["ic"] if d["metric"] == "kendall_tau"}
    bars = result.locator("#diff-ic svg rect.bar")
    expect(bars).to_have_count(sum(v is not None for v in deltas.values()))
    charted = dict(zip(result.locator("#diff-ic g.bar-row").evaluate_all("rs => rs.map(r => r.dataset.factor)"),
                       result.locator("#diff-ic g.bar-row").evaluate_all(
                           "rs => rs.map(r => { const b = r.querySelector('rect.bar'); return b ? Number(b.dataset.value) : null; })")))
    assert charted.keys() == deltas.keys()
    assert {f for f, v in charted.items() if v is None} == {f for f, v in deltas.items() if v is None}
    assert {f: v for f, v in charted.items() if v is not None} == pytest.approx({f: v for f, v in deltas.items() if v is not None})
    result.locator("#diff-metric").select_option("ic")
    ic_deltas = sorted(d["delta"] for d in diff["ic"] if d["metric"] == "ic" and d["delta"] is not None)
    assert sorted(float(v) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)")) == pytest.approx(ic_deltas)

    # Info keys and model parameters that changed.
    info = result.locator("#diff-info")
    expect(info.locator("#diff-info-changed tr:has(th:text-is('learning_rate')) td")).to_have_text(["0.300000", "0.100000"])
    expect(info.locator(".chip-list-added li")).to_have_text(diff["info"]["added"])
    params = result.locator("#diff-params tbody tr")
    expect(params).to_have_count(len(diff["model"]["params"]["changed"]))
    assert "null" not in result.inner_text() and "undefined" not in result.inner_text()
    ui.shot("11-versions-diff")

    # Any two versions, keyboard only: v2 -> v1 swaps added and removed.
    page.locator("#diff-from").select_option("2")
    page.locator("#diff-to").select_option("1")
    page.locator("#diff-to").focus()
    page.keyboard.press("Tab")
    expect(page.locator("#diff-button")).to_be_focused()
    page.keyboard.press("Enter")
    expect(result.locator("#diff-added li")).to_have_text(["vol_5m"])
    expect(result.locator("#diff-removed li")).to_have_text(["vol_15m"])

    # The same version twice is refused before asking the server.
    page.locator("#diff-to").select_option("2")
    page.locator("#diff-button").click()
    expect(page.locator("#diff-message")).to_have_text("Pick two different versions to compare.")

    # A row's Diff button compares it with the version before.
    page.get_by_role("button", name="Compare v2 with v1").click()
    expect(page.locator("#diff-from")).to_have_value("1")
    expect(page.locator("#diff-to")).to_have_value("2")
    expect(result.locator("#diff-added li")).to_have_text(["vol_15m"])


def test_diff_of_different_dims_is_not_comparable_and_names_stay_text(ui, server, token, versioned):
    page = ui.page
    _, diff = call(server, token, "GET", f"/api/models/{MODEL}/symbols/ETHUSDT/diff")
    assert diff["predictions"] is None and diff["predictions_note"]
    sign_in(ui, token, f"#/models/{MODEL}/ETHUSDT")
    result = page.locator("#diff-result")
    expect(result.locator("#diff-predictions .not-comparable")).to_have_text(f"Not comparable: {diff['predictions_note']}.")
    expect(result.locator("#diff-correlation dd")).to_have_text("not comparable")
    expect(result.locator("#diff-dim dd")).to_have_text("5 → 4")
    expect(result.locator("#diff-added li")).to_have_text([HOSTILE])
    expect(result.locator("#diff-removed li")).to_have_text(["ret_lag_1m", "vol_5m"])
    expect(result.locator(f"#diff-ic g.bar-row[data-factor='{HOSTILE}']")).to_have_count(1)
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_pruned_versions_are_greyed_and_cannot_be_pinned(ui, server, token, versioned, training_data):
    """XRPUSDT retrained twice: with two versions kept, v1's bytes are pruned; its record stays."""
    page = ui.page
    x, y = training_data
    for rounds in (3, 4):
        write_group(versioned, "XRPUSDT_mid_chg_1m", model=regressor(x, y + rounds, rounds=rounds, depth=2))
        assert call(server, token, "POST", f"/api/models/{MODEL}/refresh")[0] == 200
    _, versions = call(server, token, "GET", f"/api/models/{MODEL}/symbols/XRPUSDT/versions")
    assert [(v["version"], v["pruned"]) for v in versions["versions"]] == [(3, False), (2, False), (1, True)]
    sign_in(ui, token, f"#/models/{MODEL}/XRPUSDT")
    expect(row(page, 1)).to_have_class("version-pruned")
    expect(row(page, 1).locator(".badge-pruned")).to_have_text("pruned")
    expect(row(page, 1).locator(".periods li")).to_have_count(1)  # when it was live is still known
    expect(page.get_by_role("button", name="Pin v1", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Pin v2", exact=True)).to_be_visible()
    expect(row(page, 3).locator(".badge-live")).to_be_visible()
    ui.shot("14-versions-pruned", clip_height=760)

    # A pruned version still compares (its record keeps factors, IC, info), but not its predictions.
    page.locator("#diff-from").select_option("1")
    page.locator("#diff-to").select_option("3")
    page.locator("#diff-button").click()
    _, diff = call(server, token, "GET", f"/api/models/{MODEL}/symbols/XRPUSDT/diff?from=1&to=3")
    expect(page.locator("#diff-predictions .not-comparable")).to_have_text(f"Not comparable: {diff['predictions_note']}.")
    expect(page.locator("#diff-trees dd")).to_have_text(f"{diff['model']['num_trees']['from']} → {diff['model']['num_trees']['to']}")
    expect(page.locator("#diff-factor-counts dd")).to_have_text("same factors, same dims")


# ---- hold and release -----------------------------------------------------------------------------

def test_hold_and_release_on_the_models_page(ui, server, token, versioned, training_data):
    page = ui.page
    sign_in(ui, token, "#/models")
    model_row = page.locator(f"#models-list tr[data-model='{MODEL}']")
    expect(model_row.locator(".badge-held")).to_have_count(0)

    # Hold, with a reason; Escape cancels first.
    model_row.get_by_role("button", name="Hold").click()
    expect(model_row.get_by_label("Reason")).to_be_focused()
    page.keyboard.press("Escape")
    expect(model_row.get_by_role("button", name="Hold")).to_be_focused()
    model_row.get_by_role("button", name="Hold").click()
    reason = "checking the <i>new</i> training run"
    model_row.get_by_label("Reason").fill(reason)
    ui.shot("12-models-hold-form")
    model_row.get_by_label("Reason").press("Enter")
    expect(page.locator("#models-message")).to_contain_text(f"Held {MODEL}")
    expect(model_row.locator(".badge-held")).to_have_text("held")
    expect(model_row.locator(".held-info q")).to_have_text(reason)
    expect(model_row.locator(".held-info time")).to_be_visible()
    _, models = call(server, token, "GET", "/api/models")
    assert next(m for m in models["models"] if m["name"] == MODEL)["held"] is True
    ui.shot("12-models-held")

    # While held, a retrain of BTCUSDT is recorded (v2) but v1 stays live; the symbol page says why.
    x, y = training_data
    write_group(versioned, "BTCUSDT_mid_chg_1m", model=regressor(x, -y, rounds=4, depth=2))
    assert call(server, token, "POST", f"/api/models/{MODEL}/refresh")[0] == 200
    page.goto(f"{server.url}/#/models/{MODEL}/BTCUSDT")
    expect(page.locator("#hold-notice")).to_contain_text(f"{MODEL} is held since")
    expect(page.locator("#hold-notice q")).to_have_text(reason)
    expect(row(page, 1).locator(".badge-live")).to_be_visible()
    expect(row(page, 2).locator(".badge-unknown")).to_have_text("latest")
    page.locator("#crumbs").get_by_role("link", name=MODEL).click()
    expect(page.locator("#model-held")).to_have_text("held")

    # Release: the badge goes, the latest is served.
    page.locator("#crumbs").get_by_role("link", name="Models").click()
    model_row.get_by_role("button", name="Release").click()
    model_row.get_by_label("Reason").fill("new models checked")
    model_row.get_by_role("button", name="Yes, release").click()
    expect(page.locator("#models-message")).to_contain_text(f"Released {MODEL}")
    expect(model_row.locator(".badge-held")).to_have_count(0)
    expect(model_row.get_by_role("button", name="Hold")).to_be_visible()
    _, versions = call(server, token, "GET", f"/api/models/{MODEL}/symbols/BTCUSDT/versions")
    assert versions["held"] is False and versions["live_version"] == 2


def test_screenshot_of_the_versions_panel(ui, server, token, versioned):
    """The symbol page with its Versions panel (rolled back, so every badge shows) and the diff."""
    page = ui.page
    assert call(server, token, "POST", f"/api/models/{MODEL}/symbols/SOLUSDT/rollback",
                {"reason": "v2 loses money on thin books"})[0] == 200
    try:
        sign_in(ui, token, f"#/models/{MODEL}/SOLUSDT")
        page.set_viewport_size({"width": 1366, "height": 900})
        expect(row(page, 1).locator(".badge-pinned")).to_be_visible()
        expect(page.locator("#diff-predictions table")).to_be_visible()
        page.mouse.move(0, 0)
        shot = ui.shot("13-versions-panel")
        panel = page.locator("#versions").bounding_box()
        diff = page.locator("#version-diff").bounding_box()
        clip = {"x": 0, "y": 0, "width": 1366, "height": diff["y"] + diff["height"] + 16}
        assert panel["y"] < diff["y"]
        page.screenshot(path=str(shot.with_name("13-versions-panel-clip.png")), full_page=True, clip=clip)
        if os.environ.get("UPDATE_SCREENSHOT") == "1":
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot.with_name("13-versions-panel-clip.png"), REPO / "docs" / "versions.png")
    finally:
        assert call(server, token, "DELETE", f"/api/models/{MODEL}/symbols/SOLUSDT/pin")[0] == 200
