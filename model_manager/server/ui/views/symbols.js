// Symbols view of one model: a searchable, sortable table of its symbols and the union of its factors.
import { endpoints } from "../api.js";
import { h, loadingEl, messageEl, plural, replaceContent, showMessage, sortableTable, statusBadge, timeEl } from "../dom.js";
import { links } from "../routes.js";
import { factorUsage, searchBox } from "./factors.js";
import { heatmapCard } from "./heatmap.js";

// Remember the search and sort per model while the page is open, so coming back from a symbol keeps them.
const memory = new Map();

export async function renderSymbols(main, route, ctx) {
  const name = route.name;
  const remembered = memory.get(name) || { query: "", sort: { key: "symbol", dir: "asc" }, factorQuery: "" };
  memory.set(name, remembered);

  const heading = h("h1", { tabindex: "-1" }, name);
  const meta = h("div", { class: "model-meta" }, loadingEl("Loading the model…"));
  const message = messageEl("info");
  message.id = "model-message";
  const refresh = h("button", { type: "button", class: "button", id: "refresh-button" }, "Refresh");
  const symbolsBox = h("div", { class: "table-wrap" }, loadingEl("Loading symbols…"));
  const factorsBox = h("div", null, loadingEl("Loading factors…"));
  const heatmapBox = h("div", null);

  replaceContent(
    main,
    h(
      "div",
      { class: "page" },
      h(
        "div",
        { class: "page-head" },
        h("div", null, h("p", { class: "eyebrow" }, "Model"), heading, meta),
        h("div", { class: "head-actions" }, h("a", { class: "button button-ghost", href: links.engines(name), id: "engines-link" }, "Engines"), refresh),
      ),
      message,
      h(
        "div",
        { class: "columns columns-wide" },
        h("section", { class: "card column-main", "aria-labelledby": "symbols-title" }, h("h2", { id: "symbols-title" }, "Symbols"), symbolsBox),
        h("aside", { class: "card column-side", "aria-labelledby": "factors-title" }, h("h2", { id: "factors-title" }, "Factors"), factorsBox),
      ),
      heatmapBox,
    ),
  );
  if (ctx.focus) heading.focus({ preventScroll: true });

  refresh.addEventListener("click", async () => {
    refresh.disabled = true;
    refresh.textContent = "Refreshing…";
    try {
      const model = await endpoints.refresh(name);
      showMessage(message, `Refreshed: ${plural(model.group_count ?? 0, "group")}, ${plural(model.symbol_count ?? 0, "symbol")}.`, "success");
      await loadAll();
    } catch (err) {
      if (err.sessionExpired) return;
      showMessage(message, `Refresh refused: ${err.message}${err.status === 400 ? " The previous state is still served." : ""}`, "error");
    } finally {
      refresh.disabled = false;
      refresh.textContent = "Refresh";
    }
  });

  async function loadAll() {
    const [models, symbols, factors] = await Promise.allSettled([endpoints.models(), endpoints.symbols(name), endpoints.factors(name)]);
    if (!heading.isConnected) return;
    if ([models, symbols, factors].some((r) => r.status === "rejected" && r.reason.sessionExpired)) return;

    if (symbols.status === "rejected" && symbols.reason.status === 404) {
      replaceContent(
        main,
        h("section", { class: "card narrow" }, h("h1", null, "Model not found"), h("p", null, `No model named “${name}” is registered on this server.`), h("a", { href: links.models() }, "Back to the models")),
      );
      return;
    }

    if (models.status === "fulfilled") {
      const model = models.value.models.find((m) => m.name === name);
      replaceContent(meta, model ? modelMeta(model) : "");
    } else {
      replaceContent(meta, "");
    }

    if (symbols.status === "fulfilled") {
      replaceContent(symbolsBox, symbolsTable(name, symbols.value.symbols, remembered));
    } else {
      const msg = messageEl("error");
      showMessage(msg, `Could not load the symbols: ${symbols.reason.message}`);
      replaceContent(symbolsBox, msg);
    }

    if (factors.status === "fulfilled") {
      replaceContent(factorsBox, factorUsage(factors.value, remembered));
      replaceContent(heatmapBox, heatmapCard(name, factors.value.metrics));
    } else {
      const msg = messageEl("error");
      showMessage(msg, `Could not load the factors: ${factors.reason.message}`);
      replaceContent(factorsBox, msg);
    }
  }
  await loadAll();
}

function modelMeta(model) {
  return h(
    "ul",
    { class: "meta-list" },
    h("li", null, statusBadge(model.status)),
    model.held
      ? h("li", { id: "model-held" }, h("span", { class: "badge badge-held", title: "New versions are recorded but not served until the model is released (models page)" }, "held"))
      : null,
    h("li", null, plural(model.group_count ?? 0, "group")),
    h("li", null, plural(model.symbol_count ?? 0, "symbol")),
    h("li", null, "refreshed ", timeEl(model.refreshed_at || model.registered_at)),
    h("li", { class: "path", title: model.path }, model.path),
    model.error ? h("li", { class: "error-text" }, model.error) : null,
  );
}

function issueSummary(issues) {
  return (issues || []).map((i) => `${i.severity}: ${i.message}`).join("\n");
}

function symbolsTable(name, symbols, remembered) {
  const columns = [
    { key: "symbol", label: "Symbol", render: (r) => h("a", { href: links.symbol(name, r.symbol), class: "strong-link" }, r.symbol) },
    { key: "return_name", label: "Return" },
    { key: "dim", label: "Dim", numeric: true },
    { key: "factor_count", label: "Factors", numeric: true },
    { key: "model_source", label: "Source", render: (r) => (r.model_source ? h("span", { class: "tag" }, r.model_source) : h("span", { class: "muted" }, "none")) },
    {
      key: "status",
      label: "Status",
      // Sort by severity first (errors on top when descending), then by how many issues.
      value: (r) => ({ ok: 0, warning: 1, error: 2 }[r.status] ?? 3) * 1000 + (r.issues?.length || 0),
      render: (r) => [
        h("span", { title: issueSummary(r.issues) || undefined }, statusBadge(r.status, r.issues?.length || 0)),
        r.stale ? h("span", { class: "tag tag-stale", title: "The files changed and cannot be used; the last good version is still served." }, "previous version served") : null,
      ],
    },
  ];
  const table = sortableTable({
    columns,
    rows: [],
    sort: remembered.sort,
    caption: "Symbols of this model",
    emptyText: symbols.length ? "No symbol matches the search." : "This model has no symbols.",
    onSort: (sort) => (remembered.sort = sort),
  });

  const { input: search, wrapper } = searchBox("Search symbols", "Symbol, return or group", "symbol-search");
  const count = h("p", { class: "muted count", "aria-live": "polite" });
  search.value = remembered.query;

  function apply() {
    const q = search.value.trim().toLowerCase();
    remembered.query = search.value;
    const rows = q ? symbols.filter((r) => [r.symbol, r.return_name, r.group_key].some((v) => String(v ?? "").toLowerCase().includes(q))) : symbols;
    table.setRows(rows);
    count.textContent = q ? `${rows.length} of ${plural(symbols.length, "symbol")}` : plural(symbols.length, "symbol");
  }
  search.addEventListener("input", apply);
  apply();
  return h("div", null, h("div", { class: "toolbar" }, wrapper, count), table.element);
}
