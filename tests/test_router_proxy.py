"""The router through the proxy, with the official ``openai`` SDK: a session header
keeps a conversation on one deployment, a 429 with ``Retry-After`` cools its deployment while
the other serves, and ``/metrics`` shows each deployment's breaker. Two built-in fakes on
loopback are the two deployments of one group."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai

from sluicegate.codecs.ids import IdCodec
from sluicegate.fake import FakeUpstream, Fault, open_fake_upstream
from sluicegate.server import build_app

from .conftest import MEMORY_STORE
from .proxy_server import serving

MASTER = "sk-master-0123456789abcdef"
SECRET = "router-proxy-test"


def _config(a: FakeUpstream, b: FakeUpstream) -> dict[str, Any]:
    def deployment(fake: FakeUpstream, dep_id: str) -> dict[str, Any]:
        return {
            "model_name": "g",
            "litellm_params": {
                "model": "openai/gpt-5.4",
                "api_base": fake.base_url,
                "api_key": "k",
            },
            "model_info": {"id": dep_id},
        }

    return {
        "model_list": [deployment(a, "dep-a"), deployment(b, "dep-b")],
        "router_settings": {"session_affinity": True, "routing_strategy": "least-busy"},
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": SECRET,
            "store": MEMORY_STORE,
            "graceful_shutdown_timeout": 2,
        },
    }


@asynccontextmanager
async def running() -> AsyncIterator[tuple[str, FakeUpstream, FakeUpstream]]:
    async with (
        open_fake_upstream(tokens=4) as a,
        open_fake_upstream(tokens=4) as b,
        serving(build_app(_config(a, b))) as url,
    ):
        yield url, a, b


def _deployment_of(response_id: str) -> str:
    return IdCodec.from_secret(SECRET).decode(response_id).deployment_id


async def test_a_session_header_keeps_one_deployment_and_metrics_show_the_breakers() -> None:
    async with running() as (url, a, b):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=MASTER, max_retries=0)
        async with client:
            served = Counter[str]()
            for i in range(8):
                response = await client.responses.create(
                    model="g",
                    input=f"turn {i}",
                    extra_headers={"x-sluicegate-session": "conversation-1"},
                )
                served[_deployment_of(response.id)] += 1
            assert len(served) == 1 and sum(served.values()) == 8
            (kept,) = served
            kept_fake = a if kept == "dep-a" else b
            # The session's deployment says 429, come back in 30 s: the request is served by
            # the other one at once, and the session moves with it.
            kept_fake.script(Fault.status(429, headers={"retry-after": "30"}))
            response = await client.responses.create(
                model="g", input="again", extra_headers={"x-sluicegate-session": "conversation-1"}
            )
            moved = _deployment_of(response.id)
            assert moved != kept
            async with httpx.AsyncClient(base_url=url) as http:
                text = (await http.get("/metrics")).text
        assert "sluicegate_deployment_cooldowns 1" in text
        assert f'sluicegate_deployment_state{{deployment="{kept}",model_group="g"}} 2' in text
        assert f'sluicegate_deployment_state{{deployment="{moved}",model_group="g"}} 0' in text
        assert f'sluicegate_deployment_failures{{deployment="{kept}",model_group="g"}} 1' in text
        remaining = next(
            line
            for line in text.splitlines()
            if line.startswith("sluicegate_deployment_cooldown_remaining_seconds")
            and f'"{kept}"' in line
        )
        assert 25 < float(remaining.rsplit(" ", 1)[1]) <= 30


async def test_the_session_is_not_a_body_field() -> None:
    async with (
        running() as (url, _, _),
        httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {MASTER}"}) as http,
    ):
        answer = await http.post("/v1/responses", json={"model": "g", "input": "x", "session": "s"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "session"
