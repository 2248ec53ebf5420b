"""``sluicegate serve``: the proxy on an HTTP server, hypercorn's trio worker or the lean one.

``general_settings.http_server`` (or ``SLUICEGATE_HTTP_SERVER``) chooses the server: hypercorn,
or the lean HTTP/1.1 server of :mod:`sluicegate.server._http1`; the app is the same. One worker
runs in this process (``serve``); several (``--workers N``) are processes of their own, each
importing :mod:`sluicegate.server._asgi` with the config path in ``SLUICEGATE_CONFIG``:
hypercorn's, or for the lean server N spawned processes accepting on one socket bound here
before they start. Every worker opens the gateway and the store in its ASGI lifespan; they
share the SQLite file (its instance locks keep their recoveries apart, see the store).

Workers of one server share one secret for response IDs and sealed provider state, or a
response made by one worker would be a 404 on the next: the configured
``response_id_secret`` (or ``SLUICEGATE_RESPONSE_ID_SECRET``); without one, :func:`run`
generates a secret before it starts the workers and hands it to them in that variable. Such a
secret lives as long as the server: a warning says so at start, since a restart invalidates
every ID issued before it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig

from .._gateway import SECRET_ORIGIN_VARIABLE, SECRET_VARIABLE, open_gateway, user_prices
from ..config import GatewayConfig, load_config
from ..errors import ConfigError
from ._app import ProxyApp
from ._http1 import bind_socket, serve_http1
from ._metrics import MULTIPROCESS_VARIABLE

__all__ = ["DEFAULT_PORT", "build_app", "http_server", "hypercorn_config", "run", "serve"]

logger = logging.getLogger("sluicegate")

#: Overrides ``general_settings.http_server`` (the test suite's ``--http-server`` sets it, so
#: the processes it starts serve on the same server).
HTTP_SERVER_VARIABLE = "SLUICEGATE_HTTP_SERVER"

#: LiteLLM's proxy port, so clients that know it need no change.
DEFAULT_PORT = 4000
#: Seconds an idle client connection is kept: longer than common load balancers' idle timeouts.
KEEP_ALIVE_TIMEOUT = 75.0


def build_app(
    config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProxyApp:
    """The ASGI app for a configuration (validated now: a bad one fails before serving).

    Raises:
        ConfigError: the configuration is invalid, or has no master key (and does not allow
            unauthenticated use); the message names the path.
    """
    cfg = load_config(config, environ=environ, database_url_variable=True)
    if cfg.general_settings.pricing_file is not None:
        # Read here too, so a bad price file stops the command before it serves; the gateway
        # reads it again when it opens.
        user_prices(cfg.general_settings.pricing_file)
    app = ProxyApp(cfg, partial(open_gateway, cfg, transport=transport, environ=environ))
    app.check_settings()
    return app


def http_server(config: GatewayConfig) -> str:
    """The HTTP server to serve ``config`` on: ``SLUICEGATE_HTTP_SERVER`` if set, else
    ``general_settings.http_server``.

    Raises:
        ConfigError: the variable names no server.
    """
    # The process's own environment, as for the actor layout: the override is the process's.
    server = os.environ.get(HTTP_SERVER_VARIABLE) or config.general_settings.http_server
    if server not in ("lean", "hypercorn"):
        raise ConfigError(
            f"{HTTP_SERVER_VARIABLE} must be 'lean' or 'hypercorn', not {server!r}",
            path="general_settings.http_server",
        )
    return server


def hypercorn_config(
    app: ProxyApp, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> HypercornConfig:
    hconfig = HypercornConfig()
    hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.graceful_timeout = app.config.general_settings.graceful_shutdown_timeout
    hconfig.accesslog = None  # access lines would carry paths with response IDs; metrics count
    hconfig.errorlog = "-"
    hconfig.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    return hconfig


async def serve(
    app: ProxyApp,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    shutdown_trigger: Any = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns (default: SIGINT or SIGTERM), then shut
    down gracefully: stop accepting, let in-flight requests finish for
    ``graceful_shutdown_timeout``, then cancel them (each records its end). ``task_status``
    gets the bound URLs (``http://127.0.0.1:PORT``; port 0 picks a free one).

    Raises:
        ConfigError: ``SLUICEGATE_HTTP_SERVER`` names no server.
    """
    trigger = shutdown_trigger or _signalled
    if http_server(app.config) == "lean":
        with bind_socket(host, port) as sock:
            await _serve_lean(app, sock, trigger, task_status=task_status)
        return
    from hypercorn.trio import serve as hypercorn_serve

    await hypercorn_serve(
        app,  # type: ignore[arg-type]
        hypercorn_config(app, host=host, port=port),
        shutdown_trigger=trigger,
        task_status=task_status,
    )


