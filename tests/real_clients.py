"""The proxy as real clients meet it, for ``tests/test_real_clients_*.py``: ``sluicegate serve``'s
ASGI app on a loopback port, in front of two built-in fakes that are two different accounts
(two instances, two API keys), so reasoning state issued by one is refused by the other.

Model groups:

- ``solo``: one deployment, on account A;
- ``pair``: two deployments, one on each account, routed by ``simple-shuffle``: a conversation
  that carries provider state must stay with the account that issued it.

Both name ``gpt-5.4`` upstream, a reasoning model to the fake: requests with tools, ``include``,
a ``text.format`` or ``reasoning`` get a reasoning item first, as from the real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs

from sluicegate.codecs.ids import IdCodec
from sluicegate.fake import FakeUpstream, RecordedRequest, open_fake_upstream
from sluicegate.server import build_app

from .conftest import MEMORY_STORE
from .proxy_server import serving

__all__ = ["ACCOUNT_KEYS", "MASTER", "Stack", "account_of", "running_stack"]

MASTER = "sk-master-real-clients-0123456789"
SECRET = "real-clients-test"
#: The provider keys of the two accounts; each fake also checks that it is called with its own.
ACCOUNT_KEYS = {"a": "sk-account-a-0123456789", "b": "sk-account-b-0123456789"}
UPSTREAM_MODEL = "gpt-5.4"
_ACCOUNTS = {"solo-a": "a", "dep-a": "a", "dep-b": "b"}


@attrs.frozen(kw_only=True)
class Stack:
    """A proxy on loopback and the fake accounts behind it."""

    #: ``http://127.0.0.1:PORT`` (append ``/v1`` for an SDK's base URL).
    url: str
    #: The fake of each account: ``a`` (deployments ``solo-a``, ``dep-a``) and ``b`` (``dep-b``).
    fakes: dict[str, FakeUpstream]

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def creates(self, account: str | None = None) -> list[dict[str, Any]]:
        """The bodies of ``POST /responses`` that reached one account (or either), in order
        within each account."""
        fakes = [self.fakes[account]] if account else list(self.fakes.values())
        return [r.json() for fake in fakes for r in fake.requests if _is_create(r)]


def account_of(response_id: str) -> str:
    """The account (``a`` or ``b``) of the deployment a proxy ``resp_`` ID names."""
    return _ACCOUNTS[IdCodec.from_secret(SECRET).decode(response_id).deployment_id]


def _is_create(request: RecordedRequest) -> bool:
    return request.method == "POST" and request.path.endswith("/responses")


def _deployment(model_name: str, dep_id: str, fake: FakeUpstream, key: str) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "litellm_params": {
            "model": f"openai/{UPSTREAM_MODEL}",
            "api_base": fake.base_url,
            "api_key": key,
        },
        "model_info": {"id": dep_id},
    }


def _config(a: FakeUpstream, b: FakeUpstream) -> dict[str, Any]:
    key_a, key_b = ACCOUNT_KEYS["a"], ACCOUNT_KEYS["b"]
    return {
        "model_list": [
            _deployment("solo", "solo-a", a, key_a),
            _deployment("pair", "dep-a", a, key_a),
            _deployment("pair", "dep-b", b, key_b),
        ],
        "router_settings": {"routing_strategy": "simple-shuffle"},
        "general_settings": {
            "master_key": MASTER,
            "response_id_secret": SECRET,
            "store": MEMORY_STORE,
            "graceful_shutdown_timeout": 2,
        },
    }


@asynccontextmanager
async def running_stack(*, tokens: int = 6, token_delay: float = 0.0) -> AsyncIterator[Stack]:
    """Two fake accounts and the proxy in front of them, for the ``async with`` body."""
    async with (
        open_fake_upstream(tokens=tokens, token_delay=token_delay, api_key=ACCOUNT_KEYS["a"]) as a,
        open_fake_upstream(tokens=tokens, token_delay=token_delay, api_key=ACCOUNT_KEYS["b"]) as b,
        serving(build_app(_config(a, b))) as url,
    ):
        yield Stack(url=url, fakes={"a": a, "b": b})
