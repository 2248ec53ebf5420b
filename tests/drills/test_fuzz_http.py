"""Drill: a fuzz of the proxy's HTTP face with generated JSON bodies.

Bodies mix the Responses API's own field names (with values of any JSON type, right or wrong)
with unknown names, sometimes compressed, sometimes not JSON at all. The only answers allowed
are a 2xx or a 4xx OpenAI error envelope: never a 5xx. And nothing is lost: every request the
upstream saw is a response in the event store.
"""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate._gateway._params import RESPONSES_PARAMETERS
from sluicegate.store import SpendFilter

from ..test_proxy import running

#: Bodies sent per example, and examples: one proxy per example keeps the run short.
BODIES_PER_EXAMPLE = 40
EXAMPLES = 10

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_names = st.sampled_from(sorted(RESPONSES_PARAMETERS)) | st.text(min_size=1, max_size=12)
_model = st.sampled_from(["gpt-test", "other", "nope"]) | st.text(max_size=10) | _json


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["object", "object", "object", "raw", "compressed"]))
    if kind == "raw":
        return draw(st.binary(max_size=64)), {"content-type": "application/json"}
    fields: dict[str, Any] = draw(st.dictionaries(_names, _json, max_size=4))
    if draw(st.booleans()):
        fields["model"] = draw(_model)
    if draw(st.booleans()):
        fields["input"] = draw(st.text(max_size=30) | _json)
    fields.pop("stream", None)  # streamed answers are the stream drills'; here, JSON answers
    fields.pop("background", None)
    body = orjson.dumps(fields)
    headers = {"content-type": "application/json"}
    if kind == "compressed":
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    return body, headers


@settings(
    max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.data())
async def test_generated_bodies_get_a_2xx_or_a_4xx_envelope_and_every_upstream_call_is_recorded(
    data: st.DataObject,
) -> None:
    async with running() as proxy:
        answered: list[int] = []
        async with proxy.http() as http:
            for _ in range(BODIES_PER_EXAMPLE):
                body, headers = data.draw(bodies())
                answer = await http.post("/v1/responses", content=body, headers=headers)
                status = answer.status_code
                answered.append(status)
                assert status < 500, (body[:200], answer.text[:300])
                if status >= 400:
                    error = answer.json()["error"]
                    assert {"message", "type", "param", "code"} <= set(error), error
        gateway = proxy.app.gateway
        assert gateway is not None
        rows = await gateway.store.spend_logs(SpendFilter(), limit=10_000)
        assert len(rows) == proxy.fake.statistics().requests
        assert sum(200 <= s < 300 for s in answered) <= len(rows)
