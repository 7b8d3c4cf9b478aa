// Access control: the first-run password form (bootstrap), login, and — once signed in — the card with
// the session, logout and password change.
import { ApiError, endSession, endpoints, session } from "../api.js";
import { field, h, messageEl, replaceContent, showMessage, timeEl } from "../dom.js";

const MIN_PASSWORD = 8;

/** There is one account; a hidden username field lets password managers file the password sensibly. */
function usernameField() {
  return h("input", { type: "text", name: "username", autocomplete: "username", value: "model-manager", hidden: true, readonly: true, tabindex: "-1" });
}

const SETUP_CODE_HELP =
  "This server accepts the first password only with its one-time setup code. " +
  "`model-manager serve` printed the code in its terminal (or in its log file when started in the background) " +
  "while no password is set, with a link that fills it in: look for the line with “setup code”.";

function busy(button, on, label) {
  button.disabled = on;
  if (label) button.textContent = label;
}

/** The full-page gate shown while not signed in: bootstrap when uninitialized, else login. */
export function renderAccessGate(main, { status, flash, onSignedIn, setupCode }) {
  document.title = status.initialized ? "Log in · model-manager" : "Set up · model-manager";
  const card = status.initialized ? loginCard(flash, onSignedIn) : bootstrapCard(status, flash, onSignedIn, setupCode);
  replaceContent(
    main,
    h(
      "div",
      { class: "gate" },
      h(
        "div",
        { class: "gate-intro" },
        h("h1", null, "model-manager"),
        h("p", null, "Inspect per-symbol XGBoost model directories — groups, factors, IC and training metadata — and serve their payloads to trading engines."),
      ),
      card,
    ),
  );
  card.querySelector("input:not([hidden])")?.focus();
}

function flashEl(flash) {
  const el = messageEl(flash?.kind || "info");
  if (flash) showMessage(el, flash.text, flash.kind);
  el.id = "access-flash";
  return el;
}

function loginCard(flash, onSignedIn) {
  const { field: pwField, input: pw } = field("Password", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const error = messageEl("error");
  const submit = h("button", { type: "submit", class: "button button-primary" }, "Log in");
  const form = h("form", { class: "form", id: "login-form", novalidate: true }, usernameField(), pwField, error, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showMessage(error, "");
    if (!pw.value) {
      showMessage(error, "Enter the password.");
      pw.focus();
      return;
    }
    busy(submit, true, "Logging in…");
    try {
      session.save(await endpoints.login(pw.value));
      await onSignedIn();
    } catch (err) {
      let text = err.message;
      if (err instanceof ApiError && err.status === 401) text = "Wrong password. Try again.";
      if (err instanceof ApiError && err.status === 429) {
        const wait = err.response?.headers.get("Retry-After");
        text = `${err.detail}${wait ? ` Try again in ${wait} s.` : ""}`;
      }
      showMessage(error, text);
      busy(submit, false, "Log in");
      pw.select();
      pw.focus();
    }
  });
  return h(
    "section",
    { class: "card access-card", "aria-labelledby": "access-title" },
    h("h2", { id: "access-title" }, "Access control"),
    flashEl(flash),
    h("p", { class: "muted" }, "Log in with the password set for this server."),
    form,
  );
}

