"""Runtime settings: one dataclass, each field's env var, default and help in one table.

`Settings.from_env()` reads the environment explicitly; nothing is read at import time.
Command-line flags win over env vars: commands call `settings.replace(**flags)` with the flags given.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from model_manager.errors import UsageError


def default_data_dir() -> Path:
    """The per-user application directory (XDG on Linux, the usual places elsewhere)."""
    if os.name == "nt":  # pragma: no cover - not a target platform, kept sensible
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif os.uname().sysname == "Darwin":  # pragma: no cover
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "model-manager"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected 1/0/true/false, got {text!r}")


MAX_WORKERS = 64
AUTO_WORKERS = 4  # `workers = 0` runs one process per core, but no more than this

# field name -> (env var, parser, help)
ENV_TABLE: dict[str, tuple[str, type | object, str]] = {
    "host": ("MODEL_MANAGER_HTTP_HOST", str, "Interface the HTTP server binds to."),
    "port": ("MODEL_MANAGER_HTTP_PORT", int, "TCP port of the HTTP server."),
    "token_ttl": ("MODEL_MANAGER_TOKEN_TTL", int, "Lifetime of an API token in seconds."),
    "watch_enabled": ("MODEL_MANAGER_WATCH_ENABLED", _bool, "Watch registered directories for changes."),
    "watch_interval": ("MODEL_MANAGER_WATCH_INTERVAL", float, "Polling period in seconds (polling mode, registry sync)."),
    "watch_debounce": ("MODEL_MANAGER_WATCH_DEBOUNCE", float, "Quiet time in seconds before a changed group is re-parsed."),
    "watch_polling": ("MODEL_MANAGER_WATCH_POLLING", _bool, "Poll instead of kernel events (network file systems)."),
    "data_dir": ("MODEL_MANAGER_DATA_DIR", Path, "Where the sqlite db and the conversion cache live."),
    "max_artifact_mb": ("MODEL_MANAGER_MAX_ARTIFACT_MB", float, "Artifact files larger than this are refused."),
    "max_body_kb": ("MODEL_MANAGER_MAX_BODY_KB", int, "Largest accepted request body in KiB."),
    "cors_origins": ("MODEL_MANAGER_CORS_ORIGINS", str, "Comma-separated origins allowed by CORS (empty: no CORS)."),
    "load_workers": ("MODEL_MANAGER_LOAD_WORKERS", int, "Threads that parse and convert models (0: one per core)."),
    "workers": ("MODEL_MANAGER_WORKERS", int,
                "Server processes sharing the port (0: one per core, at most 4; 1: a single process)."),
    "trusted_proxies": ("MODEL_MANAGER_TRUSTED_PROXIES", str,
                        "Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For is believed (empty: none)."),
    "metrics_public": ("MODEL_MANAGER_METRICS_PUBLIC", _bool, "Serve /metrics without a token or key."),
    "keep_versions": ("MODEL_MANAGER_KEEP_VERSIONS", int, "Newest versions kept per group (pinned and live ones are kept too)."),
    "check_memory_mb": ("MODEL_MANAGER_CHECK_MEMORY_MB", int,
                        "Memory in MiB one check of an untrusted file (pickle, model) may allocate."),
    "events_keepalive": ("MODEL_MANAGER_EVENTS_KEEPALIVE", float,
                         "Seconds without an event before an event stream sends a keep-alive comment."),
    "header_timeout": ("MODEL_MANAGER_HEADER_TIMEOUT", float,
                       "Seconds a connection may take to send a complete request head before it is closed."),
}


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 6300
    token_ttl: int = 43200
    watch_enabled: bool = True
    watch_interval: float = 5.0
    watch_debounce: float = 2.0
    watch_polling: bool = False
    data_dir: Path = field(default_factory=default_data_dir)
    max_artifact_mb: float = 512.0
    max_body_kb: int = 64
    cors_origins: str = ""
    load_workers: int = 0
    workers: int = 0
    trusted_proxies: str = ""
    keep_versions: int = 20
    metrics_public: bool = False
    check_memory_mb: int = 4096
    events_keepalive: float = 15.0
    header_timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Defaults overridden by the MODEL_MANAGER_* variables that are set (and not empty)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, (var, parse, _help) in ENV_TABLE.items():
            raw = env.get(var)
            if raw is None or (raw.strip() == "" and name not in ("cors_origins", "trusted_proxies")):
                continue
            try:
                values[name] = parse(raw.strip()) if parse is not str else raw.strip()  # type: ignore[operator]
            except ValueError as exc:
                raise UsageError(f"{var}={raw!r} is not valid: {exc}") from None
        return cls(**values).validated()

    def replace(self, **changes: object) -> Settings:
        """A copy with the given fields changed; `None` values (flags not given) are ignored."""
        given = {k: v for k, v in changes.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(given["data_dir"])  # type: ignore[arg-type]
        return dataclasses.replace(self, **given).validated()

    def validated(self) -> Settings:
        if not (0 < self.port < 65536):
            raise UsageError(f"port {self.port} is out of range: use 1-65535")
        if self.token_ttl <= 0:
            raise UsageError("MODEL_MANAGER_TOKEN_TTL must be a positive number of seconds")
        if self.watch_interval <= 0 or self.watch_debounce < 0:
            raise UsageError("watch interval must be > 0 and debounce >= 0 seconds")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise UsageError(f"MODEL_MANAGER_WORKERS must be between 0 (one per core) and {MAX_WORKERS}")
        if self.keep_versions < 1:
            raise UsageError("MODEL_MANAGER_KEEP_VERSIONS must be at least 1")
        if not 0 < self.events_keepalive <= 3600:
            raise UsageError("MODEL_MANAGER_EVENTS_KEEPALIVE must be more than 0 and at most 3600 seconds")
        if self.max_artifact_mb <= 0 or self.max_body_kb <= 0 or self.check_memory_mb <= 0:
            raise UsageError("size limits must be positive")
        if not (0 < self.header_timeout <= 3600):
            raise UsageError("MODEL_MANAGER_HEADER_TIMEOUT must be between 0 and 3600 seconds (e.g. 10)")
        for entry in self.proxy_list:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise UsageError(f"MODEL_MANAGER_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR "
                                 "(e.g. 127.0.0.1,10.0.0.0/8)") from None
        return self

    @property
    def worker_count(self) -> int:
        """How many server processes `serve` runs: `workers`, or one per core this process may use (at
        most `AUTO_WORKERS`: each worker holds every payload in memory)."""
        if self.workers:
            return self.workers
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        return max(1, min(cores, AUTO_WORKERS))

    @property
    def proxy_list(self) -> list[str]:
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "model-manager.sqlite3"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def max_artifact_bytes(self) -> int:
        return int(self.max_artifact_mb * 1024 * 1024)
