"""``sluicegate serve`` as a real process for the tests: started with ``--port 0`` (the server
binds a free port itself, so no port is picked and released beforehand), found at the address
its log names once every worker listens, awaited by polling its readiness, and ended at the
end of the block (SIGTERM, then SIGKILL past a bound)."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

__all__ = ["Server", "create", "made_here_answered_there", "serving"]

_BOUND = re.compile(rb"Running on (http://\S+)")


@attrs.define(eq=False)
class Server:
    process: trio.Process
    url: str
    #: Everything the server wrote (stdout and stderr).
    log: Path

    def client(self, headers: Mapping[str, str] | None = None) -> httpx.AsyncClient:
        """A client on one connection: it stays with the worker that accepted it."""
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return httpx.AsyncClient(
            base_url=self.url, headers=dict(headers or {}), limits=limits, timeout=30
        )


def _bound(log: Path) -> list[bytes]:
    """The addresses the server's workers say they listen on, so far."""
    return _BOUND.findall(log.read_bytes())


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


@asynccontextmanager
async def serving(
    config: Path, *, workers: int, log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[Server]:
    """Run ``sluicegate serve --config config --workers N`` (``env``: its whole environment;
    None: this process's) until the block ends."""
    command = [sys.executable, "-m", "sluicegate", "serve", "--config", str(config)]
    command += ["--port", "0", "--workers", str(workers)]
    environ = None if env is None else dict(env)
    with log.open("wb") as output:
        process = await trio.lowlevel.open_process(
            command, stdout=output, stderr=output, env=environ
        )
    try:
        with trio.fail_after(60):
            while len(bound := _bound(log)) < workers:
                assert process.poll() is None, _text(log)
                await trio.sleep(0.05)  # another process is starting: its log says when
            url = bound[0].decode()
            async with httpx.AsyncClient(base_url=url) as http:
                while (await http.get("/health/readiness")).status_code != 200:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # the workers' stores open in their own time
        yield Server(process, url, log)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(20):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def create(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """``POST /v1/responses`` through a server, which must answer 200; the response."""
    answer = await http.post("/v1/responses", json=body)
    assert answer.status_code == 200, answer.text
    made: dict[str, Any] = answer.json()
    return made


async def made_here_answered_there(
    one: httpx.AsyncClient, two: httpx.AsyncClient
) -> dict[str, Any]:
    """A response of the model group ``demo`` created through ``one``, then read through
    ``two`` (GET, its input items) and continued there with ``previous_response_id``: what
    servers sharing a store and a secret must answer for each other. The response."""
    made = await create(one, model="demo", input="hello")
    got = await two.get(f"/v1/responses/{made['id']}")
    assert got.status_code == 200, got.text
    assert got.json()["output"] == made["output"]
    items = await two.get(f"/v1/responses/{made['id']}/input_items")
    assert [i["content"][0]["text"] for i in items.json()["data"]] == ["hello"]
    follow = await create(two, model="demo", input="more", previous_response_id=made["id"])
    assert (follow["status"], follow["previous_response_id"]) == ("completed", made["id"])
    return made
