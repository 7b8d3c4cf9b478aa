// Compare two versions of a symbol's group: factors added/removed/moved, dim, the IC change per
// factor (a bar chart of to − from), training-metadata keys changed, tree count and model parameters,
// and how closely both models predict on the same inputs.
import { endpoints } from "../api.js";
import { barChart } from "../chart.js";
import { formatNumber, formatTimestamp, h, loadingEl, looksLikeTimestamp, messageEl, plural, replaceContent, showMessage } from "../dom.js";

const DEFAULT_METRIC = "kendall_tau";
const prefs = { metric: null }; // the IC metric survives moving between symbols while the page is open

/** The comparison card: {element, setVersions(versionsObject|null), show({from, to})}. */
export function diffCard(name, symbol) {
  const fromSelect = h("select", { id: "diff-from", name: "from" });
  const toSelect = h("select", { id: "diff-to", name: "to" });
  const submit = h("button", { type: "submit", class: "button button-primary button-small", id: "diff-button" }, "Compare");
  const message = messageEl("error");
  message.id = "diff-message";
  const result = h("div", { class: "diff-result", id: "diff-result", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "controls diff-controls", id: "diff-form", novalidate: true },
    h("label", { for: "diff-from" }, "From"),
    fromSelect,
    h("label", { for: "diff-to" }, "To"),
    toSelect,
    submit,
  );
  const element = h(
    "section",
    { class: "card", id: "version-diff", "aria-labelledby": "diff-title" },
    h("div", { class: "card-head" }, h("h2", { id: "diff-title" }, "Compare versions"), form),
    message,
    result,
  );

  let versions = [];
  let loadedOnce = false;
  let request = 0;

  function option(v) {
    const flags = [v.live ? "live" : null, v.pinned ? "pinned" : null, v.pruned ? "pruned" : null].filter(Boolean);
    return h("option", { value: String(v.version) }, `v${v.version}${flags.length ? ` (${flags.join(", ")})` : ""} · ${formatTimestamp(v.created_at)}`);
  }

  function setVersions(state) {
    versions = state ? state.versions : [];
    form.hidden = versions.length < 2;
    if (versions.length < 2) {
      replaceContent(
        result,
        h("p", { class: "empty" }, versions.length ? "Only one version so far: a retrain that changes the model records the next one." : "No versions to compare yet."),
      );
      return;
    }
    const keep = [fromSelect.value, toSelect.value];
    replaceContent(fromSelect, versions.map(option));
    replaceContent(toSelect, versions.map(option));
    const known = (value) => versions.some((v) => String(v.version) === value);
    fromSelect.value = known(keep[0]) ? keep[0] : String(versions[1].version);
    toSelect.value = known(keep[1]) ? keep[1] : String(versions[0].version);
    if (!loadedOnce) {
      loadedOnce = true;
      load();
    }
  }

  function show({ from, to }) {
    fromSelect.value = String(from);
    toSelect.value = String(to);
    element.scrollIntoView({ block: "start" });
    load();
    fromSelect.focus({ preventScroll: true });
  }

  async function load() {
    showMessage(message, "");
    const from = Number(fromSelect.value);
    const to = Number(toSelect.value);
    if (from === to) {
      showMessage(message, "Pick two different versions to compare.");
      return;
    }
    const mine = ++request;
    replaceContent(result, loadingEl(`Comparing v${from} with v${to}… (both models predict on the same inputs)`));
    submit.disabled = true;
    try {
      const diff = await endpoints.diff(name, symbol, from, to);
      if (mine !== request || !element.isConnected) return;
      replaceContent(result, diffView(diff));
    } catch (err) {
      if (err.sessionExpired || mine !== request) return;
      replaceContent(result);
      showMessage(message, err.message);
    } finally {
      if (mine === request) submit.disabled = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  return { element, setVersions, show };
}

// ---- the diff --------------------------------------------------------------------------------------

function diffView(diff) {
  const from = diff.from.version;
  const to = diff.to.version;
  return h(
    "div",
    { class: "diff" },
    h("p", { class: "muted small" }, `From v${from} (${formatTimestamp(diff.from.created_at)}) to v${to} (${formatTimestamp(diff.to.created_at)}). Changes read “from → to”.`),
    statsRow(diff),
    h("div", { class: "columns columns-even" }, predictionsBlock(diff), modelChanges(diff.model)),
    h("div", { class: "columns columns-even" }, factorChanges(diff.factors), icDeltaChart(diff)),
    infoChanges(diff.info),
  );
}

function change(a, b, format = (v) => (v === null || v === undefined ? "—" : formatNumber(v))) {
  if (a === b) return h("span", null, format(a), h("span", { class: "muted" }, " (same)"));
  return h("span", { class: "changed" }, format(a), h("span", { class: "arrow" }, " → "), format(b));
}

function stat(label, value, id) {
  return h("div", { class: "stat", id }, h("dt", null, label), h("dd", null, value));
}

function statsRow(diff) {
  const f = diff.factors || { added: [], removed: [], moved: [] };
  const trees = diff.model?.num_trees || {};
  const p = diff.predictions;
  return h(
    "dl",
    { class: "stats" },
    stat("Dim", change(diff.dim?.from, diff.dim?.to), "diff-dim"),
    stat("Trees", change(trees.from, trees.to), "diff-trees"),
    stat(
      "Factors",
      f.added.length || f.removed.length || f.moved.length
        ? `+${f.added.length} added · −${f.removed.length} removed · ${f.moved.length} moved`
        : h("span", { class: "muted" }, "same factors, same dims"),
      "diff-factor-counts",
    ),
    stat("Prediction correlation", p ? formatNumber(p.correlation) : "not comparable", "diff-correlation"),
  );
}

function predictionsBlock(diff) {
  const p = diff.predictions;
  const section = h("section", { class: "diff-part", id: "diff-predictions", "aria-labelledby": "diff-predictions-title" }, h("h3", { id: "diff-predictions-title" }, "Prediction agreement"));
  if (!p) {
    section.append(
      h("p", { class: "not-comparable" }, h("strong", null, "Not comparable"), diff.predictions_note ? `: ${diff.predictions_note}.` : "."),
    );
    return section;
  }
  section.append(
    h("p", { class: "muted small" }, `Both models predicted the same ${plural(p.rows, "row")} of fixed pseudo-random inputs.`),
    h(
      "table",
      { class: "kv predictions-table" },
      h(
        "tbody",
        null,
        [
          ["rows", p.rows],
          ["mean abs diff", p.mean_abs_diff],
          ["max abs diff", p.max_abs_diff],
          ["correlation", p.correlation],
        ].map(([label, value]) =>
          h("tr", null, h("th", { scope: "row" }, label), h("td", { class: "num-value" }, value === null && label === "correlation" ? "— (a model predicts a constant)" : formatNumber(value, 6))),
        ),
      ),
    ),
  );
  return section;
}

function chipList(items, kind) {
  return items.length
    ? h("ul", { class: `chip-list chip-list-${kind}` }, items.map((item) => h("li", { class: "chip mono" }, item)))
    : h("p", { class: "muted small" }, "none");
}

function factorChanges(factors) {
  const f = factors || { added: [], removed: [], moved: [] };
  const section = h("section", { class: "diff-part", id: "diff-factors", "aria-labelledby": "diff-factors-title" }, h("h3", { id: "diff-factors-title" }, "Factor changes"));
  if (!f.added.length && !f.removed.length && !f.moved.length) {
    section.append(h("p", { class: "muted" }, "Same factors in the same dimensions."));
    return section;
  }
  section.append(
    h("h4", null, `Added (${f.added.length})`),
    h("div", { id: "diff-added" }, chipList(f.added, "added")),
    h("h4", null, `Removed (${f.removed.length})`),
    h("div", { id: "diff-removed" }, chipList(f.removed, "removed")),
    h("h4", null, `Moved (${f.moved.length})`),
    f.moved.length
      ? h(
          "table",
          { class: "table table-compact", id: "diff-moved" },
          h("thead", null, h("tr", null, h("th", { scope: "col" }, "Factor"), h("th", { scope: "col", class: "num" }, "Dim"))),
          h("tbody", null, f.moved.map((m) => h("tr", null, h("td", { class: "mono" }, m.factor), h("td", { class: "num" }, `${m.from_dim} → ${m.to_dim}`)))),
        )
      : h("p", { class: "muted small" }, "none"),
  );
  return section;
}

function icDeltaChart(diff) {
  const rows = Array.isArray(diff.ic) ? diff.ic : [];
  const section = h("section", { class: "diff-part", id: "diff-ic", "aria-labelledby": "diff-ic-title" });
  const title = h("h3", { id: "diff-ic-title" }, "IC change per factor");
  const metrics = [...new Set(rows.map((r) => r.metric))];
  if (!metrics.length) {
    section.append(title, h("p", { class: "muted" }, "Neither version has an IC table."));
    return section;
  }
  let metric = metrics.includes(prefs.metric) ? prefs.metric : metrics.includes(DEFAULT_METRIC) ? DEFAULT_METRIC : metrics[0];
  const select = h("select", { id: "diff-metric" }, metrics.map((m) => h("option", { value: m, selected: m === metric }, m)));
  const note = h("p", { class: "muted small" });
  const holder = h("div", { class: "chart-holder" });

  function draw() {
    const items = rows
      .filter((r) => r.metric === metric)
      .map((r) => ({ label: r.factor, value: r.delta, hint: `${formatNumber(r.from)} → ${formatNumber(r.to)}` }))
      .sort((a, b) => Math.abs(b.value ?? 0) - Math.abs(a.value ?? 0) || (a.value === null) - (b.value === null));
    const missing = items.filter((i) => i.value === null).length;
    note.textContent = `Δ ${metric} = v${diff.to.version} − v${diff.from.version}, largest change first${missing ? `; ${missing} without a value in one of them (added or removed factors)` : ""}.`;
    const width = holder.clientWidth || section.clientWidth || 520;
    replaceContent(holder, barChart({ items, metric: `Δ ${metric}`, width: width - 4 }));
  }

  select.addEventListener("change", () => {
    metric = select.value;
    prefs.metric = metric;
    draw();
  });
  section.append(h("div", { class: "card-head" }, title, h("div", { class: "controls" }, h("label", { for: "diff-metric" }, "Metric"), select)), note, holder);

  let lastWidth = 0;
  const observer = new ResizeObserver(() => {
    if (!holder.isConnected) {
      observer.disconnect();
      return;
    }
    if (Math.abs(holder.clientWidth - lastWidth) > 2) {
      lastWidth = holder.clientWidth;
      draw();
    }
  });
  observer.observe(holder);
  return section;
}

/** A value of info.pkl or a model parameter as short text (structures as compact JSON). */
function shortValue(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "—");
  if (typeof value === "number") return formatNumber(value, 6);
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "string") return looksLikeTimestamp(value) ? h("time", { datetime: value, title: value }, formatTimestamp(value, { utc: true })) : value;
  const text = JSON.stringify(value);
  return text.length > 160 ? h("span", { title: text }, `${text.slice(0, 159)}…`) : text;
}

