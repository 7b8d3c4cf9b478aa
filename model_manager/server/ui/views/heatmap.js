// The factor × symbol heatmap of a model page (GET /api/models/NAME/matrix): factors as rows (by mean
// |value|, largest first), symbols as columns, one colour per cell — blue positive, red negative, the
// stronger the larger |value| against the largest in view. Drawn on a <canvas> (500 symbols × 200
// factors is 100,000 cells: far too many DOM nodes), with a second canvas on top for the hovered cell.
// Hovering shows the cell in the readout line; clicking opens that symbol.
import { endpoints } from "../api.js";
import { formatNumber, h, loadingEl, messageEl, plural, replaceContent, showMessage } from "../dom.js";
import { links } from "../routes.js";

const LABEL_W = 190; // factor names
const HEAD_H = 80; // symbol names (rotated), when the columns are wide enough to hold them
const CELL_H = 13;
const MIN_CELL_W = 4;
const MAX_CELL_W = 44;
const TOPS = [["25", "top 25"], ["50", "top 50"], ["100", "top 100"], ["0", "all factors"]];
const prefs = { metric: "kendall_tau", top: "50" };

export function heatmapCard(name, metrics) {
  const card = h("section", { class: "card", id: "heatmap", "aria-labelledby": "heatmap-title" });
  const known = metrics?.length ? metrics : ["kendall_tau"];
  if (!known.includes(prefs.metric)) prefs.metric = known.includes("kendall_tau") ? "kendall_tau" : known[0];
  const metricSelect = h("select", { id: "heatmap-metric" }, known.map((m) => h("option", { value: m, selected: m === prefs.metric }, m)));
  const topSelect = h("select", { id: "heatmap-top" }, TOPS.map(([v, label]) => h("option", { value: v, selected: v === prefs.top }, label)));
  const note = h("p", { class: "muted small", id: "heatmap-note" });
  const readout = h("p", { class: "heatmap-readout mono", id: "heatmap-readout", "aria-live": "polite" }, "Hover a cell to see its value; click it to open the symbol.");
  const message = messageEl("error");
  const holder = h("div", { class: "heatmap-scroll" }, loadingEl("Loading the matrix…"));
  card.append(
    h(
      "div",
      { class: "card-head" },
      h("h2", { id: "heatmap-title" }, "Factors across symbols"),
      h("div", { class: "controls" }, h("label", { for: "heatmap-metric" }, "Metric"), metricSelect, h("label", { for: "heatmap-top" }, "Show"), topSelect),
    ),
    note,
    message,
    holder,
    readout,
  );

  let seq = 0;
  async function load() {
    const mine = ++seq;
    showMessage(message, "");
    try {
      const matrix = await endpoints.matrix(name, prefs.metric, Number(prefs.top));
      if (mine !== seq || !card.isConnected) return;
      const total = matrix.factors.length;
      note.textContent = total
        ? `${plural(total, "factor")} × ${plural(matrix.symbols.length, "symbol")} for ${matrix.metric}, factors by mean |value| (largest first). Empty cells: no value.`
        : `No group has a value for ${matrix.metric}.`;
      replaceContent(holder, total ? drawHeatmap(name, matrix, readout) : "");
    } catch (err) {
      if (err.sessionExpired || mine !== seq) return;
      replaceContent(holder, "");
      showMessage(message, `Could not load the matrix: ${err.message}`);
    }
  }
  metricSelect.addEventListener("change", () => {
    prefs.metric = metricSelect.value;
    load();
  });
  topSelect.addEventListener("change", () => {
    prefs.top = topSelect.value;
    load();
  });
  load();
  return card;
}

/** RGB of a cell: white at 0, full blue (positive) or red (negative) at |value| = scale. */
function cellColour(value, scale) {
  const t = Math.min(Math.sqrt(Math.abs(value) / scale), 1); // sqrt: small values stay visible
  const [r, g, b] = value >= 0 ? [37, 99, 235] : [220, 38, 38];
  const mix = (c) => Math.round(255 + (c - 255) * (0.12 + 0.88 * t));
  return `rgb(${mix(r)},${mix(g)},${mix(b)})`;
}

function layout(matrix, available) {
  const cols = matrix.symbols.length;
  const cellW = Math.max(MIN_CELL_W, Math.min(MAX_CELL_W, Math.floor((available - LABEL_W - 8) / Math.max(cols, 1))));
  const head = cellW >= 11 ? HEAD_H : 8;
  return { cellW, cellH: CELL_H, left: LABEL_W, top: head, width: LABEL_W + cols * cellW + 8, height: head + matrix.factors.length * CELL_H + 4 };
}

