// Small DOM helpers. Every string from the API reaches the page through text nodes
// (textContent) or attribute values, never through innerHTML, so nothing it says can become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value" && "value" in el) el.value = value;
    else if (key === "checked" || key === "selected" || key === "disabled") el[key] = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Create an HTML element: h("a", {href: "#/", class: "x"}, "text", childNode, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  applyAttrs(el, attrs);
  appendChildren(el, children);
  return el;
}

/** Create an SVG element (same calling convention as h). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyAttrs(el, attrs);
  appendChildren(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replaceContent(el, ...children) {
  clear(el);
  appendChildren(el, children);
  return el;
}

// ---- formatting --------------------------------------------------------------------------

const ISO_DATE_TIME = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;
const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;

export function looksLikeTimestamp(value) {
  return typeof value === "string" && (ISO_DATE_TIME.test(value) || ISO_DATE.test(value));
}

const pad = (n) => String(n).padStart(2, "0");

/**
 * "2024-05-01 13:05" — seconds only when not zero, the date alone at midnight of a value without a
 * time zone. Local time by default; utc: true shows zone-aware values in UTC, marked " UTC"
 * (training windows are defined in UTC, whatever the reader's clock says).
 */
export function formatTimestamp(value, { utc = false } = {}) {
  if (value === null || value === undefined || value === "") return "—";
  if (ISO_DATE.test(value)) return value;
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const hasZone = /(Z|[+-]\d{2}:?\d{2})$/.test(value);
  const inUtc = utc && hasZone;
  const part = (local, universal) => (inUtc ? date[universal]() : date[local]());
  const day = `${part("getFullYear", "getUTCFullYear")}-${pad(part("getMonth", "getUTCMonth") + 1)}-${pad(part("getDate", "getUTCDate"))}`;
  const h = part("getHours", "getUTCHours"), m = part("getMinutes", "getUTCMinutes"), sec = part("getSeconds", "getUTCSeconds");
  if (!hasZone && h === 0 && m === 0 && sec === 0) return day;
  return `${day} ${pad(h)}:${pad(m)}${sec ? `:${pad(sec)}` : ""}${inUtc ? " UTC" : ""}`;
}

/** "5 min ago", "in 3 h" — a short relative form of an ISO timestamp. */
export function relativeTime(value, now = Date.now()) {
  const t = new Date(value).getTime();
  if (Number.isNaN(t)) return "";
  const diff = Math.round((t - now) / 1000);
  const abs = Math.abs(diff);
  let text;
  if (abs < 45) return "just now";
  if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) text = `${Math.round(abs / 3600)} h`;
  else text = `${Math.round(abs / 86400)} d`;
  return diff < 0 ? `${text} ago` : `in ${text}`;
}

/** A <time> element showing the local date and the relative age. */
export function timeEl(value, { relative = true } = {}) {
  if (!value) return h("span", { class: "muted" }, "—");
  const rel = relative ? relativeTime(value) : "";
  return h("time", { datetime: value, title: value }, formatTimestamp(value), rel ? h("span", { class: "muted" }, ` (${rel})`) : null);
}

export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e6)) return value.toExponential(3);
  return value.toFixed(digits);
}

export function plural(n, word, many = `${word}s`) {
  return `${n.toLocaleString("en-US")} ${n === 1 ? word : many}`;
}

// ---- small components ----------------------------------------------------------------------

/** Status pill: ok / warning / error, optionally with the issue count. */
export function statusBadge(status, issueCount) {
  const known = ["ok", "warning", "error"].includes(status) ? status : "unknown";
  const label = status || "unknown";
  const count = issueCount ? ` · ${plural(issueCount, "issue")}` : "";
  return h("span", { class: `badge badge-${known}` }, label + count);
}

/** A message line: kind = "error" | "info" | "success". Empty text gives an empty, hidden line. */
export function messageEl(kind = "error") {
  return h("p", { class: `message message-${kind}`, role: kind === "error" ? "alert" : "status", hidden: true });
}

export function showMessage(el, text, kind) {
  if (kind) el.className = `message message-${kind}`;
  el.textContent = text || "";
  el.hidden = !text;
}

export function loadingEl(text = "Loading…") {
  return h("p", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), text);
}

