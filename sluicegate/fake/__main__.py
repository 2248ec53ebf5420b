"""``python -m sluicegate.fake``: serve a fake upstream until interrupted.

Prints exactly one line, ``listening on http://HOST:PORT/v1``, once bound; benchmarks start this
as a subprocess and read that line to learn the port.
"""

from __future__ import annotations

import argparse
import functools
import sys

import trio

from ._server import FakeUpstream


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sluicegate.fake",
        description="A fake OpenAI Responses API for the quickstart, tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=20, help="output words per answer")
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds before each streamed delta"
    )
    parser.add_argument("--api-key", default=None, help="require this key (default: none)")
    parser.add_argument(
        "--write-per-event",
        action="store_true",
        help="write each SSE event as its own chunk in a write of its own, as a real provider "
        "does (default: a stream in as few writes as the pacing allows)",
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    # Nobody can read recorded requests from outside, and benchmarks run long: don't keep them.
    upstream = FakeUpstream(
        tokens=args.tokens,
        token_delay=args.token_delay,
        api_key=args.api_key,
        record_requests=False,
        write_per_event=args.write_per_event,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(upstream.serve, host=args.host, port=args.port))
        print(f"listening on {upstream.base_url}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the fake upstream from the command line until Ctrl-C."""
    args = _parse(argv)
    try:
        trio.run(_serve, args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
