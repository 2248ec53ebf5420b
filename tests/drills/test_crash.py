"""Drill: the proxy killed (-9) in the middle of a burst, and stopped (SIGTERM) with streams
open. A real ``sluicegate`` process serves on loopback with a SQLite file; the upstream is the
built-in fake in this process (it outlives the proxy, as a provider would).

After a kill -9 and a restart on the same file: the database passes its integrity check,
every response whose terminal event a client received is retrievable as it ended, none is
left ``in_progress``, and every request the upstream saw is a recorded response (none lost;
the kill comes once the second wave's acceptances are committed, which the store does within
its 50 ms linger of a stream's first event: a kill inside that window loses the acceptance,
as the README's event store section says).
After a SIGTERM whose grace period runs out: every open stream ends with a typed terminal
event, and the store agrees.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import trio

from sluicegate.fake import FakeUpstream, open_fake_upstream

MASTER = "sk-drill-master-0123456789"

#: The proxy process: serves the config at argv[1] on a free loopback port and prints the URL
#: it bound (so the port is bound before anyone uses it).
_CHILD = textwrap.dedent(
    """
    import sys
    import trio
    from sluicegate.server import build_app, serve

    async def main(path):
        app = build_app(path)

        async def announce(task_status=trio.TASK_STATUS_IGNORED):
            await serve(app, host="127.0.0.1", port=0, task_status=task_status)

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(announce)
            print(binds[0], flush=True)

    trio.run(main, sys.argv[1])
    """
)


@attrs.define(eq=False)
class Child:
    process: trio.Process
    url: str


@asynccontextmanager
async def proxy_process(tmp_path: Path, fake: FakeUpstream, **general: Any) -> AsyncIterator[Child]:
    config = {
        "model_list": [
            {
                "model_name": "gpt-test",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": fake.base_url,
                    "api_key": "sk-provider",
                },
                "model_info": {"id": "fake-1"},
            }
        ],
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": "drill",
            "store": {"path": str(tmp_path / "drill.db")},
            **general,
        },
    }
    config_path = tmp_path / "config.json"
    config_path.write_bytes(orjson.dumps(config))
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    async with trio.open_nursery() as nursery:
        run = partial(
            trio.run_process,
            [sys.executable, str(script), str(config_path)],
            stdout=-1,
            stderr=-1,
            check=False,
        )
        process: trio.Process = await nursery.start(run)
        assert process.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the proxy exited before it served"
                line += chunk
        try:
            yield Child(process, line.decode().strip())
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def _http(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {MASTER}"}, timeout=60
    )


async def _stream_one(url: str, n: int, ended: dict[str, str], started: trio.Semaphore) -> None:
    """One streamed response; when its terminal event arrives, its ID and status are kept."""
    body = {"model": "gpt-test", "input": f"burst {n}", "stream": True}
    try:
        async with _http(url) as http, http.stream("POST", "/v1/responses", json=body) as answer:
            started.release()
            data = b""
            async for chunk in answer.aiter_bytes():
                data += chunk
            for frame in data.split(b"\n\n"):
                for line in frame.split(b"\n"):
                    if line.startswith(b"data: "):
                        event = orjson.loads(line[6:])
                        if event["type"] in ("response.completed", "response.failed"):
                            ended[event["response"]["id"]] = event["response"]["status"]
    except (httpx.HTTPError, trio.BrokenResourceError):
        started.release()  # cut by the kill: nothing acknowledged


def _unfinished(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM responses WHERE status IN ('queued', 'in_progress')"
        ).fetchone()
    return int(count)


def _integrity(db: Path) -> str:
    with closing(sqlite3.connect(db)) as conn:
        (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
    return str(verdict)


def _rows(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM responses").fetchone()
    return int(count)


BURST = 48


async def test_kill_9_mid_burst_then_restart_loses_nothing(tmp_path: Path) -> None:
    ended: dict[str, str] = {}
    async with open_fake_upstream(tokens=30, token_delay=0.01) as fake:
        async with proxy_process(tmp_path, fake) as child:
            started = trio.Semaphore(0)
            async with trio.open_nursery() as clients:
                # Two waves: the kill lands once the first has begun to end and the second
                # is on the wire (every stream of it still running: 30 tokens, 10 ms apart).
                with trio.fail_after(60):
                    for n in range(BURST // 2):
                        clients.start_soon(_stream_one, child.url, n, ended, started)
                    for _ in range(BURST // 2):
                        await started.acquire()
                    # Polled (bounded by the deadline): the clients record ends in a dict.
                    while len(ended) < 4:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    for n in range(BURST // 2, BURST):
                        clients.start_soon(_stream_one, child.url, n, ended, started)
                    for _ in range(BURST // 2):
                        await started.acquire()
                    # Their acceptance is committed within the store's linger (50 ms) of the
                    # first event; the kill comes once it is, mid-stream for all of them.
                    while _rows(tmp_path / "drill.db") < BURST:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                child.process.send_signal(signal.SIGKILL)
        db = tmp_path / "drill.db"
        assert _integrity(db) == "ok"
        async with proxy_process(tmp_path, fake) as child, _http(child.url) as http:
            # The restarted process recovered the dead one's unfinished responses.
            assert _unfinished(db) == 0
            for response_id, status in ended.items():
                answer = await http.get(f"/v1/responses/{response_id}")
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == status
            created = sum(r.method == "POST" for r in fake.requests)
            assert _rows(db) == created
    assert 0 < len(ended) < BURST


async def test_sigterm_with_open_streams_ends_each_with_a_typed_terminal_event(
    tmp_path: Path,
) -> None:
    ends: dict[str, str] = {}
    async with (
        open_fake_upstream(tokens=400, token_delay=0.05) as fake,
        proxy_process(tmp_path, fake, graceful_shutdown_timeout=0.5) as child,
    ):
        started = trio.Semaphore(0)
        async with trio.open_nursery() as clients:
            for n in range(4):
                clients.start_soon(_stream_one, child.url, n, ends, started)
            with trio.fail_after(60):
                for _ in range(4):
                    await started.acquire()
                while len(fake.requests) < 4:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            child.process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await child.process.wait()
    # Every stream got its end (the grace period ran out long before 400 tokens), typed.
    assert len(ends) == 4, ends
    assert set(ends.values()) <= {"failed", "incomplete"}
    db = tmp_path / "drill.db"
    assert _unfinished(db) == 0
    with closing(sqlite3.connect(db)) as conn:
        stored = dict(conn.execute("SELECT id, status FROM responses").fetchall())
    assert stored == ends
