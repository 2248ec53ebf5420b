"""The ``sluicegate`` command.

``sluicegate quickstart`` runs the gateway on its embedded default configuration — the built-in
fake provider, so no API key is needed — and shows a streamed answer, a follow-up turn through
``previous_response_id``, a retrieval by ID, a background response polled to its end, and what
the event store (``sluicegate.db`` in the working directory) recorded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import trio

from ._gateway import open_gateway
from ._types import DeltaEvent, Response, ResponseStatus
from .errors import ConfigError, SluicegateError

__all__ = ["DEFAULT_CONFIG", "main"]

#: The embedded default: one model group served by the built-in fake upstream on loopback.
DEFAULT_CONFIG: dict[str, Any] = {
    "model_list": [
        {
            "model_name": "demo",
            "litellm_params": {"model": "fake/demo", "fake_tokens": 24, "fake_token_delay": 0.02},
            "model_info": {"id": "fake-demo-1"},
        }
    ],
    "general_settings": {"include_cost_in_streaming_usage": True},
}


async def _quickstart(config: Any, model: str, text: str) -> None:
    async with open_gateway(config) as gw:
        print(f"sluicegate: model groups {gw.model_names}; streaming a response from {model!r}")
        async with gw.stream(model=model, input=text) as events:
            async for event in events:
                if isinstance(event, DeltaEvent) and event.type == "response.output_text.delta":
                    print(event.delta, end="", flush=True)
            first = events.final_response
        print()
        if first is None:  # the stream ended as failed before any terminal; cannot happen
            raise SystemExit("sluicegate: the stream ended without a response")
        usage = first.usage
        cost = "n/a" if usage is None or usage.cost is None else f"{usage.cost:.6f}"
        print(f"  id      {first.id}")
        print(f"  status  {_status(first)}")
        if usage is not None:
            print(f"  usage   {usage.input_tokens} in, {usage.output_tokens} out, {cost} USD")
        follow = await gw.responses(model=model, input="And then?", previous_response_id=first.id)
        print(f"follow-up via previous_response_id: {follow.output_text!r}")
        again = await gw.get_response(first.id)
        print(f"retrieved {again.id[:24]}... by ID: status {_status(again)}")
        job = await gw.responses(model=model, input="In the background, please.", background=True)
        print(f"background {job.id[:24]}...: {_status(job)}", end="", flush=True)
        # Polling by ID, as a client of a background response does.
        while not (job := await gw.get_response(job.id)).status.is_terminal:  # type: ignore[union-attr]  # noqa: ASYNC110
            await trio.sleep(0.1)
        print(f" -> {_status(job)}: {job.output_text[:40]!r}...")
        for total in await gw.spend_totals(group_by="model"):
            print(
                f"event store ({gw.config.general_settings.store.path}): {total.requests} "
                f"responses of {total.key!r} recorded, {total.cost:.6f} USD"
            )
        stats = gw.statistics()
        print(
            f"accounted: {stats.requests_total} requests, {stats.input_tokens} input and "
            f"{stats.output_tokens} output tokens, {stats.cost:.6f} USD"
        )


def _status(response: Response) -> str:
    status = response.status
    return status.value if isinstance(status, ResponseStatus) else status


def _migrate(config_path: str | None) -> str:
    """``sluicegate migrate``: what it did, as one line."""
    from .config import load_config
    from .store import migrate_postgres

    cfg = load_config(config_path, database_url_variable=True)
    url = cfg.general_settings.database_url
    if url is None:
        raise ConfigError(
            "no PostgreSQL database: set general_settings.database_url or DATABASE_URL "
            "(a SQLite store migrates when it is opened)",
            path="general_settings.database_url",
        )
    before, after = migrate_postgres(url.reveal())
    if before == after:
        return f"sluicegate: the PostgreSQL store is at schema version {after}; nothing to do"
    return f"sluicegate: migrated the PostgreSQL store from schema version {before} to {after}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sluicegate`` command; returns the exit status.

    A rejected configuration is one line on stderr naming the setting
    (``sluicegate: general_settings.max_request_body_bytes: must be at least 1024``), status 1.
    """
    # The help is plain text for a terminal: the module docstring is markup for the API reference.
    parser = argparse.ArgumentParser(
        prog="sluicegate",
        description="A gateway for the OpenAI Responses API, on trio.",
        epilog="Run 'sluicegate COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    quick = commands.add_parser(
        "quickstart",
        help="run a demo against the built-in fake provider (no API key needed)",
        description=(
            "Run the gateway on its embedded configuration (the built-in fake provider, so no "
            "API key is needed) and show a streamed answer, a follow-up turn through "
            "previous_response_id, a retrieval by ID, a background response polled to its "
            "end, and what the event store (sluicegate.db in the working directory) recorded."
        ),
    )
    quick.add_argument("--config", help="a YAML config (default: the embedded fake-provider one)")
    quick.add_argument("--model", default="demo", help="the model group to call (default: demo)")
    quick.add_argument("--input", default="Say hello to the sluice gate.", help="the prompt")
    serve = commands.add_parser(
        "serve",
        help="run the HTTP proxy (OpenAI-compatible: point an SDK's base_url at it)",
        description=(
            "Run the HTTP proxy. It speaks the OpenAI API: point an SDK's base_url at "
            "http://HOST:PORT/v1. SIGINT or SIGTERM stops it gracefully: requests in flight get "
            "general_settings.graceful_shutdown_timeout seconds to finish."
        ),
    )
    serve.add_argument("--config", required=True, help="the YAML config (see examples/demo.yaml)")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=int, default=4000, help="the port (default 4000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    migrate = commands.add_parser(
        "migrate",
        help="bring the PostgreSQL store's schema up to this version (before a rolling upgrade)",
        description=(
            "Apply the pending schema migrations of the PostgreSQL store named by the config's "
            "general_settings.database_url (or the DATABASE_URL variable), and say which version "
            "it is at. Instances apply them too when they start; running this first lets a new "
            "version's instances start without waiting on each other. SQLite stores migrate "
            "when they are opened."
        ),
    )
    migrate.add_argument("--config", help="the YAML config (default: DATABASE_URL alone)")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from .server._http1 import StartupError
            from .server._serve import run

            try:
                run(args.config, host=args.host, port=args.port, workers=args.workers)
            except StartupError as exc:  # e.g. its store refused to open: the reason, no trace
                print(f"sluicegate: the server could not start: {exc}", file=sys.stderr)
                return 1
        elif args.command == "migrate":
            print(_migrate(args.config))
        else:
            trio.run(_quickstart, args.config or DEFAULT_CONFIG, args.model, args.input)
    except ConfigError as exc:  # its message names the setting; an HTTP status means nothing here
        print(f"sluicegate: {exc.message}", file=sys.stderr)
        return 1
    except SluicegateError as exc:
        print(f"sluicegate: {exc.status_code} {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
