// The factor list of a model page (GET /api/models/NAME/factors): every factor of the model with its
// usage — in how many symbols it appears, and its mean |value| for a chosen metric — filterable and
// sortable by name, by symbol count or by that mean.
import { formatNumber, h, plural, replaceContent } from "../dom.js";

export function searchBox(label, placeholder, id) {
  const input = h("input", { type: "search", id, placeholder, autocomplete: "off", spellcheck: "false" });
  const wrapper = h("div", { class: "search" }, h("label", { for: id, class: "visually-hidden" }, label), input);
  return { input, wrapper };
}

export function factorUsage(data, remembered) {
  const factors = data.factors || [];
  const usage = new Map((data.usage || []).map((u) => [u.factor, u]));
  const metrics = (data.metrics || []).filter((m) => (data.usage || []).some((u) => u.mean_abs?.[m] !== undefined));
  remembered.factorSort ??= "name";
  remembered.factorMetric ??= metrics.includes("kendall_tau") ? "kendall_tau" : metrics[0] || "";

  const { input: filter, wrapper } = searchBox("Filter factors", "Filter factors", "factor-filter");
  filter.value = remembered.factorQuery;
  const sortSelect = h(
    "select",
    { id: "factor-sort" },
    [["name", "name"], ["symbols", "symbols using it"], ["mean", "mean |value|"]].map(([v, label]) => h("option", { value: v, selected: v === remembered.factorSort }, label)),
  );
  const metricSelect = h("select", { id: "factor-metric" }, metrics.map((m) => h("option", { value: m, selected: m === remembered.factorMetric }, m)));
  const count = h("p", { class: "muted count", "aria-live": "polite" });
  const list = h("ul", { class: "factor-list", id: "factor-union" });

  const meanOf = (f) => usage.get(f)?.mean_abs?.[remembered.factorMetric];
  const symbolsOf = (f) => usage.get(f)?.symbols ?? 0;
  function ordered(shown) {
    const out = [...shown];
    if (remembered.factorSort === "symbols") out.sort((a, b) => symbolsOf(b) - symbolsOf(a) || a.localeCompare(b));
    if (remembered.factorSort === "mean") out.sort((a, b) => (meanOf(b) ?? -1) - (meanOf(a) ?? -1) || a.localeCompare(b));
    return out;
  }

  function apply() {
    const q = filter.value.trim().toLowerCase();
    remembered.factorQuery = filter.value;
    const shown = ordered(q ? factors.filter((f) => f.toLowerCase().includes(q)) : factors);
    replaceContent(
      list,
      shown.map((f) => {
        const mean = meanOf(f);
        const shownMean = mean === undefined ? "—" : formatNumber(mean, 3);
        const stat = `${symbolsOf(f)}${metrics.length ? ` · ${shownMean}` : ""}`;
        const title = `${plural(symbolsOf(f), "symbol")} list ${f}${metrics.length ? `; mean |${remembered.factorMetric}| ${shownMean}` : ""}`;
        return h("li", { dataset: { factor: f }, title }, h("span", { class: "factor-name" }, f), h("span", { class: "factor-stat muted small" }, stat));
      }),
    );
    if (!shown.length) list.append(h("li", { class: "muted empty-item" }, factors.length ? "No factor matches the filter." : "No factors."));
    count.textContent = q ? `${shown.length} of ${plural(factors.length, "factor")}` : plural(factors.length, "factor");
  }
  filter.addEventListener("input", apply);
  sortSelect.addEventListener("change", () => {
    remembered.factorSort = sortSelect.value;
    apply();
  });
  metricSelect.addEventListener("change", () => {
    remembered.factorMetric = metricSelect.value;
    apply();
  });
  apply();
  return h(
    "div",
    null,
    h("p", { class: "muted small" }, `Every factor used by the ${plural(data.group_count ?? 0, "group")} of this model: how many symbols list it · its mean |value| for the metric (where it has one).`),
    h("div", { class: "toolbar" }, wrapper, count),
    metrics.length
      ? h("div", { class: "controls factor-controls" }, h("label", { for: "factor-sort" }, "Sort by"), sortSelect, h("label", { for: "factor-metric" }, "Metric"), metricSelect)
      : null,
    list,
  );
}
