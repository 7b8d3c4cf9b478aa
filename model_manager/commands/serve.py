"""`model-manager serve`: the Litestar app under uvicorn."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape

from model_manager import __version__
from model_manager.auth import new_setup_code
from model_manager.commands import DataDirOption, app, example
from model_manager.errors import ModelManagerError
from model_manager.isolation import check_allocator, start_checker
from model_manager.service import ModelManager
from model_manager.settings import ENV_TABLE, MAX_WORKERS, Settings
from model_manager.store import Store
from model_manager.workers import WorkerRole, bind_socket, shared_dir, supervise, worker_sockets

GRACEFUL_SHUTDOWN_SECONDS = 0.3  # in-flight requests get this long after SIGINT/SIGTERM
# uvicorn waits 0.1 s, then the grace period, then cancels what is left: requests still unanswered
# at this point after the stop signal are answered 503 (`ModelManagerApp.answer_unfinished`)
STOP_ANSWER_SECONDS = 0.1 + GRACEFUL_SHUTDOWN_SECONDS * 0.7


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def _help(field: str) -> str:
    """A flag's help from the settings table: text, env var and default."""
    var, _parse, text = ENV_TABLE[field]
    spec = next(f for f in dataclasses.fields(Settings) if f.name == field)
    default = spec.default if spec.default is not dataclasses.MISSING else "per-user app dir"
    if isinstance(default, bool):
        default = "on" if default else "off"
    return f"{text} [env {var}; default {default}]"


def _in_range(low: float, high: float | None = None, *, above: bool = False) -> Callable[[float | None], float | None]:
    """A flag's check, so that a bad value is reported with the flag's name (Settings, which checks
    them again, names the environment variables)."""
    def check(value: float | None) -> float | None:
        if value is not None and ((value <= low if above else value < low) or (high is not None and value > high)):
            bound = f"{'more than' if above else 'at least'} {low:g}" + (f" and at most {high:g}" if high is not None else "")
            raise typer.BadParameter(f"{value:g} is out of range: it must be {bound}")
        return value
    return check


@app.command(epilog=example("model-manager serve --port 6300 --demo"))
def serve(
    host: str = typer.Option(None, "--host", help=_help("host")),
    port: int = typer.Option(None, "--port", "-p", callback=_in_range(1, 65535), help=_help("port")),
    data_dir: DataDirOption = None,
    watch: bool = typer.Option(None, "--watch/--no-watch", help=_help("watch_enabled")),
    watch_interval: float = typer.Option(None, "--watch-interval", callback=_in_range(0, above=True), help=_help("watch_interval")),
    watch_debounce: float = typer.Option(None, "--watch-debounce", callback=_in_range(0), help=_help("watch_debounce")),
    watch_polling: bool = typer.Option(None, "--watch-polling/--no-watch-polling", help=_help("watch_polling")),
    token_ttl: int = typer.Option(None, "--token-ttl", callback=_in_range(1), help=_help("token_ttl")),
    header_timeout: float = typer.Option(None, "--header-timeout", callback=_in_range(0, 3600, above=True), help=_help("header_timeout")),
    demo: bool = typer.Option(False, "--demo", help="Generate (once) and register a demo model directory named 'demo'."),
    workers: int = typer.Option(None, "--workers", "-w", callback=_in_range(0, MAX_WORKERS), help=_help("workers")),
    log_level: LogLevel = typer.Option(LogLevel.info, "--log-level", case_sensitive=False,
                                       help="info logs one line per request; warning keeps only problems."),
) -> None:
    """Serve the HTTP API, the web UI at / and the API docs at /schema (OpenAPI JSON: /schema/openapi.json).

    Command-line flags win over MODEL_MANAGER_* environment variables, which win over defaults.
    While no password is set, a one-time setup code is printed with a link that fills it in: setting
    the first password through the API or the UI needs it, from any client (`model-manager password
    init` does not). Stop with Ctrl-C or SIGTERM.
    """
    settings = Settings.from_env().replace(
        host=host, port=port, data_dir=data_dir, watch_enabled=watch, watch_interval=watch_interval,
        watch_debounce=watch_debounce, watch_polling=watch_polling, token_ttl=token_ttl,
        header_timeout=header_timeout, workers=workers,
    )
    _configure_logging(log_level.value)
    count = settings.worker_count
    if count == 1:
        sock = bind_socket(settings.host, settings.port)
        try:
            store = Store(settings.db_path)
            try:
                _demo(settings, store, demo)
                stopped = _run(settings, store, sock, WorkerRole())
            finally:
                store.close()
        finally:
            sock.close()
    else:
        stopped = _supervise(settings, count, demo, log_level.value)
    Console().print(f"model-manager stopped{f' ({stopped})' if stopped else ''}", highlight=False)


def _demo(settings: Settings, store: Store, demo: bool) -> None:
    if demo:
        path = ModelManager(settings, store=store).ensure_demo()
        logging.getLogger("model_manager.serve").info("demo model directory %s registered as 'demo'", path)


