// Keys view: the API keys trading engines use (scope, created, expires, last used, revoked), a form
// that creates one and shows it once with a copy button, and revoke buttons that ask first.
import { endpoints } from "../api.js";
import { field, formatTimestamp, h, loadingEl, loadInto, messageEl, replaceContent, showMessage, timeEl } from "../dom.js";

export async function renderKeys(main, ctx) {
  const listBox = h("div", { class: "table-wrap", id: "keys-list" }, loadingEl("Loading keys…"));
  const listMessage = messageEl("info");
  listMessage.id = "keys-message";
  const newKeyBox = h("div", { id: "new-key-box" });
  const heading = h("h1", { tabindex: "-1" }, "API keys");

  const page = h(
    "div",
    { class: "page" },
    h(
      "div",
      { class: "page-head" },
      h(
        "div",
        null,
        heading,
        h("p", { class: "muted" }, "Credentials for trading engines and scripts, sent as ", h("code", null, "Authorization: Bearer <key>"), ". A read key may only GET ", h("code", null, "/api/models/…"), "; an admin key may do everything."),
      ),
    ),
    newKeyBox,
    h(
      "div",
      { class: "columns" },
      h("div", { class: "column-main" }, h("section", { class: "card", "aria-labelledby": "keys-title" }, h("h2", { id: "keys-title" }, "Keys"), listMessage, listBox)),
      h("aside", { class: "column-side" }, createCard({ reload: () => load(), newKeyBox })),
    ),
  );
  replaceContent(main, page);
  if (ctx.focus) heading.focus({ preventScroll: true });

  async function load() {
    await loadInto(listBox, endpoints.keys, ({ keys }) => (keys.length ? keysTable(keys, { load, listMessage }) : emptyState()), "keys");
  }
  await load();
}

function emptyState() {
  return h(
    "div",
    { class: "empty" },
    h("p", null, h("strong", null, "No API keys yet.")),
    h("p", { class: "muted" }, "Create a read key for each trading engine, so none of them needs the password and each can be revoked alone."),
  );
}

function keysTable(keys, { load, listMessage }) {
  const tbody = h("tbody");
  for (const key of keys) tbody.append(keyRow(key, { load, listMessage }));
  return h(
    "table",
    { class: "table keys-table" },
    h("caption", { class: "visually-hidden" }, "API keys"),
    h("thead", null, h("tr", null, ["Name", "Scope", "Created", "Expires", "Last used", "State", "Actions"].map((label) => h("th", { scope: "col" }, label)))),
    tbody,
  );
}

function stateBadge(key) {
  if (key.revoked) return h("span", { class: "badge badge-error", title: key.revoked_at || undefined }, "revoked");
  if (key.expired) return h("span", { class: "badge badge-warning" }, "expired");
  return h("span", { class: "badge badge-ok" }, "live");
}

function keyRow(key, { load, listMessage }) {
  const actions = h("td", { class: "actions" });
  const tr = h(
    "tr",
    { dataset: { key: key.name } },
    h("td", null, h("strong", null, key.name)),
    h("td", null, h("span", { class: `badge ${key.scope === "admin" ? "badge-warning" : "badge-unknown"}` }, key.scope)),
    h("td", { class: "when" }, timeEl(key.created_at)),
    h("td", { class: "when" }, key.expires_at ? timeEl(key.expires_at) : h("span", { class: "muted" }, "never")),
    h("td", { class: "when" }, key.last_used_at ? timeEl(key.last_used_at) : h("span", { class: "muted" }, "never")),
    h("td", { class: "state" }, stateBadge(key)),
    actions,
  );

  function showActions() {
    if (key.revoked) {
      replaceContent(actions, h("span", { class: "muted" }, "—"));
      return;
    }
    const revoke = h("button", { type: "button", class: "button button-small button-danger-ghost", onclick: askRevoke }, "Revoke");
    replaceContent(actions, revoke);
  }

  function askRevoke() {
    const yes = h("button", { type: "button", class: "button button-small button-danger", onclick: confirmRevoke }, "Yes, revoke");
    const no = h("button", { type: "button", class: "button button-small", onclick: () => { showActions(); actions.querySelector("button")?.focus(); } }, "Cancel");
    replaceContent(
      actions,
      h("div", { class: "confirm", role: "group", "aria-label": `Confirm revoking ${key.name}` },
        h("span", null, `Revoke ${key.name}? Clients using it are refused at once.`),
        h("div", { class: "button-row" }, yes, no)),
    );
    actions.addEventListener("keydown", function onKey(event) {
      if (event.key === "Escape") {
        actions.removeEventListener("keydown", onKey);
        no.click();
      }
    });
    no.focus();

    async function confirmRevoke() {
      yes.disabled = true;
      try {
        await endpoints.revokeKey(key.name);
        showMessage(listMessage, `Revoked ${key.name}: it is refused from now on.`, "success");
        await load();
      } catch (err) {
        if (err.sessionExpired) return;
        showMessage(listMessage, `Could not revoke ${key.name}: ${err.message}`, "error");
        showActions();
      }
    }
  }

  showActions();
  return tr;
}

