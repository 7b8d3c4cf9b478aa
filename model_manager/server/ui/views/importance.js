// What the model leans on against what the IC says: a scatter of |kendall_tau| (ic.csv) against gain
// (the served model's importance), one point per factor, and the factors whose two ranks differ most.
// Factors no tree uses sit on the zero line (hollow); points far from the diagonal of ranks are marked.
import { formatNumber, h, plural, s } from "../dom.js";

export const IMPORTANCE_TYPES = ["gain", "total_gain", "cover", "weight"];

const W = 620;
const H = 300;
const PAD = { left: 64, right: 16, top: 14, bottom: 40 };

/** [{factor, tau, gain, tauRank, gainRank, far}] for the factors with a kendall_tau. */
export function disagreement(detail) {
  const gain = detail.importance?.gain || {};
  const tau = new Map();
  if (detail.ic?.columns?.includes("kendall_tau")) {
    const col = detail.ic.columns.indexOf("kendall_tau");
    for (const row of detail.ic.rows) if (!tau.has(String(row[0]))) tau.set(String(row[0]), row[col]);
  }
  const factors = [...new Set(detail.factors || [])].filter((f) => typeof tau.get(f) === "number");
  const rank = (key) => new Map([...factors].sort((a, b) => key(b) - key(a) || a.localeCompare(b)).map((f, i) => [f, i + 1]));
  const tauRank = rank((f) => Math.abs(tau.get(f)));
  const gainRank = rank((f) => gain[f] ?? 0);
  const far = Math.max(3, Math.floor(factors.length / 3));
  return factors.map((f) => {
    const gap = Math.abs(tauRank.get(f) - gainRank.get(f));
    return { factor: f, tau: tau.get(f), gain: gain[f] ?? null, tauRank: tauRank.get(f), gainRank: gainRank.get(f), gap, far: gap > far };
  });
}

function scatter(points) {
  const maxX = Math.max(...points.map((p) => Math.abs(p.tau)), 1e-9);
  const maxY = Math.max(...points.map((p) => p.gain ?? 0), 1e-9);
  const x = (v) => PAD.left + (v / maxX) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / maxY) * (H - PAD.top - PAD.bottom);
  const svg = s("svg", { class: "scatter", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `|kendall_tau| against gain for ${plural(points.length, "factor")}` });
  svg.append(
    s("line", { class: "zero-line", x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }),
    s("line", { class: "zero-line", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }),
    s("text", { class: "tick-label", x: (W + PAD.left) / 2, y: H - 8, "text-anchor": "middle" }, `|kendall_tau| (0 – ${formatNumber(maxX)})`),
    s("text", { class: "tick-label", x: 14, y: (H - PAD.bottom + PAD.top) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(H - PAD.bottom + PAD.top) / 2})` }, `gain (0 – ${formatNumber(maxY)})`),
  );
  for (const p of points) {
    const used = p.gain !== null;
    const point = s("circle", {
      class: `scatter-point${used ? "" : " scatter-unused"}${p.far ? " scatter-far" : ""}`,
      cx: x(Math.abs(p.tau)),
      cy: y(p.gain ?? 0),
      r: 4.5,
      dataset: { factor: p.factor, tau: String(p.tau), gain: used ? String(p.gain) : "" },
    });
    point.append(s("title", null, `${p.factor}: kendall_tau ${formatNumber(p.tau)} (rank ${p.tauRank}), gain ${used ? formatNumber(p.gain) : "— not used by any tree"} (rank ${p.gainRank})`));
    svg.append(point);
  }
  return svg;
}

function gapTable(points) {
  const worst = [...points].sort((a, b) => b.gap - a.gap || a.factor.localeCompare(b.factor)).slice(0, 8).filter((p) => p.gap > 0);
  if (!worst.length) return h("p", { class: "muted small" }, "The two rankings agree.");
  return h(
    "table",
    { class: "table table-compact", id: "disagreement-table" },
    h("caption", { class: "muted small" }, "Where the ranks differ most"),
    h("thead", null, h("tr", null, ["Factor", "|τ| rank", "gain rank", "kendall_tau", "gain"].map((c, i) => h("th", { scope: "col", class: i ? "num" : null }, c)))),
    h(
      "tbody",
      null,
      worst.map((p) =>
        h(
          "tr",
          { class: p.far ? "row-far" : null, dataset: { factor: p.factor } },
          h("td", { class: "mono" }, p.factor),
          h("td", { class: "num" }, String(p.tauRank)),
          h("td", { class: "num" }, String(p.gainRank)),
          h("td", { class: "num" }, formatNumber(p.tau)),
          h("td", { class: "num" }, p.gain === null ? "unused" : formatNumber(p.gain)),
        ),
      ),
    ),
  );
}

export function importanceCard(detail) {
  const card = h("section", { class: "card", id: "importance", "aria-labelledby": "importance-title" }, h("h2", { id: "importance-title" }, "What the model uses vs. what the IC says"));
  if (!detail.importance) {
    card.append(h("p", { class: "empty" }, "No importance: this group has errors, so no model of it is served."));
    return card;
  }
  const points = disagreement(detail);
  if (!points.length) {
    card.append(h("p", { class: "empty" }, "No kendall_tau in the IC file to compare the model's gain with."));
    return card;
  }
  const unused = points.filter((p) => p.gain === null).length;
  card.append(
    h("p", { class: "muted small" }, `${plural(points.length, "factor")}; ${unused ? `${unused} not used by any tree (hollow, on the zero line); ` : ""}marked points rank far apart by |kendall_tau| and by gain.`),
    h("div", { class: "importance-layout" }, h("div", { class: "chart-holder" }, scatter(points)), gapTable(points)),
  );
  return card;
}
