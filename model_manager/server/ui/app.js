// Entry point: hash routing (#/models, #/models/NAME, #/models/NAME/SYMBOL, #/engines/NAME, #/keys),
// the session check, and the header. Views live in views/*.js and render into <main>.
import { endpoints, session, setUnauthorizedHandler } from "./api.js";
import { h, replaceContent, loadingEl, messageEl, showMessage } from "./dom.js";
import { links, parseRoute } from "./routes.js";
import { renderAccessGate } from "./views/access.js";
import { renderModels } from "./views/models.js";
import { renderSymbols } from "./views/symbols.js";
import { renderDetail } from "./views/detail.js";
import { renderKeys } from "./views/keys.js";
import { renderEngines } from "./views/engines.js";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const mainNav = document.getElementById("mainnav");
const sessionBox = document.getElementById("session-box");

const state = {
  status: null, // last /api/auth/status answer
  flash: null, // {text, kind} shown once on the next access view
  renderCount: 0,
  setupCode: null, // from a #setup=CODE link, for the first-password form
};

function setNav(route) {
  mainNav.hidden = false;
  const section = route.view === "keys" ? "keys" : "models";
  for (const link of mainNav.querySelectorAll("a")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function setCrumbs(route) {
  if (route.view === "keys") {
    replaceContent(crumbs);
    crumbs.hidden = true;
    return;
  }
  crumbs.hidden = false;
  const items = [h("a", { href: links.models() }, "Models")];
  if (route.name) items.push(h("a", { href: links.model(route.name) }, route.name));
  if (route.symbol) items.push(h("a", { href: links.symbol(route.name, route.symbol) }, route.symbol));
  if (route.view === "engines") items.push(h("a", { href: links.engines(route.name) }, "Engines"));
  const list = h("ol");
  items.forEach((item, i) => {
    if (i === items.length - 1) item.setAttribute("aria-current", "page");
    list.append(h("li", null, item));
  });
  replaceContent(crumbs, list);
}

function renderSessionBox() {
  if (!state.status || !state.status.authenticated) {
    replaceContent(sessionBox);
    return;
  }
  const button = h("button", { type: "button", class: "button button-ghost", id: "logout-button", onclick: logout }, "Log out");
  replaceContent(sessionBox, h("span", { class: "session-state" }, h("span", { class: "dot", "aria-hidden": "true" }), "Signed in"), button);
}

async function logout() {
  try {
    await endpoints.logout();
  } catch {
    /* the token is dropped below whatever the server says */
  }
  session.clear();
  state.flash = { text: "You are logged out.", kind: "info" };
  await render();
}

/** Called after bootstrap/login succeeded (token already saved). */
async function onSignedIn() {
  state.flash = null;
  await render({ focus: true });
}

function showAccess(status) {
  crumbs.hidden = true;
  mainNav.hidden = true;
  renderSessionBox();
  const flash = state.flash;
  state.flash = null;
  renderAccessGate(main, { status, flash, onSignedIn, setupCode: state.setupCode });
}

async function checkStatus() {
  const status = await endpoints.status();
  state.status = status;
  return status;
}

setUnauthorizedHandler((message) => {
  state.status = { ...(state.status || {}), authenticated: false };
  state.flash = { text: message, kind: "error" };
  render();
});

/** Render the current route; asks the server who we are first (cheap, and catches expired tokens). */
async function render({ focus = false } = {}) {
  const count = ++state.renderCount;
  const route = parseRoute();
  if (route.setupCode) state.setupCode = route.setupCode; // kept in memory only, and out of the address bar
  if (route.redirect) {
    history.replaceState(null, "", links.models());
  }
  const sentToken = session.token;
  let status;
  try {
    status = await checkStatus();
  } catch (err) {
    if (count !== state.renderCount) return;
    crumbs.hidden = true;
    mainNav.hidden = true;
    const msg = messageEl("error");
    showMessage(msg, err.message || String(err));
    const retry = h("button", { type: "button", class: "button", onclick: () => render() }, "Try again");
    replaceContent(main, h("section", { class: "card narrow" }, h("h1", null, "Cannot reach the server"), msg, retry));
    return;
  }
  if (count !== state.renderCount) return;

  if (session.token !== sentToken) return render({ focus }); // signed in or out meanwhile (another tab, a form)

  if (!status.authenticated) {
    if (session.token && !state.flash) {
      state.flash = { text: "Your session has expired or is no longer valid. Log in again to continue.", kind: "error" };
    }
    session.clear();
    showAccess(status);
    return;
  }

  if (focus) window.scrollTo(0, 0); // a new page starts at its top
  setNav(route);
  setCrumbs(route);
  renderSessionBox();
  const ctx = { logout, status, focus, isCurrent: () => count === state.renderCount };
  replaceContent(main, loadingEl());
  switch (route.view) {
    case "models":
      document.title = "Models · model-manager";
      return renderModels(main, ctx);
    case "symbols":
      document.title = `${route.name} · model-manager`;
      return renderSymbols(main, route, ctx);
    case "engines":
      document.title = `Engines · ${route.name} · model-manager`;
      return renderEngines(main, route, ctx);
    case "detail":
      document.title = `${route.symbol} · ${route.name} · model-manager`;
      return renderDetail(main, route, ctx);
    case "keys":
      document.title = "API keys · model-manager";
      return renderKeys(main, ctx);
    default:
      document.title = "Not found · model-manager";
      replaceContent(
        main,
        h("section", { class: "card narrow" }, h("h1", null, "Page not found"), h("p", null, "There is nothing at this address. "), h("a", { href: links.models() }, "Go to the models")),
      );
  }
}

/** The footer says how many worker processes serve this page (`serve --workers`): each answers any request. */
async function showWorkers() {
  try {
    const health = await endpoints.health();
    const count = health.workers || 1;
    document.getElementById("server-workers").textContent = count === 1 ? "1 worker process" : `${count} worker processes`;
  } catch {
    // the footer stays quiet: the pages report the server's trouble themselves
  }
}

window.addEventListener("hashchange", () => render({ focus: true }));
render();
showWorkers();

// The skip link must not change the hash (that is the router's): move focus instead.
document.querySelector(".skip-link")?.addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
