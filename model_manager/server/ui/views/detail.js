// Symbol detail: training metadata, issues, the versions and their comparison (versions.js, diff.js),
// factors in dimension order, the IC table and chart, and the payload download.
import { endpoints } from "../api.js";
import { barChart } from "../chart.js";
import {
  formatTimestamp, h, looksLikeTimestamp, messageEl, plural, replaceContent, showMessage, sortableTable, statusBadge, timeEl,
} from "../dom.js";
import { links } from "../routes.js";
import { versionSections } from "./versions.js";
import { IMPORTANCE_TYPES, importanceCard } from "./importance.js";

const DEFAULT_METRIC = "kendall_tau";
// Chart settings survive moving between symbols while the page is open.
const chartPrefs = { metric: null, order: "value" };

export async function renderDetail(main, route, ctx) {
  const { name, symbol, groupKey } = route;
  let detail;
  try {
    detail = await endpoints.symbol(name, symbol, groupKey);
  } catch (err) {
    if (err.sessionExpired || !ctx.isCurrent()) return;
    const title = err.status === 404 ? "Symbol not found" : "Could not load the symbol";
    replaceContent(
      main,
      h("section", { class: "card narrow" }, h("h1", null, title), h("p", { class: "error-text" }, err.message), h("a", { href: links.model(name) }, `Back to ${name}`)),
    );
    return;
  }
  if (!ctx.isCurrent()) return; // the user moved on while this loaded

  const heading = h("h1", { tabindex: "-1" }, detail.symbol);
  const page = h(
    "div",
    { class: "page" },
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        null,
        h("p", { class: "eyebrow" }, h("a", { href: links.model(name) }, name), " · symbol"),
        h("div", { class: "title-row" }, heading, statusBadge(detail.status, detail.issues?.length || 0)),
        h(
          "ul",
          { class: "meta-list" },
          h("li", null, "return ", h("strong", null, detail.return_name ?? "—")),
          h("li", null, "group ", h("code", null, detail.group_key)),
          h("li", null, "dim ", h("strong", null, detail.dim ?? "—")),
          h("li", null, plural(detail.factors?.length || 0, "factor")),
          detail.updated_at ? h("li", null, "files from ", timeEl(detail.updated_at)) : null,
        ),
      ),
      downloadBox(name, detail),
    ),
    detail.stale ? staleNotice(detail) : null,
    issuesCard(detail),
    versionSections(name, detail),
    chartCard(detail),
    importanceCard(detail),
    h("div", { class: "columns columns-even" }, metadataCard(detail), factorsCard(detail)),
    icTableCard(detail),
    filesCard(detail),
  );
  replaceContent(main, page);
  if (ctx.focus) heading.focus({ preventScroll: true });
}

// ---- download -----------------------------------------------------------------------------------

function downloadBox(name, detail) {
  const message = messageEl("error");
  message.id = "download-message";
  const button = h("button", { type: "button", class: "button button-primary", id: "download-payload" }, "Download payload JSON");
  button.addEventListener("click", async () => {
    showMessage(message, "");
    button.disabled = true;
    button.textContent = "Preparing…";
    try {
      const response = await endpoints.payload(name, detail.symbol);
      const blob = await response.blob();
      const url = URL.createObjectURL(new Blob([blob], { type: "application/json" }));
      const link = h("a", { href: url, download: `${name}_${detail.group_key}_payload.json`, class: "visually-hidden" }, "download");
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      showMessage(message, `Downloaded ${(blob.size / 1024).toFixed(1)} KiB.`, "success");
    } catch (err) {
      if (err.sessionExpired) return;
      // A 422 detail already says why the payload is refused (the group's errors).
      showMessage(message, err.status === 422 ? err.message : `Download failed: ${err.message}`, "error");
    } finally {
      button.disabled = false;
      button.textContent = "Download payload JSON";
    }
  });
  return h("div", { class: "download-box" }, button, h("p", { class: "hint" }, "What a trading engine gets from ", h("code", null, `GET /api/models/${name}/model/${detail.symbol}`)), message);
}