function bootstrapCard(status, flash, onSignedIn, setupCode) {
  const { field: pwField, input: pw } = field(
    "New password",
    { type: "password", name: "password", autocomplete: "new-password", required: true, minlength: MIN_PASSWORD },
    `At least ${MIN_PASSWORD} characters.`,
  );
  const { field: confirmField, input: confirm } = field("Repeat the password", { type: "password", name: "confirm", autocomplete: "new-password", required: true });
  const { field: codeField, input: code } = field("Setup code", { type: "text", name: "setup_code", autocomplete: "off", spellcheck: "false" }, SETUP_CODE_HELP);
  codeField.id = "setup-code-field";
  codeField.hidden = !status.setup_code_required;
  if (setupCode) code.value = setupCode;
  const error = messageEl("error");
  const submit = h("button", { type: "submit", class: "button button-primary" }, "Set password and sign in");
  const form = h("form", { class: "form", id: "bootstrap-form", novalidate: true }, usernameField(), pwField, confirmField, codeField, error, submit);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showMessage(error, "");
    if (pw.value.length < MIN_PASSWORD) {
      showMessage(error, `The password needs at least ${MIN_PASSWORD} characters.`);
      pw.focus();
      return;
    }
    if (pw.value !== confirm.value) {
      showMessage(error, "The two passwords differ: type the same password twice.");
      confirm.focus();
      return;
    }
    if (!codeField.hidden && !code.value.trim()) {
      showMessage(error, "Enter the setup code printed by model-manager serve.");
      code.focus();
      return;
    }
    busy(submit, true, "Setting the password…");
    try {
      session.save(await endpoints.bootstrap(pw.value, codeField.hidden ? null : code.value.trim()));
      await onSignedIn();
    } catch (err) {
      busy(submit, false, "Set password and sign in");
      if (err instanceof ApiError && err.status === 403) {
        const wasHidden = codeField.hidden;
        codeField.hidden = false;
        showMessage(error, wasHidden ? "A setup code is needed to set the first password: enter it below." : err.detail);
        code.focus();
        return;
      }
      if (err instanceof ApiError && err.status === 409) {
        showMessage(error, "A password has already been set on this server. Reload the page to log in.");
        return;
      }
      showMessage(error, err.message);
    }
  });

  return h(
    "section",
    { class: "card access-card", "aria-labelledby": "access-title" },
    h("h2", { id: "access-title" }, "Access control"),
    flashEl(flash),
    h("p", null, h("strong", null, "Welcome. "), "No password is set on this server yet. Choose one: it protects this page and the models API."),
    form,
  );
}

/** The signed-in card: session expiry, logout, and the change-password form. */
export function accessCard({ status, logout }) {
  const expiresAt = status.expires_at || session.expiresAt;
  const { field: curField, input: current } = field("Current password", { type: "password", name: "current_password", autocomplete: "current-password", required: true });
  const { field: newField, input: next } = field(
    "New password",
    { type: "password", name: "new_password", autocomplete: "new-password", required: true, minlength: MIN_PASSWORD },
    `At least ${MIN_PASSWORD} characters. Every other session is signed out.`,
  );
  const { field: confirmField, input: confirm } = field("Repeat the new password", { type: "password", name: "confirm_password", autocomplete: "new-password", required: true });
  const message = messageEl("error");
  const submit = h("button", { type: "submit", class: "button" }, "Change password");
  const form = h("form", { class: "form", id: "password-form", novalidate: true }, usernameField(), curField, newField, confirmField, message, submit);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showMessage(message, "", "error");
    if (!current.value) return fail("Enter your current password.", current);
    if (next.value.length < MIN_PASSWORD) return fail(`The new password needs at least ${MIN_PASSWORD} characters.`, next);
    if (next.value !== confirm.value) return fail("The two new passwords differ: type the same one twice.", confirm);
    busy(submit, true, "Changing…");
    try {
      await endpoints.changePassword(current.value, next.value);
      form.reset();
      showMessage(message, "Password changed. Every other session has been signed out.", "success");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        const stillIn = await endpoints.status().then((s) => s.authenticated, () => true);
        if (stillIn) fail("The current password is wrong.", current);
        else endSession();
      } else if (!err.sessionExpired) {
        fail(err.message, next);
      }
    } finally {
      busy(submit, false, "Change password");
    }
  });

  function fail(text, input) {
    showMessage(message, text, "error");
    input.focus();
  }

  return h(
    "section",
    { class: "card access-card", id: "access-card", "aria-labelledby": "access-card-title" },
    h("h2", { id: "access-card-title" }, "Access control"),
    h("p", { class: "session-line" }, h("span", { class: "dot", "aria-hidden": "true" }), "Signed in"),
    expiresAt ? h("p", { class: "muted small session-expiry" }, "Session ends ", timeEl(expiresAt)) : null,
    h("button", { type: "button", class: "button", onclick: logout }, "Log out"),
    h("details", { class: "password-details" }, h("summary", null, "Change password"), form),
  );
}
