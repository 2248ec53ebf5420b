"""``sluicegate serve`` as real processes: workers that answer for each other, and restarts.

What one worker made, the others answer for: response IDs (one secret for all the workers of a
server), the built-in fake's responses (answered from the shared store), and cancels (recorded
before they are acknowledged). The workers are two serving processes given the secret ``serve``
hands its workers and one store file, so which one a client reaches is the test's choice, not
the kernel's; that ``serve`` hands its workers one secret is tested on its own. A restart finds
what it made before, and a response cut by a crash reads as the store ended it. Each server
runs with ``--port 0`` and is found at the address its log names, then awaited by polling its
readiness; every process is ended (and waited for) within a bound.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import trio

from sluicegate._gateway import SECRET_ORIGIN_VARIABLE, SECRET_VARIABLE
from sluicegate.fake import open_fake_upstream
from sluicegate.server._serve import run
from sluicegate.store import RECOVERY_ERROR

from .serve_process import create, made_here_answered_there, serving

MASTER = "sk-master-workers-0123456789"
AUTH = {"authorization": f"Bearer {MASTER}"}


def _select(db: Path, response_id: str) -> dict[str, Any] | None:
    """A response's row as the shared store holds it (read-only, beside the servers)."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        found = connection.execute("SELECT * FROM responses WHERE id = ?", (response_id,))
        row = found.fetchone()
    finally:
        connection.close()
    return None if row is None else dict(row)


def _exists(db: Path, response_id: str) -> bool:
    return _select(db, response_id) is not None


def _row(db: Path, response_id: str) -> dict[str, Any]:
    row = _select(db, response_id)
    assert row is not None, response_id
    return row