function staleNotice(detail) {
  const since = detail.served_updated_at ? ` (version of ${formatTimestamp(detail.served_updated_at)})` : "";
  return h(
    "p",
    { class: "message message-info", id: "stale-notice" },
    `The files of this group changed and the new version cannot be used (see the issues). Trading engines still receive the last good version${since}.`,
  );
}

// ---- issues -------------------------------------------------------------------------------------

function issuesCard(detail) {
  const issues = detail.issues || [];
  if (!issues.length) {
    return h("section", { class: "card card-slim", id: "issues" }, h("p", { class: "ok-text" }, "✓ No issues: this group is valid and servable."));
  }
  const order = { error: 0, warning: 1 };
  const sorted = [...issues].sort((a, b) => (order[a.severity] ?? 2) - (order[b.severity] ?? 2));
  return h(
    "section",
    { class: "card", id: "issues", "aria-labelledby": "issues-title" },
    h("h2", { id: "issues-title" }, `Issues (${issues.length})`),
    h(
      "ul",
      { class: "issue-list" },
      sorted.map((issue) =>
        h(
          "li",
          { class: `issue issue-${issue.severity}` },
          statusBadge(issue.severity),
          h("div", null, h("p", { class: "issue-message" }, issue.message), h("p", { class: "muted small" }, h("code", null, issue.code), issue.file ? [" · ", h("code", null, issue.file)] : null)),
        ),
      ),
    ),
  );
}

// ---- IC chart -----------------------------------------------------------------------------------

function icRecords(detail) {
  if (!detail.ic || !Array.isArray(detail.ic.columns)) return { columns: [], metrics: [], records: [] };
  const columns = detail.ic.columns;
  const records = detail.ic.rows.map((row) => Object.fromEntries(columns.map((c, i) => [c, row[i]])));
  const factorCol = columns.includes("factor") ? "factor" : columns[0];
  const metrics = columns.filter((c) => c !== factorCol && records.every((r) => r[c] === null || typeof r[c] === "number"));
  return { columns, metrics, records, factorCol };
}

