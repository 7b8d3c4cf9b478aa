"""The web UI in a real browser: Debian's headless Chromium driven by Playwright against a real
`model-manager serve` process and the demo model directory.

One browser serves the whole module, and one server every test but the first-run one (which gets a
server of its own, never initialized). The tests follow the steps a new user takes (first-run
password, register, explore, download, log out), but none depends on another having run: the helpers
set the password and register through the API when an earlier step did not.

Screenshots of the main views go to test-artifacts/ui/. With UPDATE_SCREENSHOT=1 the symbol-detail
one is also copied to docs/screenshot.png, the README's picture (a plain run leaves the repo clean).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import PASSWORD, REPO, ServerProcess, http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHOTS = REPO / "test-artifacts" / "ui"
LAPTOP = {"width": 1366, "height": 768}
DESKTOP = {"width": 1920, "height": 1080}
RESOURCE_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")
SETUP_CODE = re.compile(r"setup code: ([A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4})", re.IGNORECASE)

pytestmark = [pytest.mark.browser]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = playwright_sync.expect
PlaywrightTimeoutError = playwright_sync.TimeoutError
expect.set_options(timeout=15_000)  # the default 5 s is tight for Chromium and a server on a loaded two-core machine

if not CHROMIUM.exists():  # pragma: no cover - CI installs Debian's chromium
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)",
                allow_module_level=True)


# ---- fixtures ---------------------------------------------------------------------------------

class State:
    """What earlier steps established on the shared server."""

    password = PASSWORD
    token: str | None = None  # the tests' own API token (not the browser's)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ui-data")
    with ServerProcess(data_dir, extra_args=("--no-watch",)) as proc:
        yield proc


@pytest.fixture
def fresh_server(tmp_path):
    """A server of its own on an empty data dir: no password yet, the setup code in its output."""
    with ServerProcess(tmp_path / "data", extra_args=("--no-watch",)) as proc:
        yield proc


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory, _demo_template):
    """A module-wide copy of the demo model directory (the `demo_dir` fixture is per test)."""
    target = tmp_path_factory.mktemp("ui-demo") / "demo-models"
    shutil.copytree(_demo_template, target)
    return target


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


class Page:
    """A browser tab plus the console errors it produced. Tests declare the HTTP error statuses
    they provoke on purpose (the browser logs every 4xx fetch as a console error); anything else
    on the console fails the test."""

    def __init__(self, browser, server, **context_args):
        context_args.setdefault("viewport", LAPTOP)
        self.context = browser.new_context(accept_downloads=True, **context_args)
        self.page = self.context.new_page()
        self.server = server
        self.errors: list[str] = []
        self.allowed_statuses: set[int] = set()
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def allow(self, *statuses: int) -> None:
        self.allowed_statuses.update(statuses)

    def open(self, hash_path: str = "") -> None:
        self.page.goto(self.server.url + "/" + hash_path)

    def sign_in(self, hash_path: str = "#/models") -> None:
        """Put a fresh token (from the API) in sessionStorage and open the page at hash_path."""
        token = api_token(self.server)
        self.open(hash_path)
        expect(self.page.locator("#login-form")).to_be_visible()
        self.page.evaluate("t => sessionStorage.setItem('model-manager.token', t)", token)
        self.page.reload()
        expect(self.page.locator("#logout-button")).to_be_visible()

    def shot(self, name: str, *, clip_height: int | None = None) -> Path:
        """A full-page screenshot (or the top clip_height pixels) scrolled to the top, so the
        sticky header sits where it belongs."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.mouse.move(0, 0)  # no hover highlight in the picture
        self.page.evaluate("window.scrollTo(0, 0)")
        if clip_height:
            width = self.page.viewport_size["width"]
            self.page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": clip_height})
        else:
            self.page.screenshot(path=str(path), full_page=True)
        return path

    def unexpected_errors(self) -> list[str]:
        bad = []
        for text in self.errors:
            match = RESOURCE_ERROR.search(text)
            if match and int(match.group(1)) in self.allowed_statuses:
                continue
            bad.append(text)
        return bad

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(browser, server):
    tab = Page(browser, server)
    yield tab
    errors = tab.unexpected_errors()
    tab.close()
    assert errors == [], f"console errors: {errors}"


def api_token(server: ServerProcess) -> str:
    """A token for the shared server (its password set first if no test has set it yet)."""
    return server.login(State.password)