def _supervise(settings: Settings, count: int, demo: bool, level: str) -> str | None:
    """Run `count` workers (see workers.py); the supervisor itself serves nothing. Returns the name of
    the signal that stopped them."""
    sockets = worker_sockets(settings.host, settings.port, count)
    store = Store(settings.db_path)
    try:
        _demo(settings, store, demo)
        setup_code = None if store.is_initialized() else new_setup_code()
        nothing_to_load = not store.list_models()
    finally:
        store.close()  # no database connection may cross a fork
    # one model check process for all the workers, started before they fork. It imports XGBoost
    # (a CPU-second or two) once one of them has loaded, not to slow their start; with nothing
    # registered there is nothing to slow, and the first registration should not wait for it
    start_checker(settings.check_memory_mb, wake=nothing_to_load)
    _banner(settings, setup_code, count)
    _raise_open_files()

    def run_worker(role: WorkerRole, sock: socket.socket) -> int:
        _configure_logging(level, f"[worker {role.index}] ")
        worker_store = Store(settings.db_path)
        try:
            _run(settings, worker_store, sock, role)
        finally:
            worker_store.close()
            sock.close()
        return 0

    role = WorkerRole(count=count, setup_code=setup_code, shared_dir=shared_dir())
    status, stopped = supervise(sockets, settings.host, settings.port, run_worker, role)
    if status:
        raise ModelManagerError("a worker kept failing at start: see the errors above")
    return signal.Signals(stopped).name if stopped else None


def _run(settings: Settings, store: Store, sock: socket.socket, role: WorkerRole) -> str | None:
    """Serve on `sock` until a stop signal; returns the signal's name (None: uvicorn stopped by itself)."""
    import uvicorn

    from model_manager.server.app import create_app
    from model_manager.server.protocol import http_protocol

    application = create_app(settings, store=store, role=role)
    if not role.shared:
        _banner(settings, application.state.auth.setup_code, 1)
        _raise_open_files()
    config = uvicorn.Config(
        application,
        loop="uvloop" if _importable("uvloop") else "auto",
        # payload polls answered without uvicorn; a header timeout and a 16 KiB head limit (uvicorn has
        # neither): see server/pollprotocol.py and server/protocol.py
        http=http_protocol(settings),
        lifespan="on",
        log_config=None,          # logging is configured above, once, for everything
        access_log=False,         # the app writes its own structured access log
        server_header=False,
        # the client address is the TCP peer, unless that peer is a proxy the operator trusts
        proxy_headers=bool(settings.proxy_list),
        forwarded_allow_ips=settings.proxy_list or [],
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,  # type: ignore[arg-type]
    )
    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            # long polls and event streams answer before uvicorn's grace period starts, not after it;
            # what is still unanswered near its end gets a 503 rather than uvicorn's 500
            application.state.manager.end_waits()
            loop = asyncio.get_running_loop()
            loop.call_later(STOP_ANSWER_SECONDS, lambda: loop.create_task(application.answer_unfinished()))
            await super().shutdown(sockets)

    server = Server(config)
    # uvicorn re-raises the signal that stopped it once it is done; record it instead, so a stop by
    # SIGINT (pm2, Ctrl-C) or SIGTERM is a clean exit 0 rather than a KeyboardInterrupt.
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise ModelManagerError("the server did not start: see the error above") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(stopped_by[0]).name if stopped_by else None


def _raise_open_files() -> None:
    from model_manager.server.protocol import raise_open_files_limit

    before, after = raise_open_files_limit()
    if after != before:
        logging.getLogger("model_manager.serve").info("open-files limit raised from %d to %d", before, after)


def _banner(settings: Settings, setup_code: str | None, workers: int) -> None:
    console = Console(highlight=False, soft_wrap=True)
    local = settings.host in ("0.0.0.0", "::", "")
    shown = "127.0.0.1" if local else (f"[{settings.host}]" if ":" in settings.host else settings.host)
    url = f"http://{shown}:{settings.port}"
    console.print(f"model-manager {__version__} serving [bold]{url}/[/bold]  (API {url}/api, docs {url}/schema)")
    console.print(f"{workers} worker processes sharing the port" if workers > 1 else "one worker process")
    if local:
        console.print(f"listening on all interfaces ({settings.host or '0.0.0.0'}:{settings.port})")
    console.print(f"data dir: {settings.data_dir}")
    allocator = check_allocator()
    console.print(f"model checks run with jemalloc ({allocator})" if allocator else
                  "model checks run with glibc's malloc (with libjemalloc2 installed they take 12-25 % less CPU)")
    if setup_code:
        console.print(f"No password is set yet: open [bold]{url}/#setup={setup_code}[/bold] to set it, or run "
                      f"`model-manager password init{escape(_data_dir_flag(settings))}`.")
        console.print(f"One-time setup code: [bold]{setup_code}[/bold] (the link above fills it in)")
    sys.stdout.flush()


def _data_dir_flag(settings: Settings) -> str:
    """` --data-dir X` when the data dir is not the default one, so a printed command acts on it (X
    absolute and shell-quoted: the command works pasted into any shell, from any directory)."""
    if settings.data_dir == Settings().data_dir:
        return ""
    return f" --data-dir {shlex.quote(str(settings.data_dir.absolute()))}"


class _ShutdownCancellation(logging.Filter):
    """A request still running when the graceful-shutdown time is up gets cancelled; uvicorn logs that
    with a traceback. It is expected at shutdown, so it becomes one plain line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            record.msg, record.args = "a request still running at shutdown was cancelled", ()
            record.exc_info, record.exc_text = None, None
        return True


def _configure_logging(level: str, prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    handler.addFilter(_ShutdownCancellation())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