async def _serve_lean(
    app: ProxyApp,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[object]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_http1(
        app,
        [sock],
        graceful_timeout=app.config.general_settings.graceful_shutdown_timeout,
        keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )


async def _signalled() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def run(config_path: str, *, host: str, port: int, workers: int) -> None:
    """The CLI's entry: validate the config, then serve with one or ``workers`` processes
    (sharing one secret; see the module docstring).

    Raises:
        ConfigError: the configuration is invalid, or its store is the memory backend and
            ``workers`` is above 1 (the workers could not share it).
    """
    app = build_app(config_path)
    if workers > 1 and app.config.general_settings.store.backend == "memory":
        # Each worker would hold a store of its own: a response made by one would be
        # unknown to the next (GET, previous_response_id, cancel, keys, spend).
        raise ConfigError(
            f"--workers {workers} needs a store the workers share, and the memory backend "
            "lives in one process: serve with one worker, or use the sqlite backend",
            path="general_settings.store.backend",
        )
    if app.config.general_settings.response_id_secret is None and not os.environ.get(
        SECRET_VARIABLE
    ):
        logger.warning(
            "sluicegate: no general_settings.response_id_secret (nor %s) is set; a random one "
            "is used, so the response IDs this server issues stop working when it restarts. "
            "Set a secret to keep them.",
            SECRET_VARIABLE,
        )
        # One secret for every worker: each would otherwise make its own.
        os.environ[SECRET_VARIABLE] = secrets.token_urlsafe(32)
        os.environ[SECRET_ORIGIN_VARIABLE] = "generated"
    lean = http_server(app.config) == "lean"
    if lean:
        _log_to_stderr()
    if workers <= 1:
        trio.run(partial(serve, app, host=host, port=port))
        return
    os.environ["SLUICEGATE_CONFIG"] = os.path.abspath(config_path)
    if lean:
        with _metrics_directory():
            _run_lean_workers(os.environ["SLUICEGATE_CONFIG"], host, port, workers)
        return
    from hypercorn.run import run as hypercorn_run

    hconfig = hypercorn_config(app, host=host, port=port)
    hconfig.application_path = "sluicegate.server._asgi:app"
    hconfig.worker_class = "trio"
    hconfig.workers = workers
    with _metrics_directory():
        hypercorn_run(hconfig)


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """The workers' counts meet in files (prometheus_client's multiprocess mode, see _metrics):
    a fresh directory for each server, so that no count of an earlier one is summed in."""
    previous = os.environ.get(MULTIPROCESS_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="sluicegate-metrics-") as directory:
        os.environ[MULTIPROCESS_VARIABLE] = directory
        try:
            yield
        finally:
            if previous is None:
                del os.environ[MULTIPROCESS_VARIABLE]
            else:
                os.environ[MULTIPROCESS_VARIABLE] = previous


def _log_to_stderr() -> None:
    """The lean server's lines on stderr, formatted as hypercorn's error log writes its own
    (``Running on http://…``, which the tests and scripts read)."""
    server_logger = logging.getLogger("sluicegate.server")
    if not server_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s [%(process)d] [%(levelname)s] %(message)s", "[%Y-%m-%d %H:%M:%S %z]"
            )
        )
        server_logger.addHandler(handler)
        server_logger.setLevel(logging.INFO)


def _run_lean_workers(config_path: str, host: str, port: int, workers: int) -> None:
    """``--workers N`` on the lean server: one socket bound here, N spawned processes accepting
    on it (the kernel hands each connection to one of them), each with its own app and
    gateway. SIGINT or SIGTERM here stops them all gracefully; so does this process's end.

    Raises:
        SystemExit: a worker failed (its exit status); the others were stopped.
    """
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    failed = 0
    with bind_socket(host, port, reuse_port=True) as sock:
        # Ctrl+C reaches every process of the terminal's group: the workers ignore it (ignored
        # signals stay ignored across spawn) and stop when ``stop`` is set, as here SIGINT and
        # SIGTERM do.
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        processes = [
            context.Process(target=_lean_worker, args=(config_path, sock, stop, os.getpid()))
            for _ in range(workers)
        ]
        try:
            for process in processes:
                process.start()
            for signum in handlers:
                signal.signal(signum, lambda signum, frame: stop.set())
            running = list(processes)
            while running:
                multiprocessing.connection.wait([p.sentinel for p in running])
                for process in [p for p in running if p.exitcode is not None]:
                    running.remove(process)
                    code = process.exitcode
                    if code:
                        # Killed by a signal: the shell's status for it (128 + its number).
                        failed = failed or (code if code > 0 else 128 - code)
                        stop.set()
        finally:
            stop.set()
            for process in processes:
                if process.pid is not None:
                    process.join()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
    if failed:
        raise SystemExit(failed)


def _lean_worker(config_path: str, sock: socket.socket, stop: ProcessEvent, parent: int) -> None:
    """One process of ``--workers N`` on the lean server: the app of ``config_path`` (as
    :mod:`sluicegate.server._asgi` builds hypercorn's) served on the inherited socket until
    ``stop`` is set or the parent is gone."""
    _log_to_stderr()
    app = build_app(config_path)
    trio.run(_serve_lean, app, sock, partial(_until_stopped, stop, parent))


async def _until_stopped(stop: ProcessEvent, parent: int) -> None:
    # A process's event: trio has nothing to wait on for it but time.
    while not stop.is_set() and os.getppid() == parent:  # noqa: ASYNC110
        await trio.sleep(0.1)