function chartCard(detail) {
  const { metrics: icMetrics, records, factorCol } = icRecords(detail);
  // The model's importance types sit beside the IC columns (factors no tree uses have no value).
  const importance = detail.importance || {};
  const importanceMetrics = IMPORTANCE_TYPES.filter((t) => importance[t] && !icMetrics.includes(t));
  const metrics = [...icMetrics, ...importanceMetrics];
  const card = h("section", { class: "card", id: "ic-chart", "aria-labelledby": "chart-title" });
  if (!metrics.length) {
    card.append(
      h("h2", { id: "chart-title" }, "IC per factor"),
      h("p", { class: "empty" }, detail.ic ? "The IC file has no numeric metric column to chart." : `No IC file for this group (${detail.group_key}_ic.csv): nothing to chart.`),
    );
    return card;
  }
  const byFactor = new Map(records.map((r) => [String(r[factorCol]), r]));
  const dimOf = new Map((detail.factors || []).map((f, i) => [f, i]));
  let metric = metrics.includes(chartPrefs.metric) ? chartPrefs.metric : metrics.includes(DEFAULT_METRIC) ? DEFAULT_METRIC : metrics[0];

  const option = (m) => h("option", { value: m, selected: m === metric }, m);
  const metricSelect = h(
    "select",
    { id: "chart-metric" },
    importanceMetrics.length
      ? [h("optgroup", { label: "IC (ic.csv)" }, icMetrics.map(option)), h("optgroup", { label: "Importance (model)" }, importanceMetrics.map(option))]
      : metrics.map(option),
  );
  const valueOf = (f) => (importanceMetrics.includes(metric) ? importance[metric][f] ?? null : byFactor.get(f)?.[metric] ?? null);
  const orderSelect = h(
    "select",
    { id: "chart-order" },
    [["value", "value, high to low"], ["abs", "absolute value"], ["dim", "dimension"]].map(([v, label]) => h("option", { value: v, selected: v === chartPrefs.order }, label)),
  );
  const title = h("h2", { id: "chart-title" });
  const note = h("p", { class: "muted small" });
  const holder = h("div", { class: "chart-holder" });

  // One row per factor of the model, in dimension order; factors missing from ic.csv show "n/a".
  const factorNames = detail.factors?.length ? detail.factors : records.map((r) => String(r[factorCol]));

  function draw() {
    if (!holder.isConnected && holder.childNodes.length) return;
    const items = factorNames.map((f) => ({ label: f, value: valueOf(f), hint: dimOf.has(f) ? `dim ${dimOf.get(f)}` : undefined }));
    const order = chartPrefs.order;
    const val = (i) => (typeof i.value === "number" ? i.value : null);
    if (order === "value") items.sort((a, b) => (val(b) ?? -Infinity) - (val(a) ?? -Infinity));
    if (order === "abs") items.sort((a, b) => Math.abs(val(b) ?? 0) - Math.abs(val(a) ?? 0) || (val(a) === null) - (val(b) === null));
    title.textContent = `${metric} per factor`;
    const missing = items.filter((i) => val(i) === null).length;
    const unused = importanceMetrics.includes(metric) ? " (not used by any tree)" : "";
    note.textContent = `${plural(items.length, "factor")}${missing ? `, ${missing} without a value${unused}` : ""}. Bars right of the zero line are positive, left are negative.`;
    const width = holder.clientWidth || holder.parentElement?.clientWidth || 900;
    replaceContent(holder, barChart({ items, metric, width: width - 4 }));
  }

  metricSelect.addEventListener("change", () => {
    metric = metricSelect.value;
    chartPrefs.metric = metric;
    draw();
  });
  orderSelect.addEventListener("change", () => {
    chartPrefs.order = orderSelect.value;
    draw();
  });

  card.append(
    h(
      "div",
      { class: "card-head" },
      title,
      h(
        "div",
        { class: "controls" },
        h("label", { for: "chart-metric" }, "Metric"),
        metricSelect,
        h("label", { for: "chart-order" }, "Order by"),
        orderSelect,
      ),
    ),
    note,
    holder,
  );

  // Draw once the card is in the page (its width is known then) and again when the width changes.
  let lastWidth = 0;
  const observer = new ResizeObserver(() => {
    if (!holder.isConnected) {
      observer.disconnect();
      return;
    }
    const w = holder.clientWidth;
    if (Math.abs(w - lastWidth) > 2) {
      lastWidth = w;
      draw();
    }
  });
  observer.observe(holder);
  return card;
}

// ---- metadata -----------------------------------------------------------------------------------

function valueNode(value, depth = 0) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "—");
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") {
    // Integers with thousands separators; other numbers with up to 6 significant digits.
    const text = Number.isInteger(value) ? value.toLocaleString("en-US") : String(Number(value.toPrecision(6)));
    return h("span", { class: "num-value" }, text);
  }
  if (typeof value === "string") {
    if (looksLikeTimestamp(value)) return h("time", { datetime: value, title: value }, formatTimestamp(value, { utc: true }));
    return value;
  }
  if (Array.isArray(value)) {
    if (!value.length) return h("span", { class: "muted" }, "none");
    const scalars = value.every((v) => v === null || ["string", "number", "boolean"].includes(typeof v));
    if (scalars && value.length <= 8 && value.join(", ").length <= 80) {
      return h("span", { class: "inline-list" }, value.map((v) => h("span", { class: "chip" }, valueNode(v, depth + 1))));
    }
    const list = h("ol", { class: "value-list", start: 0 }, value.map((v) => h("li", null, valueNode(v, depth + 1))));
    return h("details", null, h("summary", null, plural(value.length, "item")), list);
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return h("span", { class: "muted" }, "empty");
    const table = kvTable(entries, depth + 1);
    return depth >= 1 && entries.length > 12 ? h("details", null, h("summary", null, plural(entries.length, "entry", "entries")), table) : table;
  }
  return String(value);
}

