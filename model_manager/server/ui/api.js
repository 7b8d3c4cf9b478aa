// The HTTP API client: the bearer token lives in sessionStorage (one browser tab = one session),
// errors become ApiError with the server's `detail`, and any 401 on an authenticated call drops the
// token and tells the app, which shows the login view with a message.

const TOKEN_KEY = "model-manager.token";
const EXPIRES_KEY = "model-manager.expires_at";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  get expiresAt() {
    return sessionStorage.getItem(EXPIRES_KEY);
  },
  /** Store a token object from bootstrap/login: {token, token_type, expires_in, expires_at}. */
  save(tokenObject) {
    sessionStorage.setItem(TOKEN_KEY, tokenObject.token);
    if (tokenObject.expires_at) sessionStorage.setItem(EXPIRES_KEY, tokenObject.expires_at);
    else sessionStorage.removeItem(EXPIRES_KEY);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(EXPIRES_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, detail, response) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.response = response;
    // True when the token was refused: the app has already switched to the login view.
    this.sessionExpired = false;
  }
}

let onUnauthorized = () => {};

/** Drop the token and send the app to the login view with this message. */
export function endSession(message = "Your session has expired or is no longer valid. Log in again to continue.") {
  session.clear();
  onUnauthorized(message);
}

/** Register the app's reaction to a refused token (called with a message for the login view). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

async function errorDetail(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    /* body unreadable: fall back to the status line below */
  }
  try {
    const body = JSON.parse(text);
    let detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    // Litestar validation errors list the offending fields in `extra`.
    if (Array.isArray(body.extra) && body.extra.length) {
      const parts = body.extra.map((e) => (e && e.message ? `${e.key ? `${e.key}: ` : ""}${e.message}` : JSON.stringify(e)));
      detail = `${detail} (${parts.join("; ")})`;
    }
    return detail;
  } catch {
    const statusLine = `${response.status} ${response.statusText}`.trim();
    return text && text.length < 300 ? `${statusLine}: ${text}` : statusLine;
  }
}

/**
 * Call the API. Returns the parsed JSON body (or null for 204), or the Response itself with raw: true.
 * auth: send the bearer token, and (unless quiet401) treat a 401 as "session over".
 */
export async function api(method, path, { body, auth = true, raw = false, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const token = session.token;
  if (token && (auth || path === "/api/auth/status")) headers.Authorization = `Bearer ${token}`;

  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(0, "The server cannot be reached. Is model-manager serve still running?", null);
  }

  if (!response.ok) {
    const detail = await errorDetail(response);
    const error = new ApiError(response.status, detail, response);
    if (response.status === 401 && auth && !quiet401) {
      error.sessionExpired = true;
      endSession();
    }
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

const enc = encodeURIComponent;

export const endpoints = {
  status: () => api("GET", "/api/auth/status", { auth: false }),
  health: () => api("GET", "/healthz", { auth: false }),
  bootstrap: (password, setupCode) =>
    api("POST", "/api/auth/bootstrap", { auth: false, body: setupCode ? { password, setup_code: setupCode } : { password } }),
  login: (password) => api("POST", "/api/auth/login", { auth: false, body: { password } }),
  // A refused token on logout is not news: the caller drops it either way.
  logout: () => api("POST", "/api/auth/logout", { quiet401: true }),
  changePassword: (current, next) =>
    // 401 here may mean "wrong current password" rather than "token refused": the caller tells them apart.
    api("POST", "/api/auth/password", { quiet401: true, body: { current_password: current, new_password: next } }),
  models: () => api("GET", "/api/models"),
  register: (name, path) => api("POST", "/api/models", { body: { name, path } }),
  unregister: (name) => api("DELETE", `/api/models/${enc(name)}`),
  refresh: (name) => api("POST", `/api/models/${enc(name)}/refresh`),
  symbols: (name) => api("GET", `/api/models/${enc(name)}/symbols`),
  factors: (name) => api("GET", `/api/models/${enc(name)}/factors`),
  fleet: (name) => api("GET", `/api/models/${enc(name)}/fleet`),
  matrix: (name, metric, top) => api("GET", `/api/models/${enc(name)}/matrix?metric=${enc(metric)}${top ? `&top=${top}` : ""}`),
  symbol: (name, symbol, groupKey) =>
    api("GET", `/api/models/${enc(name)}/symbols/${enc(symbol)}${groupKey ? `?group_key=${enc(groupKey)}` : ""}`),
  keys: () => api("GET", "/api/keys"),
  createKey: (name, scope, expiresInDays) =>
    api("POST", "/api/keys", { body: expiresInDays ? { name, scope, expires_in_days: expiresInDays } : { name, scope } }),
  revokeKey: (name) => api("DELETE", `/api/keys/${enc(name)}`),
  payload: (name, symbol) => api("GET", `/api/models/${enc(name)}/model/${enc(symbol)}`, { raw: true }),
  // versions (pin, unpin, rollback, hold and release are audited with the reason)
  versions: (name, symbol) => api("GET", `${symbolPath(name, symbol)}/versions`),
  pin: (name, symbol, version, reason = "") => api("POST", `${symbolPath(name, symbol)}/pin`, { body: { version, reason } }),
  unpin: (name, symbol, reason = "") => api("DELETE", `${symbolPath(name, symbol)}/pin${reasonQuery(reason)}`),
  rollback: (name, symbol, reason = "") => api("POST", `${symbolPath(name, symbol)}/rollback`, { body: { reason } }),
  hold: (name, reason = "") => api("POST", `/api/models/${enc(name)}/hold`, { body: { reason } }),
  release: (name, reason = "") => api("DELETE", `/api/models/${enc(name)}/hold${reasonQuery(reason)}`),
  diff: (name, symbol, from, to) => {
    const query = new URLSearchParams();
    if (from) query.set("from", String(from));
    if (to) query.set("to", String(to));
    const text = query.toString();
    return api("GET", `${symbolPath(name, symbol)}/diff${text ? `?${text}` : ""}`);
  },
};

function symbolPath(name, symbol) {
  return `/api/models/${enc(name)}/symbols/${enc(symbol)}`;
}

function reasonQuery(reason) {
  return reason ? `?reason=${enc(reason)}` : "";
}
