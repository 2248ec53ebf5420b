"""``sluicegate serve``: the proxy on hypercorn's trio worker.

One worker runs in this process (``serve``); several (``--workers N``) are hypercorn's own
processes, each importing :mod:`sluicegate.server._asgi` with the config path in
``SLUICEGATE_CONFIG``. Every worker opens the gateway and the store in its ASGI lifespan; they
share the SQLite file (its instance locks keep their recoveries apart, see the store).

Workers of one server share one secret for response IDs and sealed provider state, or a
response made by one worker would be a 404 on the next: the configured
``response_id_secret`` (or ``SLUICEGATE_RESPONSE_ID_SECRET``); without one, :func:`run`
generates a secret before it starts the workers and hands it to them in that variable. Such a
secret lives as long as the server: a warning says so at start, since a restart invalidates
every ID issued before it.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import tempfile
from collections.abc import Mapping
from functools import partial
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig

from .._gateway import open_gateway
from ..config import GatewayConfig, load_config
from ..errors import ConfigError
from ._app import ProxyApp
from ._metrics import MULTIPROCESS_VARIABLE

__all__ = ["DEFAULT_PORT", "build_app", "hypercorn_config", "run", "serve"]

logger = logging.getLogger("sluicegate")

#: The variable the gateway reads its secret from when the config names none.
SECRET_VARIABLE = "SLUICEGATE_RESPONSE_ID_SECRET"

#: LiteLLM's proxy port, so clients that know it need no change.
DEFAULT_PORT = 4000


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
    cfg = load_config(config, environ=environ)
    app = ProxyApp(cfg, partial(open_gateway, cfg, transport=transport, environ=environ))
    app.check_settings()
    return app


def hypercorn_config(
    app: ProxyApp, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> HypercornConfig:
    hconfig = HypercornConfig()
    hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.graceful_timeout = app.config.general_settings.graceful_shutdown_timeout
    hconfig.accesslog = None  # access lines would carry paths with response IDs; metrics count
    hconfig.errorlog = "-"
    hconfig.keep_alive_timeout = 75.0  # longer than common load balancers' idle timeouts
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
    gets the bound URLs (``http://127.0.0.1:PORT``; port 0 picks a free one)."""
    from hypercorn.trio import serve as hypercorn_serve

    await hypercorn_serve(
        app,  # type: ignore[arg-type]
        hypercorn_config(app, host=host, port=port),
        shutdown_trigger=shutdown_trigger or _signalled,
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
    if workers <= 1:
        trio.run(partial(serve, app, host=host, port=port))
        return
    from hypercorn.run import run as hypercorn_run

    os.environ["SLUICEGATE_CONFIG"] = os.path.abspath(config_path)
    hconfig = hypercorn_config(app, host=host, port=port)
    hconfig.application_path = "sluicegate.server._asgi:app"
    hconfig.worker_class = "trio"
    hconfig.workers = workers
    # The workers' counts meet in files (prometheus_client's multiprocess mode, see _metrics):
    # a fresh directory for each server, so that no count of an earlier one is summed in.
    previous = os.environ.get(MULTIPROCESS_VARIABLE)
    with tempfile.TemporaryDirectory(prefix="sluicegate-metrics-") as directory:
        os.environ[MULTIPROCESS_VARIABLE] = directory
        try:
            hypercorn_run(hconfig)
        finally:
            if previous is None:
                del os.environ[MULTIPROCESS_VARIABLE]
            else:
                os.environ[MULTIPROCESS_VARIABLE] = previous