function changesTable(id, changed, keyLabel) {
  const entries = Object.entries(changed || {});
  if (!entries.length) return null;
  return h(
    "table",
    { class: "table table-compact changes-table", id },
    h("thead", null, h("tr", null, h("th", { scope: "col" }, keyLabel), h("th", { scope: "col" }, "From"), h("th", { scope: "col" }, "To"))),
    h("tbody", null, entries.map(([key, c]) => h("tr", null, h("th", { scope: "row", class: "mono" }, key), h("td", null, shortValue(c.from)), h("td", null, shortValue(c.to))))),
  );
}

function infoChanges(info) {
  const changed = info?.changed || {};
  const added = info?.added || [];
  const removed = info?.removed || [];
  const section = h("section", { class: "diff-part", id: "diff-info", "aria-labelledby": "diff-info-title" }, h("h3", { id: "diff-info-title" }, "Training metadata (info keys)"));
  if (!Object.keys(changed).length && !added.length && !removed.length) {
    section.append(h("p", { class: "muted" }, "No info key changed."));
    return section;
  }
  const parts = [
    changesTable("diff-info-changed", changed, "Key"),
    ...(added.length ? [h("h4", null, `Keys added (${added.length})`), chipList(added, "added")] : []),
    ...(removed.length ? [h("h4", null, `Keys removed (${removed.length})`), chipList(removed, "removed")] : []),
  ];
  section.append(...parts.filter(Boolean));
  return section;
}

function modelChanges(model) {
  const trees = model?.num_trees || {};
  const changed = model?.params?.changed || {};
  const section = h(
    "section",
    { class: "diff-part", id: "diff-model", "aria-labelledby": "diff-model-title" },
    h("h3", { id: "diff-model-title" }, "Model"),
    h("p", null, "Trees: ", change(trees.from, trees.to)),
  );
  section.append(changesTable("diff-params", changed, "Parameter") || h("p", { class: "muted" }, "No model parameter changed."));
  return section;
}