/** A labelled form field. Returns {field, input}. */
let fieldCounter = 0;
export function field(label, inputAttrs = {}, hint) {
  const id = inputAttrs.id || `f${++fieldCounter}`;
  const hintId = hint ? `${id}-hint` : undefined;
  const input = h("input", { ...inputAttrs, id, "aria-describedby": hintId });
  const wrapper = h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
  );
  return { field: wrapper, input };
}

/**
 * A table whose columns sort when their header button is pressed.
 * columns: [{key, label, numeric?, value?(row) -> sort value, render?(row) -> Node|string, className?}]
 * Numbers sort numerically, text case-insensitively, empty values last in both directions.
 */
export function sortableTable({ columns, rows, sort = null, caption, emptyText = "Nothing to show.", onSort, className = "" }) {
  let state = sort ? { ...sort } : null;
  let current = rows;
  const table = h("table", { class: `table sortable ${className}` });
  if (caption) table.append(h("caption", { class: "visually-hidden" }, caption));
  const thead = h("thead");
  const tbody = h("tbody");
  table.append(thead, tbody);

  const valueOf = (col, row) => (col.value ? col.value(row) : row[col.key]);

  function compare(col, a, b) {
    const va = valueOf(col, a);
    const vb = valueOf(col, b);
    const emptyA = va === null || va === undefined || va === "" || (typeof va === "number" && Number.isNaN(va));
    const emptyB = vb === null || vb === undefined || vb === "" || (typeof vb === "number" && Number.isNaN(vb));
    if (emptyA || emptyB) return emptyA === emptyB ? 0 : emptyA ? 1 : -1; // empty last, whatever the direction
    const dir = state.dir === "desc" ? -1 : 1;
    if (typeof va === "number" && typeof vb === "number") return (va - vb) * dir;
    return String(va).localeCompare(String(vb), "en", { numeric: true, sensitivity: "base" }) * dir;
  }

  function renderHead() {
    const tr = h("tr");
    for (const col of columns) {
      const active = state && state.key === col.key;
      const ariaSort = active ? (state.dir === "asc" ? "ascending" : "descending") : "none";
      const indicator = active ? (state.dir === "asc" ? "▲" : "▼") : "↕";
      const button = h(
        "button",
        { type: "button", class: "sort-button", dataset: { key: col.key }, onclick: () => toggle(col) },
        col.label,
        h("span", { class: `sort-indicator${active ? " active" : ""}`, "aria-hidden": "true" }, indicator),
      );
      tr.append(h("th", { scope: "col", "aria-sort": ariaSort, class: col.numeric ? "num" : "" }, button));
    }
    replaceContent(thead, tr);
  }

  function renderBody() {
    const sorted = [...current];
    if (state) {
      const col = columns.find((c) => c.key === state.key);
      if (col) sorted.sort((a, b) => compare(col, a, b));
    }
    clear(tbody);
    if (!sorted.length) {
      tbody.append(h("tr", { class: "empty-row" }, h("td", { colspan: columns.length }, emptyText)));
      return;
    }
    for (const row of sorted) {
      const tr = h("tr");
      for (const col of columns) {
        const content = col.render ? col.render(row) : formatCell(valueOf(col, row));
        tr.append(h("td", { class: [col.numeric ? "num" : "", col.className || ""].join(" ").trim() || undefined }, content));
      }
      tbody.append(tr);
    }
  }

  function toggle(col) {
    if (state && state.key === col.key) state = { key: col.key, dir: state.dir === "asc" ? "desc" : "asc" };
    else state = { key: col.key, dir: col.numeric ? "desc" : "asc" };
    renderHead();
    renderBody();
    if (onSort) onSort(state);
    thead.querySelector(`button[data-key="${CSS.escape(col.key)}"]`)?.focus();
  }

  renderHead();
  renderBody();
  return {
    element: table,
    setRows(next) {
      current = next;
      renderBody();
    },
  };
}

function formatCell(value) {
  if (typeof value === "number") return formatNumber(value);
  if (value === null || value === undefined || value === "") return "—";
  return String(value);
}

/** Fill `box` with `render(await fetch())`; when loading fails, an inline error naming `what` instead.
 * Nothing happens once the box has left the page (the user moved on) or the session expired. */
export async function loadInto(box, fetch, render, what) {
  try {
    const data = await fetch();
    if (!box.isConnected) return;
    replaceContent(box, render(data));
  } catch (err) {
    if (err.sessionExpired || !box.isConnected) return;
    const msg = messageEl("error");
    showMessage(msg, `Could not load the ${what}: ${err.message}`);
    replaceContent(box, msg);
  }
}
