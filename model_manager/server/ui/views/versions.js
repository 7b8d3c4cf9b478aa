// The Versions panel of a symbol page: every recorded version of the symbol's group (newest first)
// with its live/pinned badges and every period it was live, and Pin / Roll back / Unpin with a reason
// kept in the audit trail. Below it, the comparison of any two versions (diff.js).
import { endpoints } from "../api.js";
import { field, formatTimestamp, h, loadingEl, messageEl, plural, replaceContent, showMessage, statusBadge, timeEl } from "../dom.js";
import { links } from "../routes.js";
import { diffCard } from "./diff.js";

/**
 * The Versions panel and the comparison card for a symbol's group. Returns [panel, diffCard]; both
 * fill themselves once the versions are loaded.
 */
export function versionSections(name, detail) {
  const panel = h("section", { class: "card", id: "versions", "aria-labelledby": "versions-title" });
  const compare = diffCard(name, detail.symbol);
  const heading = h("h2", { id: "versions-title", tabindex: "-1" }, "Versions");
  const summary = h("p", { class: "muted small versions-summary", id: "versions-summary" });
  const reload = h("button", { type: "button", class: "button button-ghost button-small", id: "versions-reload" }, "Reload");
  const notices = h("div", { class: "notices" });
  const message = messageEl("info");
  message.id = "versions-message";
  const tableBox = h("div", { class: "table-wrap" }, loadingEl("Loading versions…"));
  const { field: reasonField, input: reason } = field(
    "Reason",
    { type: "text", id: "version-reason", name: "reason", maxlength: 1000, autocomplete: "off", placeholder: "e.g. v3 trades badly since 14:00" },
    "Kept in the audit trail with the pin, rollback or unpin.",
  );
  const rollback = h("button", { type: "button", class: "button", id: "rollback-button" }, "Roll back");
  const unpin = h("button", { type: "button", class: "button", id: "unpin-button", hidden: true }, "Unpin");
  const actions = h(
    "div",
    { class: "version-actions", role: "group", "aria-label": "Change the live version" },
    reasonField,
    h("div", { class: "button-row" }, rollback, unpin),
  );
  const help = h(
    "p",
    { class: "hint" },
    "Roll back pins the version that was live before the current one. A pinned version is served until it is unpinned; then the latest version is served again (or the one a hold keeps).",
  );
  panel.append(h("div", { class: "card-head" }, h("div", null, heading, summary), reload), notices, actions, help, message, tableBox);

  let state = null; // the last versions object

  function render(versions) {
    state = versions;
    const count = versions.versions.length;
    summary.textContent = `${plural(count, "version")} · live v${versions.live_version ?? "—"} · latest v${versions.latest_version}`;
    replaceContent(notices, pinNotice(versions), holdNotice(name, versions));
    unpin.hidden = versions.pinned_version === null || versions.pinned_version === undefined;
    if (!unpin.hidden) unpin.textContent = `Unpin v${versions.pinned_version}`;
    replaceContent(tableBox, versionsTable(versions, { onPin: pin, onCompare: (v) => compare.show(v) }));
    compare.setVersions(versions);
  }

  async function load({ quiet = false } = {}) {
    if (!quiet) replaceContent(tableBox, loadingEl("Loading versions…"));
    try {
      render(await endpoints.versions(name, detail.symbol));
    } catch (err) {
      if (err.sessionExpired || !panel.isConnected) return;
      const msg = messageEl("error");
      showMessage(msg, `Could not load the versions: ${err.message}`);
      replaceContent(tableBox, msg);
    }
  }

  /** Run one change of the live version; the answer is the new versions object. */
  async function act(button, busyText, call, success) {
    const idle = button.textContent;
    const hadFocus = document.activeElement === button;
    showMessage(message, "");
    button.disabled = true;
    button.textContent = busyText;
    try {
      const versions = await call(reason.value.trim());
      reason.value = "";
      render(versions);
      showMessage(message, success(versions), "success");
    } catch (err) {
      if (err.sessionExpired) return;
      showMessage(message, err.message, "error"); // the server's detail says what to do
    } finally {
      button.disabled = false;
      if (button.isConnected && !button.hidden) {
        if (button.textContent === busyText) button.textContent = idle;
        if (hadFocus) button.focus();
      } else if (hadFocus) {
        heading.focus(); // the pressed button is gone from the new table: keep the keyboard in the panel
      }
    }
  }

  function pin(version, button) {
    return act(button, "Pinning…", (why) => endpoints.pin(name, detail.symbol, version, why),
      (v) => `Pinned v${version}: engines are served v${v.live_version} until it is unpinned.`);
  }

  rollback.addEventListener("click", () =>
    act(rollback, "Rolling back…", (why) => endpoints.rollback(name, detail.symbol, why),
      (v) => `Rolled back: v${v.live_version} is live again (pinned until unpinned).`));
  unpin.addEventListener("click", () =>
    act(unpin, "Unpinning…", (why) => endpoints.unpin(name, detail.symbol, why),
      (v) => `Unpinned: v${v.live_version} is live${v.held ? " (the version the hold keeps)" : " (the latest)"}.`));
  reload.addEventListener("click", () => load());

  // A group that never had a servable payload has no versions: say so without asking.
  const servedVersion = detail.refresh ? detail.refresh.version : undefined;
  if (servedVersion === null) {
    replaceContent(
      tableBox,
      h("p", { class: "empty" }, "No versions yet: a version is recorded once this group's files are valid and servable."),
    );
    actions.hidden = true;
    help.hidden = true;
    reload.hidden = true;
    compare.setVersions(null);
  } else {
    load();
  }
  return [panel, compare.element];
}

