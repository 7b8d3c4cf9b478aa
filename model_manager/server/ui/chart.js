// A horizontal bar chart drawn as SVG with DOM calls (no library, nothing inline for the CSP to refuse):
// one row per factor, bars to the right of the zero line for positive values and to the left for
// negative ones, each labelled with its value. Factors without a value show "n/a" and no bar.
import { formatNumber, s } from "./dom.js";

const ROW = 22;
const BAR = 14;
const TOP = 26;
const BOTTOM = 10;
const CHAR = 7.3; // width of one 12px monospace character (a little generous)
const VALUE_SPACE = 64;

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  const nice = unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 2.5 ? 2.5 : unit <= 5 ? 5 : 10;
  return nice * power;
}

/** Tick values across [lo, hi] and the number of decimals that shows each of them exactly. */
function ticksFor(lo, hi) {
  const step = niceStep(hi - lo, 5);
  let decimals = 0;
  while (decimals < 10 && Math.abs(Math.round(step * 10 ** decimals) - step * 10 ** decimals) > 1e-6) decimals++;
  const ticks = [];
  for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i++) ticks.push(i * step);
  return { ticks, decimals };
}

function truncate(text, maxChars) {
  return text.length <= maxChars ? text : `${text.slice(0, Math.max(maxChars - 1, 1))}…`;
}

/**
 * items: [{label, value (number|null), hint?}] in display order; metric: name for titles.
 * width: pixel width available. Returns an <svg> element.
 */
export function barChart({ items, metric, width }) {
  width = Math.max(Math.round(width || 720), 360);
  const height = TOP + items.length * ROW + BOTTOM;
  const values = items.map((i) => i.value).filter((v) => typeof v === "number" && Number.isFinite(v));
  const minV = values.length ? Math.min(...values) : 0;
  const maxV = values.length ? Math.max(...values) : 0;
  let lo = Math.min(0, minV);
  let hi = Math.max(0, maxV);
  if (lo === hi) hi = 1;

  const longest = items.reduce((m, i) => Math.max(m, i.label.length), 4);
  const labelWidth = Math.min(longest * CHAR + 20, width * 0.38);
  const maxChars = Math.floor((labelWidth - 12) / CHAR + 1e-6);
  const left = labelWidth + (minV < 0 ? VALUE_SPACE : 12);
  const right = width - (maxV > 0 || !values.length ? VALUE_SPACE : 12);
  const x = (v) => left + ((v - lo) / (hi - lo)) * (right - left);
  const x0 = x(0);

  const svg = s("svg", {
    class: "bar-chart",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Bar chart of ${metric} per factor (${items.length} factors)`,
  });

  const grid = s("g", { class: "grid" });
  const { ticks, decimals } = ticksFor(lo, hi);
  for (const t of ticks) {
    const tx = x(t);
    grid.append(
      s("line", { x1: tx, x2: tx, y1: TOP - 6, y2: height - BOTTOM, class: t === 0 ? "zero-line" : "grid-line" }),
      s("text", { x: tx, y: TOP - 10, class: "tick-label", "text-anchor": "middle" }, t === 0 ? "0" : t.toFixed(decimals)),
    );
  }
  svg.append(grid);

  items.forEach((item, index) => {
    const yTop = TOP + index * ROW;
    const yMid = yTop + ROW / 2;
    const hasValue = typeof item.value === "number" && Number.isFinite(item.value);
    const row = s("g", { class: "bar-row", dataset: { factor: item.label } });
    row.append(s("title", null, `${item.label}: ${hasValue ? formatNumber(item.value) : "no value"}${item.hint ? ` (${item.hint})` : ""}`));
    row.append(s("rect", { class: "row-hit", x: 0, y: yTop, width, height: ROW }));
    row.append(s("text", { class: "bar-label", x: labelWidth - 8, y: yMid, "text-anchor": "end", "dominant-baseline": "central" }, truncate(item.label, maxChars)));
    if (hasValue) {
      const xv = x(item.value);
      const negative = item.value < 0;
      row.append(
        s("rect", {
          class: `bar ${negative ? "bar-neg" : "bar-pos"}`,
          x: Math.min(x0, xv),
          y: yMid - BAR / 2,
          width: Math.max(Math.abs(xv - x0), 0.5),
          height: BAR,
          rx: 2,
          dataset: { value: String(item.value) },
        }),
        s(
          "text",
          { class: "bar-value", x: negative ? xv - 4 : xv + 4, y: yMid, "text-anchor": negative ? "end" : "start", "dominant-baseline": "central" },
          formatNumber(item.value),
        ),
      );
    } else {
      row.append(s("text", { class: "bar-value muted", x: x0 + 4, y: yMid, "dominant-baseline": "central" }, "n/a"));
    }
    svg.append(row);
  });
  return svg;
}