function kvTable(entries, depth = 0) {
  return h(
    "table",
    { class: `kv${depth ? " kv-nested" : ""}` },
    h("tbody", null, entries.map(([key, value]) => h("tr", null, h("th", { scope: "row" }, key), h("td", null, valueNode(value, depth))))),
  );
}

function metadataCard(detail) {
  const card = h("section", { class: "card", id: "metadata", "aria-labelledby": "metadata-title" }, h("h2", { id: "metadata-title" }, "Training metadata"));
  const info = detail.info;
  if (!info || typeof info !== "object" || !Object.keys(info).length) {
    card.append(h("p", { class: "empty" }, `No training metadata (${detail.group_key}_info.pkl is absent or empty).`));
    return card;
  }
  // Scalars first (time window, samples, ...), nested structures such as params after them.
  const entries = Object.entries(info);
  const simple = entries.filter(([, v]) => v === null || typeof v !== "object");
  const nested = entries.filter(([, v]) => v !== null && typeof v === "object");
  card.append(kvTable(simple));
  for (const [key, value] of nested) {
    card.append(h("h3", null, key), valueNode(value, 0));
  }
  return card;
}

// ---- factors ------------------------------------------------------------------------------------

function factorsCard(detail) {
  const factors = detail.factors || [];
  return h(
    "section",
    { class: "card", id: "factors", "aria-labelledby": "dim-factors-title" },
    h("h2", { id: "dim-factors-title" }, `Factors in dimension order (${factors.length})`),
    factors.length
      ? h(
          "div",
          { class: "scroll-box" },
          h(
            "table",
            { class: "table table-compact", id: "factor-table" },
            h("thead", null, h("tr", null, h("th", { scope: "col", class: "num" }, "Dim"), h("th", { scope: "col" }, "Factor"))),
            h("tbody", null, factors.map((f, i) => h("tr", null, h("td", { class: "num" }, String(i)), h("td", { class: "mono" }, f)))),
          ),
        )
      : h("p", { class: "empty" }, "No factors listed."),
  );
}

// ---- IC table -----------------------------------------------------------------------------------

function icTableCard(detail) {
  const card = h("section", { class: "card", id: "ic-table", "aria-labelledby": "ic-title" }, h("h2", { id: "ic-title" }, "IC table"));
  const { columns, metrics, records, factorCol } = icRecords(detail);
  if (!columns.length) {
    card.append(h("p", { class: "empty" }, `No IC file for this group (${detail.group_key}_ic.csv).`));
    return card;
  }
  const dimOf = new Map((detail.factors || []).map((f, i) => [f, i]));
  const rows = records.map((r) => ({ ...r, __dim: dimOf.has(String(r[factorCol])) ? dimOf.get(String(r[factorCol])) : null }));
  const tableColumns = [
    { key: "__dim", label: "Dim", numeric: true },
    { key: factorCol, label: factorCol, className: "mono" },
    ...columns.filter((c) => c !== factorCol).map((c) => ({ key: c, label: c, numeric: metrics.includes(c) })),
  ];
  const table = sortableTable({ columns: tableColumns, rows, sort: { key: "__dim", dir: "asc" }, caption: "IC per factor", emptyText: "The IC file has no rows." });
  card.append(h("p", { class: "muted small" }, "Press a column header to sort by it; press again to reverse."), h("div", { class: "table-wrap" }, table.element));
  return card;
}

// ---- files --------------------------------------------------------------------------------------

function filesCard(detail) {
  const files = Object.entries(detail.files || {});
  return h(
    "section",
    { class: "card card-slim", id: "files", "aria-labelledby": "files-title" },
    h("h2", { id: "files-title" }, "Files"),
    files.length
      ? h("ul", { class: "meta-list" }, files.map(([kind, filename]) => h("li", null, h("span", { class: "muted" }, `${kind}: `), h("code", null, filename))))
      : h("p", { class: "empty" }, "No files."),
  );
}