function sizedCanvas(className, geo) {
  const ratio = window.devicePixelRatio || 1;
  const canvas = h("canvas", { class: className, width: Math.round(geo.width * ratio), height: Math.round(geo.height * ratio) });
  // CSSOM sizing (not a style attribute), which the content security policy allows.
  canvas.style.width = `${geo.width}px`;
  canvas.style.height = `${geo.height}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  return { canvas, ctx };
}

function drawCells(ctx, matrix, geo) {
  const { values, factors, symbols } = matrix;
  let scale = 0;
  for (const row of values) for (const v of row) if (v !== null && Math.abs(v) > scale) scale = Math.abs(v);
  scale = scale || 1;
  ctx.font = "11px ui-monospace, monospace";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#f4f6f9";
  ctx.fillRect(geo.left, geo.top, symbols.length * geo.cellW, factors.length * geo.cellH);
  factors.forEach((factor, i) => {
    const y = geo.top + i * geo.cellH;
    ctx.fillStyle = "#172033";
    ctx.textAlign = "right";
    const label = factor.length > 26 ? `${factor.slice(0, 25)}…` : factor;
    ctx.fillText(label, geo.left - 6, y + geo.cellH / 2);
    const row = values[i];
    for (let j = 0; j < row.length; j++) {
      if (row[j] === null) continue;
      ctx.fillStyle = cellColour(row[j], scale);
      ctx.fillRect(geo.left + j * geo.cellW, y, geo.cellW - (geo.cellW > 5 ? 1 : 0), geo.cellH - 1);
    }
  });
  if (geo.top > 8) {
    ctx.fillStyle = "#5b6577";
    ctx.textAlign = "left";
    symbols.forEach((symbol, j) => {
      ctx.save();
      ctx.translate(geo.left + j * geo.cellW + geo.cellW / 2 + 3, geo.top - 4);
      ctx.rotate(-Math.PI / 2.6);
      ctx.fillText(symbol.length > 10 ? `${symbol.slice(0, 9)}…` : symbol, 0, 0);
      ctx.restore();
    });
  }
  return scale;
}

function drawHeatmap(name, matrix, readout) {
  const available = readout.parentElement?.clientWidth || 1100;
  const geo = layout(matrix, available - 40);
  const base = sizedCanvas("heatmap-canvas", geo);
  const overlay = sizedCanvas("heatmap-overlay", geo);
  drawCells(base.ctx, matrix, geo);
  const { canvas } = overlay;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `Heatmap of ${matrix.metric}: ${matrix.factors.length} factors by ${matrix.symbols.length} symbols`);
  Object.assign(canvas.dataset, { left: geo.left, top: geo.top, cellW: geo.cellW, cellH: geo.cellH, rows: matrix.factors.length, cols: matrix.symbols.length, metric: matrix.metric });

  const cellAt = (event) => {
    const box = canvas.getBoundingClientRect();
    const j = Math.floor((event.clientX - box.left - geo.left) / geo.cellW);
    const i = Math.floor((event.clientY - box.top - geo.top) / geo.cellH);
    return i >= 0 && j >= 0 && i < matrix.factors.length && j < matrix.symbols.length ? { i, j } : null;
  };
  let shown = null;
  canvas.addEventListener("mousemove", (event) => {
    const cell = cellAt(event);
    if (cell && shown && cell.i === shown.i && cell.j === shown.j) return;
    shown = cell;
    overlay.ctx.clearRect(0, 0, geo.width, geo.height);
    canvas.classList.toggle("heatmap-pointer", Boolean(cell));
    if (!cell) return;
    const value = matrix.values[cell.i][cell.j];
    overlay.ctx.strokeStyle = "#172033";
    overlay.ctx.lineWidth = 1.5;
    overlay.ctx.strokeRect(geo.left + cell.j * geo.cellW - 0.5, geo.top + cell.i * geo.cellH - 0.5, geo.cellW + 0.5, geo.cellH);
    readout.textContent = `${matrix.symbols[cell.j]} · ${matrix.factors[cell.i]} · ${matrix.metric} ${value === null ? "no value" : formatNumber(value, 6)}`;
    readout.dataset.value = value === null ? "" : String(value);
  });
  canvas.addEventListener("mouseleave", () => {
    shown = null;
    overlay.ctx.clearRect(0, 0, geo.width, geo.height);
  });
  canvas.addEventListener("click", (event) => {
    const cell = cellAt(event);
    if (cell) location.hash = links.symbol(name, matrix.symbols[cell.j]);
  });
  return h("div", { class: "heatmap-stack" }, base.canvas, canvas);
}
