// Engines view of one model: every client (an API key's name, or "session") × symbol, as current,
// behind (since when) or never fetched, from GET /api/models/NAME/fleet. It refreshes itself every
// few seconds while it is on screen (plain fetch polling: EventSource cannot send the bearer token).
import { endpoints } from "../api.js";
import { h, loadingEl, messageEl, plural, replaceContent, showMessage, sortableTable, timeEl } from "../dom.js";
import { links } from "../routes.js";

export const REFRESH_MS = 3000;
const memory = new Map(); // per model: the filter and sort, kept while the page is open

/** Every client × group of a fleet object: the client's sighting with state current / behind / never. */
export function fleetCells(fleet) {
  const cells = [];
  for (const client of fleet.clients) {
    const seen = new Map(client.groups.map((g) => [g.group_key, g]));
    for (const group of fleet.groups || []) {
      const got = seen.get(group.group_key);
      cells.push({
        client: client.client,
        address: client.address,
        symbol: group.symbol,
        group_key: group.group_key,
        live_version: group.live_version,
        state: !got ? "never" : got.behind ? "behind" : "current",
        version: got ? got.version : null,
        behind_since: got ? got.behind_since : null,
        last_seen: got ? [got.fetched_at, got.confirmed_at].filter(Boolean).sort().pop() || null : null,
      });
    }
  }
  return cells;
}

const STATE_ORDER = { behind: 0, never: 1, current: 2 };

function stateEl(cell) {
  if (cell.state === "current") return h("span", { class: "badge badge-ok fleet-state", dataset: { state: "current" } }, "current");
  if (cell.state === "never") return h("span", { class: "badge badge-unknown fleet-state", dataset: { state: "never" } }, "never fetched");
  return h(
    "span",
    null,
    h("span", { class: "badge badge-error fleet-state", dataset: { state: "behind" } }, "behind"),
    cell.behind_since ? [" since ", timeEl(cell.behind_since)] : null,
  );
}

function cellsTable(remembered) {
  const columns = [
    { key: "client", label: "Client", render: (c) => h("span", { class: "strong" }, c.client) },
    { key: "symbol", label: "Symbol" },
    { key: "state", label: "State", value: (c) => STATE_ORDER[c.state], render: stateEl },
    { key: "version", label: "Has", numeric: true },
    { key: "live_version", label: "Live", numeric: true },
    { key: "last_seen", label: "Last seen", render: (c) => timeEl(c.last_seen) },
    { key: "address", label: "Address", render: (c) => h("span", { class: "mono" }, c.address || "—") },
  ];
  return sortableTable({
    columns,
    rows: [],
    sort: remembered.sort,
    caption: "Clients and the version of each symbol they run",
    emptyText: "No client matches the filter.",
    onSort: (sort) => (remembered.sort = sort),
    className: "fleet-table",
  });
}

export async function renderEngines(main, route, ctx) {
  const name = route.name;
  const remembered = memory.get(name) || { filter: "all", sort: { key: "state", dir: "asc" } };
  memory.set(name, remembered);

  const heading = h("h1", { tabindex: "-1" }, "Engines");
  const summary = h("p", { class: "muted", id: "fleet-summary", "aria-live": "polite" });
  const updated = h("p", { class: "muted count", id: "fleet-updated" });
  const message = messageEl("error");
  const filter = h(
    "select",
    { id: "fleet-filter", "aria-label": "Show" },
    [["all", "Every client × symbol"], ["behind", "Behind only"], ["never", "Never fetched only"], ["current", "Current only"]].map(
      ([value, label]) => h("option", { value, selected: remembered.filter === value }, label),
    ),
  );
  const table = cellsTable(remembered);
  const box = h("div", { class: "table-wrap" }, loadingEl("Loading the fleet…"));

  replaceContent(
    main,
    h(
      "div",
      { class: "page" },
      h(
        "div",
        { class: "page-head" },
        h("div", null, h("p", { class: "eyebrow" }, h("a", { href: links.model(name) }, name)), heading, summary),
        h("a", { class: "button button-ghost", href: links.model(name) }, "Symbols"),
      ),
      message,
      h(
        "section",
        { class: "card", "aria-labelledby": "fleet-title" },
        h("h2", { id: "fleet-title" }, "Who runs which version"),
        h(
          "p",
          { class: "muted small" },
          "A client is an API key's name, or “session” for password sessions. Behind: the live version moved past the one it last received (200) or confirmed (304).",
        ),
        h("div", { class: "toolbar" }, filter, updated),
        box,
      ),
    ),
  );
  if (ctx.focus) heading.focus({ preventScroll: true });

  let cells = [];
  const apply = () => table.setRows(remembered.filter === "all" ? cells : cells.filter((c) => c.state === remembered.filter));
  filter.addEventListener("change", () => {
    remembered.filter = filter.value;
    apply();
  });

  async function load() {
    let fleet;
    try {
      fleet = await endpoints.fleet(name);
    } catch (err) {
      if (err.sessionExpired || !heading.isConnected) return false;
      if (err.status === 404) {
        replaceContent(main, h("section", { class: "card narrow" }, h("h1", null, "Model not found"), h("p", null, `No model named “${name}” is registered on this server.`), h("a", { href: links.models() }, "Back to the models")));
        return false;
      }
      showMessage(message, `Could not load the fleet: ${err.message}`);
      return true; // keep trying: the server may be restarting
    }
    if (!heading.isConnected) return false;
    showMessage(message, "");
    cells = fleetCells(fleet);
    const behind = fleet.clients.filter((c) => c.behind).length;
    summary.textContent = fleet.clients.length
      ? `${plural(fleet.clients.length, "client")} · ${plural((fleet.groups || []).length, "symbol")} · ${behind ? `${behind} behind` : "none behind"}`
      : `No client has fetched a model of ${name} yet.`;
    summary.className = behind ? "error-text" : "muted";
    updated.textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
    if (!table.element.isConnected) replaceContent(box, table.element);
    apply();
    return true;
  }

  // Poll while this page is on screen; a new render (another route) disconnects the heading.
  if (!(await load())) return;
  const timer = setInterval(async () => {
    if (!heading.isConnected || !ctx.isCurrent()) {
      clearInterval(timer);
      return;
    }
    if (!(await load())) clearInterval(timer);
  }, REFRESH_MS);
}
