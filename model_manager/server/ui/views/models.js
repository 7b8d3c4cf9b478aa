// Models view: the registered model directories, register / refresh / hold / release / unregister, and
// the access card.
import { endpoints } from "../api.js";
import { field, h, loadingEl, loadInto, messageEl, plural, replaceContent, showMessage, statusBadge, timeEl } from "../dom.js";
import { links } from "../routes.js";
import { accessCard } from "./access.js";

export async function renderModels(main, ctx) {
  const listBox = h("div", { class: "table-wrap", id: "models-list" }, loadingEl("Loading models…"));
  const listMessage = messageEl("info");
  listMessage.id = "models-message";
  const reload = h("button", { type: "button", class: "button button-ghost", onclick: () => load() }, "Reload");
  const heading = h("h1", { tabindex: "-1" }, "Models");

  const page = h(
    "div",
    { class: "page" },
    h(
      "div",
      { class: "page-head" },
      h("div", null, heading, h("p", { class: "muted" }, "Model directories this server reads and serves. Open one to explore its symbols, factors and IC.")),
      reload,
    ),
    h(
      "div",
      { class: "columns" },
      h(
        "div",
        { class: "column-main" },
        h("section", { class: "card", "aria-labelledby": "models-title" }, h("h2", { id: "models-title" }, "Registered models"), listMessage, listBox),
        registerCard(() => load(), listMessage),
      ),
      h("aside", { class: "column-side" }, accessCard(ctx)),
    ),
  );
  replaceContent(main, page);
  if (ctx.focus) heading.focus({ preventScroll: true });

  async function load() {
    await loadInto(listBox, endpoints.models, ({ models }) => (models.length ? modelsTable(models, { load, listMessage }) : emptyState()), "models");
  }
  await load();
}

function emptyState() {
  return h(
    "div",
    { class: "empty" },
    h("p", null, h("strong", null, "No models registered yet.")),
    h("p", { class: "muted" }, "Register a model directory below. To try things out, create one with ", h("code", null, "model-manager demo ./demo-models"), " and register that path."),
  );
}

function modelsTable(models, { load, listMessage }) {
  const sorted = [...models].sort((a, b) => a.name.localeCompare(b.name));
  const tbody = h("tbody");
  for (const model of sorted) tbody.append(modelRow(model, { load, listMessage }));
  return h(
    "table",
    { class: "table models-table" },
    h("caption", { class: "visually-hidden" }, "Registered models"),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        ["Name", "Status", "Groups", "Symbols", "Last refresh", "Path", "Error", "Actions"].map((label) =>
          h("th", { scope: "col", class: label === "Groups" || label === "Symbols" ? "num" : undefined }, label),
        ),
      ),
    ),
    tbody,
  );
}

function modelRow(model, { load, listMessage }) {
  const actions = h("td", { class: "actions" });
  const tr = h(
    "tr",
    { class: model.held ? "model-held" : undefined, dataset: { model: model.name, held: model.held ? "true" : "false" } },
    h("td", null, h("a", { href: links.model(model.name), class: "strong-link" }, model.name)),
    h(
      "td",
      { class: "status-cell" },
      h("div", { class: "status-badges" }, statusBadge(model.status), model.held ? h("span", { class: "badge badge-held" }, "held") : null),
      model.held ? heldInfo(model) : null,
    ),
    h("td", { class: "num" }, model.group_count ?? "—"),
    h("td", { class: "num" }, model.symbol_count ?? "—"),
    h("td", { class: "when" }, timeEl(model.refreshed_at || model.registered_at)),
    h("td", { class: "path", title: model.path }, model.path),
    problemCell(model),
    actions,
  );

  function showActions() {
    const refresh = h("button", { type: "button", class: "button button-small", onclick: onRefresh }, "Refresh");
    const hold = model.held
      ? h("button", { type: "button", class: "button button-small", dataset: { action: "hold" }, onclick: () => askHold(false) }, "Release")
      : h("button", { type: "button", class: "button button-small", dataset: { action: "hold" }, onclick: () => askHold(true) }, "Hold");
    const remove = h("button", { type: "button", class: "button button-small button-danger-ghost", onclick: askRemove }, "Unregister");
    replaceContent(actions, h("div", { class: "button-row" }, refresh, hold, remove));

    async function onRefresh() {
      refresh.disabled = true;
      refresh.textContent = "Refreshing…";
      showMessage(listMessage, "");
      try {
        const updated = await endpoints.refresh(model.name);
        showMessage(listMessage, `Refreshed ${updated.name}: ${plural(updated.group_count ?? 0, "group")}, ${plural(updated.symbol_count ?? 0, "symbol")}.`, "success");
        await load();
      } catch (err) {
        if (err.sessionExpired) return;
        showMessage(listMessage, `Refresh of ${model.name} refused: ${err.message}${err.status === 400 ? " The previous state is still served." : ""}`, "error");
        refresh.disabled = false;
        refresh.textContent = "Refresh";
      }
    }
  }

  /** Hold (holding = true) or release the model, with a reason for the audit trail. */
  function askHold(holding) {
    const verb = holding ? "hold" : "release";
    const { field: reasonField, input: reason } = field(
      "Reason",
      { type: "text", name: "reason", maxlength: 1000, autocomplete: "off", placeholder: holding ? "e.g. checking the new training run" : "e.g. new models checked" },
    );
    const error = messageEl("error");
    const yes = h("button", { type: "submit", class: "button button-small button-primary" }, `Yes, ${verb}`);
    const no = h("button", { type: "button", class: "button button-small", onclick: cancel }, "Cancel");
    const form = h(
      "form",
      { class: "confirm", "aria-label": `${holding ? "Hold" : "Release"} ${model.name}`, novalidate: true },
      h(
        "span",
        null,
        holding
          ? `Hold ${model.name}? Each symbol keeps its live version; new versions are recorded but not served until released.`
          : `Release ${model.name}? Each symbol serves its latest version again (pins still win).`,
      ),
      reasonField,
      error,
      h("div", { class: "button-row" }, yes, no),
    );
    replaceContent(actions, form);
    form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") cancel();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      yes.disabled = true;
      showMessage(error, "");
      try {
        const why = reason.value.trim();
        await (holding ? endpoints.hold(model.name, why) : endpoints.release(model.name, why));
        showMessage(
          listMessage,
          holding
            ? `Held ${model.name}: new versions are recorded but not served until it is released.`
            : `Released ${model.name}: each symbol serves its latest version (pins still win).`,
          "success",
        );
        await load();
      } catch (err) {
        if (err.sessionExpired) return;
        showMessage(error, err.message);
        yes.disabled = false;
      }
    });
    reason.focus();

    function cancel() {
      showActions();
      actions.querySelector("button[data-action='hold']")?.focus();
    }
  }

  function askRemove() {
    const yes = h("button", { type: "button", class: "button button-small button-danger", onclick: confirmRemove }, "Yes, unregister");
    const no = h("button", { type: "button", class: "button button-small", onclick: () => { showActions(); actions.querySelector("button")?.focus(); } }, "Cancel");
    replaceContent(
      actions,
      h("div", { class: "confirm", role: "group", "aria-label": `Confirm unregistering ${model.name}` },
        h("span", null, `Unregister ${model.name}? The files stay on disk.`),
        h("div", { class: "button-row" }, yes, no)),
    );
    actions.addEventListener("keydown", function onKey(event) {
      if (event.key === "Escape") {
        actions.removeEventListener("keydown", onKey);
        no.click();
      }
    });
    no.focus();

    async function confirmRemove() {
      yes.disabled = true;
      try {
        await endpoints.unregister(model.name);
        showMessage(listMessage, `Unregistered ${model.name}. Its directory was not touched.`, "success");
        await load();
      } catch (err) {
        if (err.sessionExpired) return;
        showMessage(listMessage, `Could not unregister ${model.name}: ${err.message}`, "error");
        showActions();
      }
    }
  }

  showActions();
  return tr;
}

