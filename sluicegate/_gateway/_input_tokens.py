"""Input token counts (``POST /v1/responses/input_tokens``; docs/input-tokens.md).

Theory of operation. A count is a create that is never run: the caller's parameters go through
the create's own preparation (``Gateway._prepare``: validation, ``previous_response_id``,
replayed state), the request is routed as a create would be (its route plan: pins, affinity,
limits, retries and fallbacks), and the create request that deployment would be sent is built
by the connector's own builders, not streamed. Only then does the count part: that request is
turned into the provider's counting request (``codecs/input_tokens.py`` and the bridges'
``count_tokens_request``/``tokenize_request``), sent, and the number read back:

- a native upstream (OpenAI, Azure, the fake) gets the same body at
  ``…/responses/input_tokens`` and its answer is passed back;
- Anthropic counts at ``/v1/messages/count_tokens``, Gemini at ``:countTokens``, a vLLM server
  (``litellm_params.count_tokens: tokenize``) at ``/tokenize``; any other Chat Completions
  server has no way to count: a 400 ``unsupported_parameter`` before anything is sent.

So what a count counts is exactly what a create would send: the stored conversation a bridged
provider continues, the chain a native upstream continues by its raw ID (pinned to the
deployment that holds it), unsealed reasoning, the bridge's mapping of tools and instructions.

A count costs no tokens: nothing is recorded and no spend row is written. Each attempt is
reported to its deployment's health like a create's (load, rpm, failures that cool it), with
two differences: an upstream that has no counting endpoint (404, 405, 501) is no verdict on the
deployment (its creates may be fine), and a success is reported as no verdict either: a count's
few milliseconds would skew latency-based routing, and whether a cooling deployment serves
again is for a create to show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ..actors._connector import Connector
from ..actors._plan import RoutePlan
from ..codecs._registry import CHAT_PROVIDERS, bridge_codec
from ..codecs.input_tokens import (
    input_tokens_object,
    native_count_answer,
    native_count_request,
    read_count,
)
from ..codecs.openai_responses import UpstreamRequest, parse_error_response
from ..errors import (
    InvalidRequestError,
    SluicegateError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

if TYPE_CHECKING:
    from ..actors._connector import ErrorParser
    from ..config import Deployment
    from ..runtime._messages import PreparedCall, Routed
    from ._pipeline import Pipeline

__all__ = ["count_input_tokens", "count_params"]

#: Create parameters that are the gateway's and make no sense for a count: refused by name.
_NOT_FOR_COUNTS = ("stream", "background")

#: An upstream answering one of these to a count has no counting endpoint: no verdict on its
#: health, since its creates may be fine.
_NO_ENDPOINT = frozenset({404, 405, 501})

#: Reads the count out of a provider's answer.
_Reader = Callable[[bytes], dict[str, Any]]


def count_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The caller's count parameters, refusing the create parameters a count cannot have.

    Raises:
        InvalidRequestError: ``stream`` or ``background`` set (code ``unknown_parameter``).
    """
    for name in _NOT_FOR_COUNTS:
        if params.get(name):
            raise InvalidRequestError(
                f"Unknown parameter: '{name}'. Input token counts are answered at once, "
                "never streamed nor run in the background.",
                param=name,
                code="unknown_parameter",
            )
    return params


async def count_input_tokens(pipeline: Pipeline, call: PreparedCall) -> dict[str, Any]:
    """Count the input tokens of a prepared (never streamed) call where a create would go.

    Returns:
        ``{"object": "response.input_tokens", "input_tokens": N}`` (a native upstream's answer
        as it came).

    Raises:
        SluicegateError: what routing or the provider said (after the retries and fallbacks a
            create would get); InvalidRequestError for a provider that cannot count.
    """
    plan = RoutePlan(pipeline.router, call)
    connector = pipeline.connector
    with trio.move_on_after(call.timeout if call.timeout is not None else math.inf):
        routed = await plan.first()
        while True:
            try:
                return await _attempt(connector, routed)
            except SluicegateError as exc:
                routed = await plan.next(exc)  # raises when nothing is left
    raise UpstreamTimeoutError(
        f"the request took longer than its total timeout of {call.timeout} s"
    )


async def _attempt(connector: Connector, routed: Routed) -> dict[str, Any]:
    """One attempt at ``routed``'s deployment, reported to its health (module docstring)."""
    call, deployment, plan = routed.call, routed.deployment, routed.plan
    request, parse_error, read = await _count_request(connector, call, deployment)
    health = plan.health(deployment) if plan is not None else None
    now = trio.current_time
    if health is not None:
        health.started(now())
    try:
        timeouts = deployment.timeouts
        body: bytes | None = None
        with trio.move_on_after(timeouts.total if timeouts.total is not None else math.inf):
            _, body = await connector.open(
                request, timeouts, 0, read_body=True, parse_error=parse_error
            )
        if body is None:
            raise UpstreamTimeoutError(f"the upstream did not answer within {timeouts.total} s")
        answer = read(body)
    except UpstreamError as exc:
        if health is not None:
            if isinstance(exc, UpstreamStatusError) and exc.status_code in _NO_ENDPOINT:
                health.answered(now(), ttfb=None, total=None)
            else:
                health.failed(now(), exc)
        raise
    except BaseException:
        if health is not None:  # cancelled, or a bug: no verdict on the deployment
            health.answered(now(), ttfb=None, total=None)
        raise
    if health is not None:
        health.answered(now(), ttfb=None, total=None)  # no latency sample (module docstring)
    return answer


async def _count_request(
    connector: Connector, call: PreparedCall, deployment: Deployment
) -> tuple[UpstreamRequest, ErrorParser, _Reader]:
    """The counting request for ``call`` at ``deployment``: the create request the connector
    would send (its own builders, so the mapping is the create's), turned into the provider's
    count; its error parser; and how its answer is read.

    Raises:
        InvalidRequestError: what the provider cannot take, as for a create; a Chat Completions
            server with no way to count (code ``unsupported_parameter``).
    """
    codec = bridge_codec(deployment.provider)
    if codec is None:
        # The connector's own builders (not a copy of them): the raw previous_response_id, a
        # conversation the gateway holds as portable input, the caller's extra body and headers.
        create = Connector.native_request(call, deployment)
        return native_count_request(create), parse_error_response, native_count_answer
    provider = deployment.provider
    if provider in CHAT_PROVIDERS and deployment.count_tokens is None:
        raise InvalidRequestError(
            f"Input token counts are not available for model '{call.model}': its provider "
            f"({provider}, a Chat Completions server) has no endpoint that counts tokens. A "
            "vLLM server counts with 'litellm_params.count_tokens: tokenize'.",
            param="model",
            code="unsupported_parameter",
        )
    # The create's mapping, media inlining and history included.
    built = await connector.bridged_request(codec, call, deployment)
    if provider == "anthropic":
        from ..codecs.anthropic import count_tokens_request

        request, field = count_tokens_request(built.request), "input_tokens"
    elif provider == "gemini":
        from ..codecs.gemini import count_tokens_request as gemini_count

        request, field = gemini_count(built.request), "totalTokens"
    else:
        from ..codecs.chat_completions import tokenize_request

        request, field = tokenize_request(built.request), "count"

    def read(body: bytes) -> dict[str, Any]:
        return input_tokens_object(read_count(body, field))

    return request, codec.parse_error, read