function createCard({ reload, newKeyBox }) {
  const { field: nameField, input: name } = field(
    "Name",
    { type: "text", name: "key-name", autocomplete: "off", spellcheck: "false", required: true, placeholder: "e.g. engine-tokyo-1" },
    "Say which engine or script holds it.",
  );
  const scope = h(
    "select",
    { id: "key-scope", name: "scope" },
    h("option", { value: "read", selected: true }, "read — GET /api/models/… only"),
    h("option", { value: "admin" }, "admin — everything"),
  );
  const scopeField = h("div", { class: "field" }, h("label", { for: "key-scope" }, "Scope"), scope);
  const { field: daysField, input: days } = field(
    "Expires after (days)",
    { type: "number", name: "expires-in-days", min: "1", max: "3650", step: "1", inputmode: "numeric", placeholder: "never" },
    "Leave empty for a key that does not expire.",
  );
  const error = messageEl("error");
  error.id = "create-key-error";
  const submit = h("button", { type: "submit", class: "button button-primary" }, "Create key");
  const form = h("form", { class: "form", id: "create-key-form", novalidate: true }, nameField, scopeField, daysField, submit, error);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showMessage(error, "");
    const keyName = name.value.trim();
    if (!keyName) return fail("Enter a name for the key.", name);
    let expires = null;
    if (days.value.trim()) {
      expires = Number(days.value);
      if (!Number.isInteger(expires) || expires < 1 || expires > 3650) return fail("Enter a whole number of days from 1 to 3650, or leave it empty.", days);
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const created = await endpoints.createKey(keyName, scope.value, expires);
      form.reset();
      showNewKey(newKeyBox, created);
      await reload();
    } catch (err) {
      if (!err.sessionExpired) fail(err.message, name);
    } finally {
      submit.disabled = false;
      submit.textContent = "Create key";
    }
  });

  function fail(text, input) {
    showMessage(error, text);
    input.focus();
  }

  return h("section", { class: "card", "aria-labelledby": "create-key-title" }, h("h2", { id: "create-key-title" }, "Create a key"), form);
}

/** The new key, this once: a read-only field, a copy button, and a warning that it will not be shown again. */
function showNewKey(box, created) {
  const value = h("input", { type: "text", id: "new-key-value", readonly: true, value: created.key, spellcheck: "false", "aria-label": `API key ${created.name}` });
  const status = h("span", { class: "hint", role: "status", id: "copy-status" });
  const copy = h("button", { type: "button", class: "button button-primary", id: "copy-key" }, "Copy");
  copy.addEventListener("click", async () => {
    value.select();
    try {
      await navigator.clipboard.writeText(created.key);
      status.textContent = "Copied.";
    } catch {
      status.textContent = "Press Ctrl+C (⌘C) to copy the selected key.";
    }
  });
  const done = h("button", { type: "button", class: "button button-ghost", onclick: () => replaceContent(box) }, "I have copied it");
  const until = created.expires_at ? `expires ${formatTimestamp(created.expires_at)}` : "does not expire";
  replaceContent(
    box,
    h(
      "section",
      { class: "card new-key", "aria-labelledby": "new-key-title" },
      h("h2", { id: "new-key-title" }, `New ${created.scope} key “${created.name}”`),
      h("p", { class: "message message-warning", role: "alert" }, "Copy this key now: it is stored only hashed and will not be shown again. ", `It ${until}.`),
      h("div", { class: "key-copy" }, value, copy),
      status,
      h("div", { class: "button-row" }, done),
    ),
  );
  value.focus();
  value.select();
}