function pinNotice(versions) {
  if (!versions.pin) return null;
  const { version, reason, pinned_at: pinnedAt } = versions.pin;
  return h(
    "p",
    { class: "notice notice-pinned", id: "pin-notice" },
    h("span", { class: "badge badge-pinned" }, "pinned"),
    h("span", null, `v${version} is served until it is unpinned`, pinnedAt ? [" (since ", timeEl(pinnedAt, { relative: false }), ")"] : null, reason ? [" — ", h("q", null, reason)] : null),
  );
}

function holdNotice(name, versions) {
  if (!versions.held) return null;
  const hold = versions.hold || {};
  return h(
    "p",
    { class: "notice notice-held", id: "hold-notice" },
    h("span", { class: "badge badge-held" }, "held"),
    h(
      "span",
      null,
      `${name} is held`,
      hold.held_at ? [" since ", timeEl(hold.held_at, { relative: false })] : null,
      hold.reason ? [" — ", h("q", null, hold.reason)] : null,
      ": new versions are recorded but not served. Release it on the ",
      h("a", { href: links.models() }, "models page"),
      ".",
    ),
  );
}

// ---- the history table ---------------------------------------------------------------------------

function versionsTable(versions, { onPin, onCompare }) {
  const all = versions.versions;
  const tbody = h("tbody");
  all.forEach((v, index) => {
    const older = all[index + 1];
    const pinButton = v.pruned || v.pinned
      ? null
      : h("button", { type: "button", class: "button button-small", "aria-label": `Pin v${v.version}`, dataset: { action: "pin" } }, "Pin");
    pinButton?.addEventListener("click", () => onPin(v.version, pinButton));
    const compareButton = older
      ? h("button", { type: "button", class: "button button-small button-ghost", "aria-label": `Compare v${v.version} with v${older.version}` }, "Diff")
      : null;
    compareButton?.addEventListener("click", () => onCompare({ from: older.version, to: v.version }));
    tbody.append(
      h(
        "tr",
        { class: v.pruned ? "version-pruned" : v.live ? "version-live" : undefined, dataset: { version: String(v.version) } },
        h("th", { scope: "row", class: "version-cell" }, h("span", { class: "version-number" }, `v${v.version}`), versionBadges(v, versions)),
        h("td", { class: "when" }, timeEl(v.created_at)),
        h("td", { class: "periods-cell" }, livePeriods(v)),
        h("td", { class: "num" }, v.dim ?? "—"),
        h("td", { class: "num" }, v.factor_count ?? "—"),
        h("td", null, v.model_source ?? "—"),
        h("td", null, statusBadge(v.status)),
        h("td", { class: "actions" }, h("div", { class: "button-row" }, pinButton, compareButton)),
      ),
    );
  });
  return h(
    "table",
    { class: "table versions-table", id: "versions-table" },
    h("caption", { class: "visually-hidden" }, "Versions, newest first"),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["Version", "Created", "Live from – until", "Dim", "Factors", "Source", "Status", "Actions"].map((label) =>
          h("th", { scope: "col", class: label === "Dim" || label === "Factors" ? "num" : undefined }, label),
        ),
      ),
    ),
    tbody,
  );
}

function versionBadges(v, versions) {
  const badges = [];
  if (v.live) badges.push(h("span", { class: "badge badge-live", title: "Served to trading engines now" }, "live"));
  if (v.pinned) badges.push(h("span", { class: "badge badge-pinned", title: "Served until unpinned" }, "pinned"));
  if (v.version === versions.latest_version && !v.live) badges.push(h("span", { class: "badge badge-unknown", title: "The newest version, not served" }, "latest"));
  if (v.pruned) badges.push(h("span", { class: "badge badge-pruned", title: "Its bytes were pruned (MODEL_MANAGER_KEEP_VERSIONS); the record stays" }, "pruned"));
  return badges.length ? h("span", { class: "version-badges" }, badges) : null;
}

/** Every period the version was served: "2024-05-01 13:05 – 13:40", the open one "– now". */
function livePeriods(v) {
  const periods = Array.isArray(v.live_periods) && v.live_periods.length
    ? v.live_periods
    : v.live_from
      ? [[v.live_from, v.live_until]]
      : [];
  if (!periods.length) return h("span", { class: "muted" }, "never live");
  return h(
    "ul",
    { class: "periods" },
    periods.map(([from, until]) =>
      h(
        "li",
        null,
        h("time", { datetime: from, title: from }, formatTimestamp(from)),
        " – ",
        until ? h("time", { datetime: until, title: until }, untilText(from, until)) : h("strong", { class: "now" }, "now"),
      ),
    ),
  );
}

/** The end of a period, without its date when it is the start's date. */
function untilText(from, until) {
  const start = formatTimestamp(from);
  const end = formatTimestamp(until);
  const [startDay] = start.split(" ");
  const [endDay, ...rest] = end.split(" ");
  return startDay === endDay && rest.length ? rest.join(" ") : end;
}
