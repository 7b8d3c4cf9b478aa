"""The "Engines" page in a real browser (headless Chromium, as in test_ui.py) against a real server:
an engine fetching a payload shows as current, a retrain makes it behind, a fetch current again —
without reloading the page, which refreshes itself."""
from __future__ import annotations

import pickle
from pathlib import Path

import httpx
import pytest
import xgboost as xgb

from tests.support import REPO, ServerProcess, prepare_data_dir, replace_file, write_group

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "engines page password"
MODEL = "fleet-demo"
GROUP = "SOLUSDT_mid_chg_1m"

pytestmark = [pytest.mark.browser]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = playwright_sync.expect
if not CHROMIUM.exists():  # pragma: no cover
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package", allow_module_level=True)


@pytest.fixture
def served(tmp_path, models):
    directory = tmp_path / "models"
    write_group(directory, GROUP, model=models["regressor"])
    write_group(directory, "BTCUSDT_mid_chg_1m", model=models["booster"])
    prepare_data_dir(tmp_path / "data", PASSWORD, {MODEL: directory})
    # two workers, as on a two-core machine by default: the engine's polls land on either, and the page
    # shows what both of them saw
    with ServerProcess(tmp_path / "data", workers=2, extra_args=("--watch-debounce", "0.3")) as server:
        yield server, directory


@pytest.fixture
def page():
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1366, "height": 768})
            tab = context.new_page()
            errors: list[str] = []
            tab.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            tab.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            yield tab
            assert not errors, errors
        finally:
            browser.close()


def state_of(page, symbol: str):
    return page.locator(".fleet-table tbody tr", has_text=symbol).locator(".fleet-state")


def test_engines_page_follows_an_engine_through_a_retrain(served, page, training_data):
    server, directory = served
    page.goto(f"{server.url}/#/models/{MODEL}")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#server-workers")).to_have_text("2 worker processes")
    page.locator("#engines-link").click()
    expect(page).to_have_url(f"{server.url}/#/engines/{MODEL}")
    expect(page.locator("h1")).to_have_text("Engines")
    expect(page.locator("#fleet-summary")).to_contain_text("No client has fetched")

    engine = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.login(PASSWORD)}"}, timeout=60)
    first = engine.get(f"/api/models/{MODEL}/model/SOLUSDT")
    assert first.status_code == 200
    expect(state_of(page, "SOLUSDT")).to_have_attribute("data-state", "current", timeout=20_000)
    expect(state_of(page, "BTCUSDT")).to_have_attribute("data-state", "never")
    expect(page.locator("#fleet-summary")).to_contain_text("1 client")

    x, y = training_data
    retrained = xgb.XGBRegressor(n_estimators=9, max_depth=2, n_jobs=1).fit(x, y)
    replace_file(directory / f"{GROUP}_model.pkl", pickle.dumps(retrained))
    expect(state_of(page, "SOLUSDT")).to_have_attribute("data-state", "behind", timeout=30_000)
    row = page.locator(".fleet-table tbody tr", has_text="SOLUSDT")
    expect(row).to_contain_text("since")
    expect(page.locator("#fleet-summary")).to_contain_text("1 behind")
    shots = REPO / "test-artifacts" / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "engines.png"), full_page=True)

    page.locator("#fleet-filter").select_option("behind")
    expect(page.locator(".fleet-table tbody tr")).to_have_count(1)
    page.locator("#fleet-filter").select_option("all")

    again = engine.get(f"/api/models/{MODEL}/model/SOLUSDT", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 200 and again.json()["payload"]["metadata"]["version"] == 2
    expect(state_of(page, "SOLUSDT")).to_have_attribute("data-state", "current", timeout=20_000)
    expect(page.locator("#fleet-summary")).to_contain_text("none behind")
    engine.close()
