// Hash routes: #/models, #/models/NAME, #/models/NAME/SYMBOL[?group_key=G], #/engines/NAME (the fleet), #/keys. Hash routing keeps deep
// links working after a reload without any server-side fallback. `#setup=CODE` is the first-run link
// `model-manager serve` prints: it opens the models view with the setup code filled in.

/** Parse a location hash into {view, name?, symbol?, groupKey?, redirect?, setupCode?}. */
export function parseRoute(hash = location.hash) {
  const setup = /^#setup=([A-Za-z0-9-]{1,32})$/.exec(hash);
  if (setup) return { view: "models", redirect: true, setupCode: setup[1] };
  const [pathPart, query = ""] = hash.replace(/^#/, "").split("?");
  const parts = pathPart
    .split("/")
    .filter(Boolean)
    .map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
  const params = new URLSearchParams(query);
  if (parts.length === 0) return { view: "models", redirect: true };
  if (parts[0] === "keys") return parts.length === 1 ? { view: "keys" } : { view: "notfound" };
  if (parts[0] === "engines") return parts.length === 2 ? { view: "engines", name: parts[1] } : { view: "notfound" };
  if (parts[0] !== "models") return { view: "notfound" };
  if (parts.length === 1) return { view: "models" };
  if (parts.length === 2) return { view: "symbols", name: parts[1] };
  if (parts.length === 3) return { view: "detail", name: parts[1], symbol: parts[2], groupKey: params.get("group_key") };
  return { view: "notfound" };
}

export const links = {
  models: () => "#/models",
  keys: () => "#/keys",
  model: (name) => `#/models/${encodeURIComponent(name)}`,
  engines: (name) => `#/engines/${encodeURIComponent(name)}`,
  symbol: (name, symbol, groupKey) =>
    `#/models/${encodeURIComponent(name)}/${encodeURIComponent(symbol)}${groupKey ? `?group_key=${encodeURIComponent(groupKey)}` : ""}`,
};