def api(server: ServerProcess, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """Call the API with the tests' own token (logging in again when it was revoked)."""
    for _ in range(2):
        if State.token is None:
            State.token = api_token(server)
        status, _, raw = http(method, server.url + path, token=State.token, body=body)
        if status != 401:
            break
        State.token = None
    return status, (json.loads(raw) if raw else None)


def ensure_demo(server: ServerProcess, demo_models: Path) -> dict:
    status, model = api(server, "POST", "/api/models", {"name": "demo", "path": str(demo_models)})
    assert status in (200, 201), model
    return model


def table_column(page, table_selector: str, column: int) -> list[str]:
    return page.locator(f"{table_selector} tbody tr td:nth-child({column})").all_inner_texts()


def natural_key(text: str) -> list:
    """The UI's text order: case-insensitive, numbers by value (depth_imb_5 < depth_imb_20),
    punctuation before digits and letters."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower().replace("_", " ")) for part in re.split(r"(\d+)", text)]


def as_number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    return None if text in {"—", ""} else float(text)


# ---- first run --------------------------------------------------------------------------------

def test_first_run_asks_for_the_setup_code_and_bootstraps(browser, fresh_server):
    """Uninitialized server: every browser, a local one included, is asked for the one-time setup
    code `serve` printed (a proxy on the same host would make any client look local); the
    `#setup=CODE` link printed with it opens the form with the code filled in."""
    server = fresh_server
    status, _, raw = server.get("/api/auth/status")
    assert json.loads(raw)["initialized"] is False
    codes = SETUP_CODE.findall(server.output())
    assert codes, f"serve printed no setup code:\n{server.output()}"

    tab = Page(browser, server)
    tab.allow(403)
    page = tab.page
    tab.open("#/models")
    expect(page.locator("#bootstrap-form")).to_be_visible()
    expect(page.get_by_label("New password")).to_be_focused()
    expect(page.locator("#setup-code-field")).to_be_visible()
    expect(page.locator("#setup-code-field")).to_contain_text("model-manager serve")
    tab.shot("01-bootstrap")

    # Client-side checks first: short and mismatched passwords never reach the server.
    page.get_by_label("New password").fill("short")
    page.get_by_label("Repeat the password").fill("short")
    page.get_by_label("Setup code").fill("AAAA-AAAA")
    page.get_by_role("button", name="Set password and sign in").click()
    expect(page.locator("#bootstrap-form .message-error")).to_contain_text("at least 8 characters")
    page.get_by_label("New password").fill(State.password)
    page.get_by_label("Repeat the password").fill(State.password + "x")
    page.get_by_label("Repeat the password").press("Enter")  # Enter submits
    expect(page.locator("#bootstrap-form .message-error")).to_contain_text("differ")

    # A wrong code: the server's 403 detail is shown inline.
    page.get_by_label("Repeat the password").fill(State.password)
    page.get_by_role("button", name="Set password and sign in").click()
    expect(page.locator("#bootstrap-form .message-error")).to_contain_text("setup code is wrong")
    tab.shot("01-bootstrap-setup-code")

    # The link `serve` prints fills the code in and leaves the address bar.
    tab.open(f"#setup={codes[-1]}")
    expect(page.get_by_label("Setup code")).to_have_value(codes[-1])
    expect(page).to_have_url(re.compile(r"#/models$"))
    page.get_by_label("New password").fill(State.password)
    page.get_by_label("Repeat the password").fill(State.password)
    page.get_by_role("button", name="Set password and sign in").click()
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    expect(page.locator("#models-list")).to_contain_text("No models registered yet")
    expect(page.locator("#logout-button")).to_be_visible()
    token = page.evaluate("sessionStorage.getItem('model-manager.token')")
    assert token and server.get("/api/models", token=token)[0] == 200
    assert tab.unexpected_errors() == []
    tab.close()


# ---- models -----------------------------------------------------------------------------------

def test_register_shows_api_errors_inline_then_registers_the_demo(ui, server, demo_models, tmp_path):
    page = ui.page
    ui.allow(400)
    status, models = api(server, "GET", "/api/models")
    if any(m["name"] == "demo" for m in models["models"]):
        assert api(server, "DELETE", "/api/models/demo")[0] == 204
    ui.sign_in("#/models")

    missing = tmp_path / "no-such-dir"
    status, expected = api(server, "POST", "/api/models", {"name": "demo", "path": str(missing)})
    assert status == 400
    page.get_by_label("Name").fill("demo")
    page.get_by_label("Directory path").fill(str(missing))
    page.get_by_label("Directory path").press("Enter")
    expect(page.locator("#register-error")).to_have_text(expected["detail"])
    expect(page.get_by_label("Directory path")).to_be_focused()

    page.get_by_label("Directory path").fill(str(demo_models))
    page.get_by_role("button", name="Register").click()
    row = page.locator("#models-list tr[data-model='demo']")
    expect(row).to_be_visible()
    expect(page.locator("#register-error")).to_be_hidden()
    status, models = api(server, "GET", "/api/models")
    model = next(m for m in models["models"] if m["name"] == "demo")
    cells = row.locator("td")
    expect(cells.nth(1)).to_have_text(model["status"])
    expect(cells.nth(2)).to_have_text(str(model["group_count"]))
    expect(cells.nth(3)).to_have_text(str(model["symbol_count"]))
    expect(cells.nth(5)).to_have_text(model["path"])
    assert model["group_count"] == len(list(demo_models.glob("*_factors.txt")))

    # Refresh answers with the model again and says so.
    row.get_by_role("button", name="Refresh").click()
    expect(page.locator("#models-message")).to_contain_text("Refreshed demo")
    ui.shot("02-models")


def test_unregister_asks_for_confirmation(ui, server, demo_models, tmp_path):
    page = ui.page
    spare = tmp_path / "spare"
    shutil.copytree(demo_models, spare)
    assert api(server, "POST", "/api/models", {"name": "spare", "path": str(spare)})[0] in (200, 201)
    ui.sign_in("#/models")
    row = page.locator("#models-list tr[data-model='spare']")
    row.get_by_role("button", name="Unregister").click()
    expect(row).to_contain_text("Unregister spare?")
    row.get_by_role("button", name="Cancel").click()  # cancelling keeps it
    expect(row.get_by_role("button", name="Unregister")).to_be_visible()
    row.get_by_role("button", name="Unregister").click()
    row.get_by_role("button", name="Yes, unregister").click()
    expect(page.locator("#models-list tr[data-model='spare']")).to_have_count(0)
    expect(page.locator("#models-message")).to_contain_text("Unregistered spare")
    assert api(server, "DELETE", "/api/models/spare")[0] == 404
    assert spare.is_dir() and any(spare.iterdir())  # the files stay


# ---- symbols ----------------------------------------------------------------------------------

def test_symbols_view_searches_sorts_and_lists_the_factor_union(ui, server, demo_models):
    page = ui.page
    ensure_demo(server, demo_models)
    ui.sign_in("#/models")
    page.locator("#models-list").get_by_role("link", name="demo").click()
    expect(page).to_have_url(re.compile(r"#/models/demo$"))

    _, symbols = api(server, "GET", "/api/models/demo/symbols")
    _, factors = api(server, "GET", "/api/models/demo/factors")
    table = "#symbols-title + div table"
    rows = page.locator(f"{table} tbody tr")
    expect(rows).to_have_count(len(symbols["symbols"]))
    assert table_column(page, table, 1) == sorted(s["symbol"] for s in symbols["symbols"])

    # Sort by dim, largest first, then reverse.
    page.locator(table).get_by_role("button", name="Dim").click()
    dims = [int(t) for t in table_column(page, table, 3)]
    assert dims == sorted((s["dim"] for s in symbols["symbols"]), reverse=True)
    expect(page.locator(f"{table} th[aria-sort='descending']")).to_contain_text("Dim")
    page.locator(table).get_by_role("button", name="Dim").click()
    assert [int(t) for t in table_column(page, table, 3)] == sorted(dims)

    # Search narrows the rows.
    target = symbols["symbols"][0]
    page.get_by_label("Search symbols").fill(target["symbol"][:3].lower())
    shown = table_column(page, table, 1)
    assert target["symbol"] in shown
    expected = [s["symbol"] for s in symbols["symbols"]
                if any(target["symbol"][:3].lower() in str(s[k]).lower() for k in ("symbol", "return_name", "group_key"))]
    assert sorted(shown) == sorted(expected)
    page.get_by_label("Search symbols").fill("no-such-symbol")
    expect(page.locator(f"{table} tbody")).to_contain_text("No symbol matches")
    page.get_by_label("Search symbols").fill("")

    # The factor union, with its filter.
    union = page.locator("#factor-union li")
    expect(union).to_have_count(factors["factor_count"])
    assert page.locator("#factor-union li .factor-name").all_inner_texts() == factors["factors"]
    needle = "imb"
    page.get_by_label("Filter factors").fill(needle)
    expect(union).to_have_count(sum(needle in f for f in factors["factors"]))
    page.get_by_label("Filter factors").fill("")
    ui.shot("03-symbols")


# ---- symbol detail ------------------------------------------------------------------------------

def test_symbol_detail_shows_chart_factors_metadata_and_sortable_ic(ui, server, demo_models):
    page = ui.page
    ensure_demo(server, demo_models)
    ui.sign_in("#/models/demo")
    page.get_by_role("link", name="SOLUSDT").click()
    expect(page.get_by_role("heading", name="SOLUSDT", exact=True)).to_be_visible()
    _, detail = api(server, "GET", "/api/models/demo/symbols/SOLUSDT")
    columns = detail["ic"]["columns"]
    records = [dict(zip(columns, row)) for row in detail["ic"]["rows"]]
    by_factor = {r["factor"]: r for r in records}

    # The chart: one bar per factor, kendall_tau by default; negative bars left of the zero line.
    bars = page.locator("#ic-chart svg rect.bar")
    expect(bars).to_have_count(len(detail["factors"]))
    expect(page.locator("#chart-metric")).to_have_value("kendall_tau")
    charted = {page.locator("#ic-chart g.bar-row").nth(i).get_attribute("data-factor"): float(v)
               for i, v in enumerate(bars.evaluate_all("els => els.map(e => e.dataset.value)"))}
    assert charted == pytest.approx({f: by_factor[f]["kendall_tau"] for f in detail["factors"]})
    zero = page.locator("#ic-chart line.zero-line").bounding_box()
    for i in range(bars.count()):
        box = bars.nth(i).bounding_box()
        value = float(bars.nth(i).get_attribute("data-value"))
        if value < 0:
            assert box["x"] + box["width"] <= zero["x"] + 1.5
        elif value > 0:
            assert box["x"] >= zero["x"] - 1.5
    assert any(v < 0 for v in charted.values()) and any(v > 0 for v in charted.values())

    # Another metric redraws the bars with its values.
    page.locator("#chart-metric").select_option("ic")
    expect(page.locator("#chart-title")).to_have_text("ic per factor")
    values = sorted(float(v) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)"))
    assert values == pytest.approx(sorted(r["ic"] for r in records))
    page.locator("#chart-metric").select_option("kendall_tau")

    # Factors in dimension order.
    assert table_column(page, "#factor-table", 2) == detail["factors"]
    assert table_column(page, "#factor-table", 1) == [str(i) for i in range(len(detail["factors"]))]

    # Metadata: timestamps as dates, nested params as key/value rows.
    meta = page.locator("#metadata")
    for key in ("train_start", "train_end", "created_at"):
        raw = detail["info"][key]
        moment = datetime.fromisoformat(raw).astimezone(UTC)
        readable = moment.strftime("%Y-%m-%d %H:%M") + (moment.strftime(":%S") if moment.second else "") + " UTC"
        expect(meta.locator(f"tr:has(th:text-is('{key}')) time")).to_have_text(readable)
    params_row = meta.locator("h3:text-is('params') + table tr:has(th:text-is('max_depth'))")
    expect(params_row.locator("td")).to_have_text(str(detail["info"]["params"]["max_depth"]))
    expect(meta.locator("tr:has(th:text-is('n_samples')) td")).to_have_text(f"{detail['info']['n_samples']:,}")

    # The IC table sorts by any metric column; empty values stay last.
    table = "#ic-table table"
    expect(page.locator(f"{table} tbody tr")).to_have_count(len(records))
    metric_index = 2 + columns.index("kendall_tau")  # Dim, factor, then the metrics in file order
    page.locator(table).get_by_role("button", name="kendall_tau").click()
    shown = [as_number(t) for t in table_column(page, table, metric_index)]
    assert shown == pytest.approx(sorted((r["kendall_tau"] for r in records), reverse=True), abs=5e-5)
    assert table_column(page, table, 2) == [r["factor"] for r in sorted(records, key=lambda r: -r["kendall_tau"])]
    page.locator(table).get_by_role("button", name="kendall_tau").click()
    shown = [as_number(t) for t in table_column(page, table, metric_index)]
    assert shown == pytest.approx(sorted(r["kendall_tau"] for r in records), abs=5e-5)
    page.locator(table).get_by_role("button", name="factor").click()
    assert table_column(page, table, 2) == sorted((r["factor"] for r in records), key=natural_key)

    page.locator(table).get_by_role("button", name="kendall_tau").click()
    ui.shot("04-symbol-detail")
    readme_shot = ui.shot("04-symbol-detail-top", clip_height=1000)  # header, chart, metadata: the README picture
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(readme_shot, REPO / "docs" / "screenshot.png")
    page.set_viewport_size(DESKTOP)
    page.wait_for_timeout(200)  # the chart redraws for the new width
    expect(bars).to_have_count(len(detail["factors"]))
    ui.shot("04-symbol-detail-1920")


def test_download_payload_and_the_422_detail(ui, server, demo_models, tmp_path):
    page = ui.page
    ui.allow(422)
    ensure_demo(server, demo_models)
    ui.sign_in("#/models/demo/BTCUSDT")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download payload JSON").click()
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    status, expected = api(server, "GET", "/api/models/demo/model/BTCUSDT")
    assert status == 200
    assert json.loads(saved.read_text()) == expected
    assert download.suggested_filename.endswith(".json")
    expect(page.locator("#download-message")).to_contain_text("Downloaded")

    # A group with errors: the payload is refused (422) and the UI shows why.
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in demo_models.glob("SOLUSDT_mid_chg_1m_*"):
        shutil.copy(source, broken / source.name)
    factors_file = broken / "SOLUSDT_mid_chg_1m_factors.txt"
    factors_file.write_text("\n".join(factors_file.read_text().split()[:-1]) + "\n")  # one factor short
    assert api(server, "POST", "/api/models", {"name": "broken", "path": str(broken)})[0] in (200, 201)
    status, refused = api(server, "GET", "/api/models/broken/model/SOLUSDT")
    assert status == 422
    page.goto(server.url + "/#/models/broken/SOLUSDT")
    expect(page.get_by_role("heading", name="SOLUSDT", exact=True)).to_be_visible()
    expect(page.locator("#issues .issue-error").first).to_be_visible()
    page.get_by_role("button", name="Download payload JSON").click()
    expect(page.locator("#download-message")).to_contain_text(refused["detail"])
    ui.shot("05-symbol-with-errors")
    assert api(server, "DELETE", "/api/models/broken")[0] == 204


def test_hostile_names_are_shown_as_text(ui, server, demo_models, tmp_path):
    """Factor names come from files written by other people: markup in them stays text."""
    page = ui.page
    hostile = '<img src=x onerror="window.__pwned=1">'
    target = tmp_path / "hostile"
    target.mkdir()
    for source in demo_models.glob("SOLUSDT_mid_chg_1m_*"):
        shutil.copy(source, target / source.name)
    factors_file = target / "SOLUSDT_mid_chg_1m_factors.txt"
    factors = factors_file.read_text().split()
    factors_file.write_text("\n".join([hostile, *factors[1:]]) + "\n")
    assert api(server, "POST", "/api/models", {"name": "hostile", "path": str(target)})[0] in (200, 201)
    ui.sign_in("#/models/hostile")
    expect(page.locator("#factor-union li", has_text=hostile)).to_have_count(1)
    page.get_by_role("link", name="SOLUSDT").click()
    expect(page.locator("#factor-table tbody tr").first.locator("td").nth(1)).to_have_text(hostile)
    expect(page.locator(f"#ic-chart g.bar-row[data-factor='{hostile}']")).to_have_count(1)
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert api(server, "DELETE", "/api/models/hostile")[0] == 204


def test_rejected_new_files_keep_the_previous_version_visible(ui, server, demo_models, tmp_path):
    """A refresh that finds broken files keeps serving the last good payload: the UI says so."""
    page = ui.page
    target = tmp_path / "stale"
    target.mkdir()
    for source in demo_models.glob("SOLUSDT_mid_chg_1m_*"):
        shutil.copy(source, target / source.name)
    assert api(server, "POST", "/api/models", {"name": "stale", "path": str(target)})[0] in (200, 201)
    factors_file = target / "SOLUSDT_mid_chg_1m_factors.txt"
    factors_file.write_text("\n".join(factors_file.read_text().split()[:-1]) + "\n")  # now one factor short

    ui.sign_in("#/models/stale")
    page.locator("#refresh-button").click()
    expect(page.locator("#model-message")).to_contain_text("Refreshed")
    expect(page.locator("td", has_text="previous version served")).to_have_count(1)
    page.get_by_role("link", name="SOLUSDT").click()
    expect(page.locator("#stale-notice")).to_contain_text("last good version")
    expect(page.locator("#issues .issue-error")).to_contain_text("factors.txt")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download payload JSON").click()
    served = json.loads(Path(download_info.value.path()).read_text())
    assert len(served["payload"]["dim_factors"]) == served["payload"]["metadata"]["dim"]  # the good one
    page.locator("#crumbs").get_by_role("link", name="Models").click()
    expect(page.locator("#models-list tr[data-model='stale']")).to_contain_text("still served from the previous version")
    assert api(server, "DELETE", "/api/models/stale")[0] == 204


# ---- navigation and sessions --------------------------------------------------------------------

def test_deep_links_survive_a_reload(ui, server, demo_models):
    page = ui.page
    ensure_demo(server, demo_models)
    ui.sign_in("#/models/demo/ETHUSDT")
    expect(page.get_by_role("heading", name="ETHUSDT", exact=True)).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="ETHUSDT", exact=True)).to_be_visible()
    expect(page.locator("#crumbs")).to_contain_text("demo")
    page.locator("#crumbs").get_by_role("link", name="demo").click()
    expect(page.get_by_role("heading", name="demo", exact=True)).to_be_visible()
    page.go_back()  # the hash history is navigable
    expect(page).to_have_url(re.compile(r"#/models/demo/ETHUSDT$"))
    expect(page.get_by_role("heading", name="ETHUSDT", exact=True)).to_be_visible()
    page.goto(server.url + "/#/models/demo/NOPEUSDT")
    ui.allow(404)
    expect(page.get_by_role("heading", name="Symbol not found")).to_be_visible()


def test_keys_page_creates_a_key_shown_once_and_revokes_it(ui, server, demo_models):
    page = ui.page
    ui.allow(409)
    ensure_demo(server, demo_models)
    ui.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    ui.sign_in("#/models")
    page.locator("#mainnav").get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    expect(page.locator("#mainnav a[data-nav='keys']")).to_have_attribute("aria-current", "page")

    form = page.locator("#create-key-form")
    form.get_by_label("Name").fill("engine-ui")
    form.get_by_label("Scope").select_option("read")
    form.get_by_label("Expires after (days)").fill("30")
    form.get_by_role("button", name="Create key").click()
    box = page.locator("#new-key-box")
    expect(box).to_contain_text("will not be shown again")
    key = page.locator("#new-key-value").input_value()
    assert key.startswith("mmk_")
    box.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("#keys-list tr[data-key='engine-ui']")
    expect(row).to_contain_text("read")
    expect(row.locator("td.state")).to_have_text("live")
    ui.shot("07-keys")
    status, _, raw = server.get("/api/models/demo/model/SOLUSDT", token=key)
    assert status == 200 and json.loads(raw)["symbol"] == "SOLUSDT"

    # a taken name: the server's detail inline; the key never reappears once dismissed or reloaded
    form.get_by_label("Name").fill("engine-ui")
    form.get_by_role("button", name="Create key").click()
    expect(page.locator("#create-key-error")).to_contain_text("exists")
    box.get_by_role("button", name="I have copied it").click()
    expect(page.locator("#new-key-value")).to_have_count(0)
    page.reload()
    expect(row).to_be_visible()
    assert key not in page.content()

    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("Revoke engine-ui?")
    row.get_by_role("button", name="Cancel").click()
    assert server.get("/api/models", token=key)[0] == 200  # cancelling keeps it
    row.get_by_role("button", name="Revoke").click()
    row.get_by_role("button", name="Yes, revoke").click()
    expect(row.locator("td.state")).to_have_text("revoked")
    expect(page.locator("#keys-message")).to_contain_text("Revoked engine-ui")
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    assert server.get("/api/models/demo/model/SOLUSDT", token=key)[0] == 401
    page.locator("#mainnav").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()


def test_bogus_token_lands_on_login_with_a_message(ui, server, demo_models):
    page = ui.page
    ensure_demo(server, demo_models)
    api_token(server)  # initialized
    ui.open("#/models/demo/SOLUSDT")
    expect(page.locator("#login-form")).to_be_visible()
    page.evaluate("sessionStorage.setItem('model-manager.token', 'not-a-real-token')")
    page.reload()
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#access-flash")).to_contain_text("expired or is no longer valid")
    assert page.evaluate("sessionStorage.getItem('model-manager.token')") is None
    ui.shot("06-login-expired")

    # Logging in (keyboard only) returns to the deep link.
    page.get_by_label("Password").fill(State.password)
    page.get_by_label("Password").press("Enter")
    expect(page.get_by_role("heading", name="SOLUSDT", exact=True)).to_be_visible()


def test_token_revoked_while_browsing_goes_back_to_login(ui, server, demo_models):
    page = ui.page
    ui.allow(401)
    ensure_demo(server, demo_models)
    ui.sign_in("#/models/demo")
    token = page.evaluate("sessionStorage.getItem('model-manager.token')")
    assert server.post("/api/auth/logout", token=token)[0] == 204  # revoked elsewhere
    page.wait_for_timeout(100)
    try:  # the next model call gets a 401 ...
        page.locator("#refresh-button").click(timeout=5000)
    except PlaywrightTimeoutError:  # ... unless a call the page made on its own got it first (a loaded machine)
        pass
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#access-flash")).to_contain_text("expired or is no longer valid")


def test_wrong_password_then_logout(ui, server):
    page = ui.page
    ui.allow(401)
    api_token(server)
    ui.open("#/models")
    expect(page.locator("#login-form")).to_be_visible()
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-form .message-error")).to_have_text("Wrong password. Try again.")
    page.get_by_label("Password").fill(State.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#logout-button")).to_be_visible()
    token = page.evaluate("sessionStorage.getItem('model-manager.token')")

    page.locator("#logout-button").click()
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#access-flash")).to_have_text("You are logged out.")
    assert page.evaluate("sessionStorage.getItem('model-manager.token')") is None
    assert server.get("/api/models", token=token)[0] == 401  # revoked on the server too


def test_change_password(ui, server):
    page = ui.page
    ui.allow(401)
    ui.sign_in("#/models")
    card = page.locator("#access-card")
    card.locator("summary", has_text="Change password").click()  # opens the form (a <details>)
    card.get_by_label("Current password").fill("wrong current password")
    card.get_by_label("New password", exact=True).fill("second password")
    card.get_by_label("Repeat the new password").fill("second password")
    card.get_by_role("button", name="Change password").click()
    expect(card.locator(".message")).to_have_text("The current password is wrong.")
    expect(page.locator("#logout-button")).to_be_visible()  # still signed in

    card.get_by_label("Current password").fill(State.password)
    card.get_by_label("New password", exact=True).fill("second password")
    card.get_by_label("Repeat the new password").fill("second password")
    card.get_by_role("button", name="Change password").click()
    expect(card.locator(".message")).to_contain_text("Password changed")
    State.password = "second password"
    assert server.post("/api/auth/login", {"password": "second password"})[0] == 200
    # This tab's token was kept.
    token = page.evaluate("sessionStorage.getItem('model-manager.token')")
    assert server.get("/api/models", token=token)[0] == 200


def test_api_docs_render_offline_under_their_strict_policy(browser, server):
    """Swagger UI at /schema runs from this server's own assets under `script-src 'self'`: the API's
    operations show, and nothing is refused by the policy or fetched from another origin."""
    tab = Page(browser, server)
    foreign: list[str] = []
    tab.page.on("request", lambda request: request.url.startswith(server.url) or foreign.append(request.url))
    tab.page.goto(server.url + "/schema")
    expect(tab.page.locator(".swagger-ui .info .title")).to_contain_text("model-manager")
    expect(tab.page.locator(".opblock-summary-path").first).to_be_visible()
    assert tab.page.locator(".opblock-summary-path", has_text="/api/auth/login").count() >= 1
    assert foreign == [] and tab.unexpected_errors() == []
    tab.close()