def test_serve_hands_every_worker_one_generated_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: with no ``response_id_secret``, each worker minted IDs with its own random
    secret (GET through the other worker: a 404). ``run`` now makes one before it starts the
    workers, in the variable every worker reads, and says that it did."""
    config = tmp_path / "demo.yaml"
    config.write_text(
        "model_list:\n  - model_name: demo\n    litellm_params: {model: fake/demo}\n"
        f"general_settings:\n  master_key: {MASTER}\n  store: {{path: ':memory:'}}\n"
    )
    # Recorded first, so that whatever run() puts in the environment is undone after the test.
    for name in (SECRET_VARIABLE, SECRET_ORIGIN_VARIABLE, "SLUICEGATE_CONFIG"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    started: list[tuple[int, str | None]] = []

    def hypercorn_run(hconfig: Any) -> int:
        started.append((hconfig.workers, os.environ.get(SECRET_VARIABLE)))
        return 0

    def lean_workers(config_path: str, host: str, port: int, workers: int) -> None:
        started.append((workers, os.environ.get(SECRET_VARIABLE)))

    # Where run() hands over to the workers, whichever server starts them.
    monkeypatch.setattr("hypercorn.run.run", hypercorn_run)
    monkeypatch.setattr("sluicegate.server._serve._run_lean_workers", lean_workers)
    run(str(config), host="127.0.0.1", port=0, workers=2)
    ((workers, secret),) = started
    assert workers == 2 and secret and len(secret) >= 32
    assert "no general_settings.response_id_secret" in caplog.text
    # A configured secret is left alone (and nothing is said).
    monkeypatch.setenv(SECRET_VARIABLE, "configured")
    caplog.clear()
    run(str(config), host="127.0.0.1", port=0, workers=2)
    assert started[-1] == (2, "configured")
    assert "response_id_secret" not in caplog.text


async def test_processes_sharing_a_secret_and_a_store_answer_for_each_other(
    tmp_path: Path,
) -> None:
    """What one worker made, another answers for: two serving processes with the one secret
    ``serve`` hands its workers and one store file — each a worker, and which process a client
    reaches is the test's choice, not the kernel's. The built-in fake's responses are answered
    from the shared store; a cancel through the other process reads ``cancelled`` at once."""
    db = tmp_path / "shared.db"
    config = tmp_path / "demo.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: demo\n"
        "    litellm_params: {model: fake/demo, fake_tokens: 5}\n"
        "    model_info: {id: fake-demo-1}\n"
        "  - model_name: slow\n"
        "    litellm_params: {model: fake/slow, fake_tokens: 3000, fake_token_delay: 0.01}\n"
        "general_settings:\n"
        f"  master_key: {MASTER}\n"
        f"  store: {{path: {db}}}\n"
    )
    shared = {SECRET_VARIABLE: secrets.token_urlsafe(32)}
    async with (
        serving(config, workers=1, log=tmp_path / "one.log", env={**os.environ, **shared}) as first,
        serving(
            config, workers=1, log=tmp_path / "two.log", env={**os.environ, **shared}
        ) as second,
        first.client(AUTH) as one,
        second.client(AUTH) as two,
    ):
        made = await made_here_answered_there(one, two)

        job = await create(one, model="slow", input="long", background=True)
        cancelled = await two.post(f"/v1/responses/{job['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled", cancelled.text
        for http in (one, two):  # at once, through either process
            assert (await http.get(f"/v1/responses/{job['id']}")).json()["status"] == ("cancelled")
        with trio.fail_after(10):
            while _row(db, job["id"])["usage"] is None:  # noqa: ASYNC110
                await trio.sleep(0.05)  # the process running it stops it and bills it
        assert _row(db, job["id"])["status"] == "cancelled"

        assert (await two.delete(f"/v1/responses/{made['id']}")).status_code == 200
        assert (await one.get(f"/v1/responses/{made['id']}")).status_code == 404
    assert first.process.returncode == 0 and second.process.returncode == 0


async def test_a_restarted_server_finds_what_it_made_and_what_a_crash_cut(
    tmp_path: Path,
) -> None:
    """Regression: after a restart, the built-in fake's responses were a 404 (its new process
    knew none of them), and a stream cut by ``kill -9`` was ``failed`` in the spend row but
    ``completed`` on GET (read from the upstream, which had finished it)."""
    db = tmp_path / "restart.db"
    async with open_fake_upstream(tokens=2000, token_delay=0.01) as upstream:
        config = tmp_path / "restart.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: demo\n"
            "    litellm_params: {model: fake/demo, fake_tokens: 5}\n"
            "  - model_name: native\n"
            "    litellm_params:\n"
            "      model: openai/gpt-5.4\n"
            f"      api_base: {upstream.base_url}\n"
            "      api_key: sk-upstream\n"
            "general_settings:\n"
            f"  master_key: {MASTER}\n"
            "  response_id_secret: kept-across-restarts\n"
            f"  store: {{path: {db}}}\n"
        )
        async with (
            serving(config, workers=1, log=tmp_path / "first.log") as first,
            first.client(AUTH) as http,
        ):
            assert b"response_id_secret" not in first.log.read_bytes()
            made = await create(http, model="demo", input="hello")
            body = {"model": "native", "input": "a long answer", "stream": True}
            async with (
                http.stream("POST", "/v1/responses", json=body) as answer,
                # Held open: no hang-up before the kill. httpx annotates aiter_lines() as an
                # AsyncIterator; it is an async generator (aclose).
                aclosing(cast(AsyncGenerator[str, None], answer.aiter_lines())) as lines,
            ):
                cut_id = ""
                async for line in lines:
                    event = orjson.loads(line[len("data: ") :]) if line.startswith("data:") else {}
                    if event.get("type") == "response.created":
                        cut_id = event["response"]["id"]
                    elif event.get("type") == "response.output_text.delta":
                        break
                with trio.fail_after(10):
                    while not _exists(db, cut_id):  # noqa: ASYNC110
                        await trio.sleep(0.02)  # its acceptance is committed (within 50 ms)
                first.process.kill()  # kill -9, mid-stream
                await first.process.wait()
        async with (
            serving(config, workers=1, log=tmp_path / "second.log") as second,
            second.client(AUTH) as http,
        ):
            got = await http.get(f"/v1/responses/{made['id']}")
            assert got.status_code == 200, got.text
            assert got.json()["output"] == made["output"]
            follow = await create(http, model="demo", input="more", previous_response_id=made["id"])
            assert follow["status"] == "completed"
            crashed = (await http.get(f"/v1/responses/{cut_id}")).json()
            assert (crashed["status"], crashed["error"]) == ("failed", RECOVERY_ERROR)
            assert _row(db, cut_id)["status"] == "failed"
