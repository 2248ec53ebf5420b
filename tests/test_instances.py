"""Many instances: ``sluicegate serve`` processes on one PostgreSQL database and one Redis, each
as good as the other (docs/design.md §6.9).

Every test runs real servers (tests/servers.py: a private PostgreSQL cluster and Redis on
loopback) and real ``sluicegate serve`` processes (tests/serve_process.py), and talks to them
over HTTP: what one instance made, the other answers for (GET, continue, input items, delete,
cancel, resume a stream); a key's limits are counted across both; and the faults — an instance
killed mid-burst, Redis stopped mid-load, PostgreSQL restarted — end as promised. Waits are
readiness and outcomes polled under a bound, never a timing assertion.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from sluicegate.store import RECOVERY_ERROR

from .serve_process import Server, create, made_here_answered_there, serving
from .servers import RedisServer, start_postgres, start_redis

MASTER = "sk-master-instances-0123456789"
AUTH = {"authorization": f"Bearer {MASTER}"}
SECRET = "one-secret-for-every-instance"


def _config(
    tmp_path: Path,
    name: str,
    *,
    database_url: str,
    redis_url: str | None = None,
    secret: str | None = SECRET,
) -> Path:
    """An instance's configuration: the built-in fake (a quick group and a slow one), a short
    lease so a dead instance is noticed within seconds, the shared database and Redis."""
    lines = [
        "model_list:",
        "  - model_name: demo",
        "    litellm_params: {model: fake/demo, fake_tokens: 5}",
        "    model_info: {id: fake-demo-1}",
        "  - model_name: slow",
        "    litellm_params: {model: fake/slow, fake_tokens: 3000, fake_token_delay: 0.01}",
        "  - model_name: paced",
        "    litellm_params: {model: fake/paced, fake_tokens: 60, fake_token_delay: 0.02}",
        "general_settings:",
        f"  master_key: {MASTER}",
        f"  database_url: {database_url}",
        "  store: {instance_lease: 5, heartbeat_interval: 0.5}",
    ]
    if secret is not None:
        lines.append(f"  response_id_secret: {secret}")
    if redis_url is not None:
        # A patient Redis timeout: on a busy machine a slow answer must not count as Redis
        # being down (which would make the limits per instance); a stopped Redis refuses at
        # once anyway.
        lines += ["router_settings:", f"  redis_url: {redis_url}", "  redis_timeout: 10"]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _environ() -> dict[str, str]:
    # Nothing of this process's own secret or database leaks into the servers.
    env = dict(os.environ)
    for name in ("SLUICEGATE_RESPONSE_ID_SECRET", "SLUICEGATE_RESPONSE_ID_SECRET_ORIGIN"):
        env.pop(name, None)
    env.pop("DATABASE_URL", None)
    return env


@asynccontextmanager
async def _instances(
    tmp_path: Path, count: int, **settings: Any
) -> AsyncIterator[list[tuple[Server, httpx.AsyncClient]]]:
    """``count`` instances on one configuration, each with an admin client."""
    async with AsyncExitStack() as stack:
        running = []
        for i in range(count):
            config = _config(tmp_path, f"instance-{i}", **settings)
            log = tmp_path / f"instance-{i}.log"
            server = await stack.enter_async_context(
                serving(config, workers=1, log=log, env=_environ())
            )
            client = await stack.enter_async_context(server.client(AUTH))
            running.append((server, client))
        yield running


async def _status(http: httpx.AsyncClient, response_id: str) -> str:
    got = await http.get(f"/v1/responses/{response_id}")
    assert got.status_code == 200, got.text
    status: str = got.json()["status"]
    return status


def _events(text: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def test_what_one_instance_made_the_other_answers_for(
    tmp_path: Path, postgres_url: str
) -> None:
    """Create on A; on B: GET, input items, continue with ``previous_response_id``, delete
    (then A says 404 too); a background stream started on A resumed on B with
    ``?stream=true&starting_after=N``, its events following as A commits them, gapless to
    ``response.completed``; and a background response running on A cancelled through B."""
    async with _instances(tmp_path, 2, database_url=postgres_url) as [(_, one), (_, two)]:
        made = await made_here_answered_there(one, two)

        # A streamed background response, started on A and left after a few events ...
        body = {"model": "paced", "input": "count", "background": True, "stream": True}
        async with one.stream("POST", "/v1/responses", json=body) as answer:
            seen: list[dict[str, Any]] = []
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    seen.append(orjson.loads(line[len("data: ") :]))
                if len(seen) == 4:
                    break
        job_id = seen[0]["response"]["id"]
        after = seen[-1]["sequence_number"]
        # ... is followed through B, from where the client left it, to its end.
        resumed = await two.get(
            f"/v1/responses/{job_id}", params={"stream": "true", "starting_after": str(after)}
        )
        assert resumed.status_code == 200, resumed.text
        events = _events(resumed.text)
        numbers = [e["sequence_number"] for e in events]
        assert numbers == list(range(after + 1, after + 1 + len(numbers)))
        assert events[-1]["type"] == "response.completed"
        assert await _status(one, job_id) == "completed"

        long_job = await create(one, model="slow", input="long", background=True)
        cancelled = await two.post(f"/v1/responses/{long_job['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled", cancelled.text
        for http in (one, two):
            assert await _status(http, long_job["id"]) == "cancelled"

        assert (await two.delete(f"/v1/responses/{made['id']}")).status_code == 200
        assert (await one.get(f"/v1/responses/{made['id']}")).status_code == 404


async def test_a_keys_limits_are_counted_across_instances(
    tmp_path: Path, postgres_url: str, redis_server: RedisServer
) -> None:
    """A key's rpm of N admits N requests in all across two instances sharing a Redis, not
    2N; a key deleted through A is refused by B soon after (its cache holds a key one second
    at most)."""
    async with _instances(
        tmp_path, 2, database_url=postgres_url, redis_url=redis_server.url
    ) as instances:
        (_, one), (_, two) = instances
        minted = await one.post("/key/generate", json={"rpm_limit": 4, "key_alias": "shared"})
        assert minted.status_code == 200, minted.text
        key = minted.json()["key"]
        statuses = []
        for i in range(6):
            http = (one, two)[i % 2]
            answer = await http.post(
                "/v1/responses",
                json={"model": "demo", "input": f"n{i}"},
                headers={"authorization": f"Bearer {key}"},
            )
            statuses.append(answer.status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]

        other = (await one.post("/key/generate", json={"key_alias": "deleted"})).json()["key"]
        use = {"authorization": f"Bearer {other}"}
        body = {"model": "demo", "input": "hi"}
        assert (await two.post("/v1/responses", json=body, headers=use)).status_code == 200
        deleted = await one.post("/key/delete", json={"keys": [other]})
        assert deleted.status_code == 200, deleted.text
        with trio.fail_after(20):
            while (await two.post("/v1/responses", json=body, headers=use)).status_code == 200:  # noqa: ASYNC110
                await trio.sleep(0.05)  # B's cached copy expires within a second
        assert (await two.post("/v1/responses", json=body, headers=use)).status_code == 401


async def test_an_instance_killed_mid_burst_loses_nothing_acknowledged(
    tmp_path: Path, postgres_url: str
) -> None:
    """``kill -9`` one instance while it streams: the other keeps serving, the dead one's
    unfinished responses end ``failed`` once its lease ran out (5 s here), and every response
    it acknowledged is there, through the other."""
    async with _instances(tmp_path, 2, database_url=postgres_url) as instances:
        (victim, one), (_, two) = instances
        acknowledged = [await create(one, model="demo", input=f"kept {i}") for i in range(5)]
        cut: list[str] = []
        async with trio.open_nursery() as nursery:

            async def stream_until_killed() -> None:
                body = {"model": "slow", "input": "long", "stream": True}
                try:
                    # A client (a connection) of its own: the four streams run at once.
                    async with (
                        victim.client(AUTH) as own,
                        own.stream("POST", "/v1/responses", json=body) as answer,
                    ):
                        async for line in answer.aiter_lines():
                            if line.startswith("data: ") and not cut_done.is_set():
                                event = orjson.loads(line[len("data: ") :])
                                if event["type"] == "response.created":
                                    cut.append(event["response"]["id"])
                                    if len(cut) == 4:
                                        cut_done.set()
                except httpx.HTTPError:
                    pass  # the instance died under it

            cut_done = trio.Event()
            for _ in range(4):
                nursery.start_soon(stream_until_killed)
            with trio.fail_after(30):
                await cut_done.wait()
                for rid in cut:  # each accepted and recorded (B reads it from the store)
                    while (await two.get(f"/v1/responses/{rid}")).status_code != 200:  # noqa: ASYNC110
                        await trio.sleep(0.05)
            victim.process.kill()
            await victim.process.wait()
        assert (await create(two, model="demo", input="still here"))["status"] == "completed"
        with trio.fail_after(60):
            for rid in cut:
                while await _status(two, rid) != "failed":  # noqa: ASYNC110
                    await trio.sleep(0.1)  # B's recovery ends them when the lease runs out
        for rid in cut:
            assert (await two.get(f"/v1/responses/{rid}")).json()["error"] == RECOVERY_ERROR
        for made in acknowledged:
            got = await two.get(f"/v1/responses/{made['id']}")
            assert got.status_code == 200 and got.json()["output"] == made["output"]


async def test_redis_stopped_mid_load_serves_on_and_limits_converge(
    tmp_path: Path, postgres_url: str
) -> None:
    """Redis stopped under load: no request fails (limits fall back to each instance's own
    count); started again: both instances count in it again, so a new key's rpm of 3 admits 3
    requests in all."""
    with start_redis() as redis:
        async with _instances(
            tmp_path, 2, database_url=postgres_url, redis_url=redis.url
        ) as instances:
            (_, one), (_, two) = instances
            minted = await one.post("/key/generate", json={"rpm_limit": 1000})
            use = {"authorization": f"Bearer {minted.json()['key']}"}
            body = {"model": "demo", "input": "load"}
            statuses: list[int] = []
            for i in range(30):
                if i == 10:
                    redis.stop()
                if i == 20:
                    redis.start()
                answer = await (one, two)[i % 2].post("/v1/responses", json=body, headers=use)
                statuses.append(answer.status_code)
            assert statuses == [200] * 30
            for _, http in instances:
                with trio.fail_after(30):
                    while (  # noqa: ASYNC110
                        b"sluicegate_shared_limits_up 1.0"
                        not in (await http.get("/metrics")).content
                    ):
                        await trio.sleep(0.1)  # its probe finds Redis again
            fresh = (await one.post("/key/generate", json={"rpm_limit": 3})).json()["key"]
            use = {"authorization": f"Bearer {fresh}"}
            answers = [
                (await (one, two)[i % 2].post("/v1/responses", json=body, headers=use)).status_code
                for i in range(5)
            ]
            assert answers == [200, 200, 200, 429, 429]


async def test_postgres_restarted_fails_fast_with_503_then_recovers(tmp_path: Path) -> None:
    """PostgreSQL stopped: a request is refused at once with a 503 that says the store is
    unavailable (never a hang, never a 500); started again: the same instance serves again,
    without a restart."""
    with start_postgres() as database:
        url = database.create_database()
        async with _instances(tmp_path, 1, database_url=url) as [(_, http)]:
            await create(http, model="demo", input="before")
            database.stop("fast")
            with trio.fail_after(30):
                refused = await http.post("/v1/responses", json={"model": "demo", "input": "x"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "store_unavailable"
            database.start()
            with trio.fail_after(60):
                while True:
                    answer = await http.post(
                        "/v1/responses", json={"model": "demo", "input": "after"}
                    )
                    if answer.status_code == 200:
                        break
                    assert answer.status_code == 503, answer.text
                    await trio.sleep(0.1)
            assert answer.json()["status"] == "completed"


async def test_an_instance_without_the_shared_secret_refuses_to_start(
    tmp_path: Path, postgres_url: str
) -> None:
    """An instance whose response IDs the others could not read (no ``response_id_secret``,
    or another one) refuses to start while they run, and says why."""
    async with _instances(tmp_path, 1, database_url=postgres_url):
        for name, secret in (("unset", None), ("other", "another-secret")):
            config = _config(tmp_path, name, database_url=postgres_url, secret=secret)
            with trio.fail_after(60):
                done = await trio.run_process(
                    [sys.executable, "-m", "sluicegate", "serve", "--config", str(config)],
                    env=_environ(),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            assert done.returncode == 1
            # One line that says why, not a traceback.
            [line] = [
                line for line in done.stderr.decode().splitlines() if "could not start" in line
            ]
            assert "response_id_secret" in line and "another sluicegate instance" in line
            assert b"Traceback" not in done.stderr, done.stderr


async def test_migrate_brings_a_database_to_this_schema_and_says_so(
    tmp_path: Path, postgres_url: str
) -> None:
    """``sluicegate migrate`` applies the pending migrations of the database ``DATABASE_URL``
    (or the config's ``database_url``) names, once; without a database it says what to set."""
    from sluicegate.store import POSTGRES_SCHEMA_VERSION

    async def migrate(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(60):
            return await trio.run_process(
                [sys.executable, "-m", "sluicegate", "migrate", *args],
                env={**_environ(), **env},
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    first = await migrate(DATABASE_URL=postgres_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().strip() == (
        "sluicegate: migrated the PostgreSQL store from schema version 0 to "
        f"{POSTGRES_SCHEMA_VERSION}"
    )
    config = _config(tmp_path, "migrate", database_url=postgres_url)
    again = await migrate("--config", str(config))
    assert again.returncode == 0, again.stderr
    assert b"nothing to do" in again.stdout
    missing = await migrate()
    assert missing.returncode == 1
    assert b"general_settings.database_url" in missing.stderr