/** "since … — reason" under the held badge of a held model. */
function heldInfo(model) {
  const text = h("span", { class: "held-text small" });
  const box = h("div", { class: "held-info" }, text);
  const fill = (hold) => {
    replaceContent(
      text,
      hold && hold.held_at ? ["since ", timeEl(hold.held_at)] : "new versions are not served",
      hold && hold.reason ? [" — ", h("q", null, hold.reason)] : null,
    );
  };
  if (model.hold !== undefined) {
    fill(model.hold);
  } else {
    // The model object says only `held`: the versions of one of its symbols carry when and why.
    fill(null);
    const group = (model.groups || []).find((g) => g.version !== null && g.version !== undefined);
    if (group) {
      endpoints.versions(model.name, group.symbol).then((v) => fill(v.hold), () => {});
    }
  }
  return box;
}

/** The model's error, or a summary of its groups' problems (the list answer carries `groups`). */
function problemCell(model) {
  if (model.error) return h("td", { class: "error-text" }, model.error);
  const groups = Array.isArray(model.groups) ? model.groups : [];
  const stale = groups.filter((g) => g.stale).length;
  const failing = groups.filter((g) => g.status === "error").length;
  const parts = [];
  if (failing) parts.push(`${plural(failing, "group")} with errors`);
  if (stale) parts.push(`${stale} still served from the previous version`);
  if (!parts.length) return h("td", { class: "muted" }, "—");
  const details = groups.filter((g) => g.message).map((g) => `${g.group_key}: ${g.message}`).join("\n");
  return h("td", { class: failing ? "error-text" : "", title: details || undefined }, parts.join("; "));
}

function registerCard(reload, listMessage) {
  const { field: nameField, input: name } = field(
    "Name",
    { type: "text", name: "name", autocomplete: "off", spellcheck: "false", required: true, placeholder: "e.g. prod" },
    "Short name used in URLs and by clients.",
  );
  const { field: pathField, input: path } = field(
    "Directory path",
    { type: "text", name: "path", autocomplete: "off", spellcheck: "false", required: true, placeholder: "/srv/models/current" },
    "Path of the model directory on the server's machine. It is only read, never written.",
  );
  const error = messageEl("error");
  error.id = "register-error";
  const submit = h("button", { type: "submit", class: "button button-primary" }, "Register");
  const form = h("form", { class: "form form-inline", id: "register-form", novalidate: true }, h("div", { class: "form-fields" }, nameField, pathField), submit, error);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showMessage(error, "");
    if (!name.value.trim()) return fail("Enter a name for the model.", name);
    if (!path.value.trim()) return fail("Enter the path of the model directory.", path);
    submit.disabled = true;
    submit.textContent = "Registering…";
    try {
      const model = await endpoints.register(name.value.trim(), path.value.trim());
      form.reset();
      showMessage(listMessage, `Registered ${model.name}: ${plural(model.group_count ?? 0, "group")}, ${plural(model.symbol_count ?? 0, "symbol")}.`, "success");
      await reload();
    } catch (err) {
      if (!err.sessionExpired) fail(err.message, err.status === 409 ? name : path);
    } finally {
      submit.disabled = false;
      submit.textContent = "Register";
    }
  });

  function fail(text, input) {
    showMessage(error, text);
    input.focus();
  }

  return h(
    "section",
    { class: "card", "aria-labelledby": "register-title" },
    h("h2", { id: "register-title" }, "Register a model directory"),
    form,
  );
}
