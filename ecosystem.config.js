// pm2 process file for model-manager. `./start.sh` uses it; by hand: `pm2 start ecosystem.config.js`.
//
// Settings: the defaults below are the service defaults (see the README's settings table); edit them here
// for a permanent change. A MODEL_MANAGER_* variable set in the environment of `pm2 start` / `./start.sh`
// wins over the value written here, and ./start.sh's flags (--web-host, --web-port, --data-dir) win over
// both. An empty value means "the built-in default" (for MODEL_MANAGER_DATA_DIR: the per-user app dir).
//
// The server shuts down cleanly on SIGINT, which is what `pm2 stop` / `pm2 delete` send first.
const path = require("path");

const root = __dirname;
// ./start.sh may move run/ and logs/ elsewhere (MODEL_MANAGER_RUN_DIR); by default they live here.
const runBase = process.env.MODEL_MANAGER_RUN_DIR || root;
const logDir = path.join(runBase, "logs");

const defaults = {
  MODEL_MANAGER_HTTP_HOST: "0.0.0.0",
  MODEL_MANAGER_HTTP_PORT: "6300",
  MODEL_MANAGER_TOKEN_TTL: "43200",
  MODEL_MANAGER_WATCH_ENABLED: "1",
  MODEL_MANAGER_WATCH_INTERVAL: "5",
  MODEL_MANAGER_WATCH_DEBOUNCE: "2",
  MODEL_MANAGER_WATCH_POLLING: "0",
  MODEL_MANAGER_DATA_DIR: "",
  MODEL_MANAGER_MAX_ARTIFACT_MB: "512",
  MODEL_MANAGER_MAX_BODY_KB: "64",
  MODEL_MANAGER_CORS_ORIGINS: "",
  MODEL_MANAGER_LOAD_WORKERS: "0",
  MODEL_MANAGER_WORKERS: "0", // server processes sharing the port: 0 = one per core (at most 4)
};

const env = { PYTHONUNBUFFERED: "1" };
for (const [name, value] of Object.entries(defaults)) {
  env[name] = process.env[name] !== undefined ? process.env[name] : value;
}

// Extra `serve` arguments from ./start.sh (e.g. --demo), space-separated.
const extraArgs = (process.env.MODEL_MANAGER_SERVE_ARGS || "").split(/\s+/).filter(Boolean);

module.exports = {
  apps: [
    {
      name: "model-manager",
      script: path.join(root, ".venv", "bin", "model-manager"),
      args: ["serve", ...extraArgs],
      interpreter: "none",
      exec_mode: "fork",
      cwd: root,
      env,
      out_file: path.join(logDir, "model-manager.out.log"),
      error_file: path.join(logDir, "model-manager.err.log"),
      merge_logs: true, // the log files keep these names (no "-<id>" suffix)
      time: true,
      autorestart: true,
      exp_backoff_restart_delay: 200,
      max_restarts: 10,
      min_uptime: "10s",
      kill_timeout: 3000,
      watch: false,
    },
  ],
};
