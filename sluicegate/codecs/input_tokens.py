"""Input token counts on the wire (``POST /v1/responses/input_tokens``; docs/input-tokens.md).

Theory of operation. A count is the create request that would be sent for the same call, sent
to the provider's counting endpoint instead: the gateway builds the create request exactly as a
create builds it (the same validation, the same ``previous_response_id`` and replayed state,
the same bridge mapping), not streamed, and one function here or in the provider's codec turns
it into the count request:

- a native upstream (OpenAI, Azure, the fake): the same body at ``…/responses/input_tokens``
  (:func:`native_count_request`), whose answer (``{"object": "response.input_tokens",
  "input_tokens": N}``) is passed back as it came (:func:`native_count_answer`);
- Anthropic: ``anthropic.count_tokens_request`` (``/v1/messages/count_tokens``, answer
  ``{"input_tokens": N}``); Gemini: ``gemini.count_tokens_request`` (``:countTokens``, answer
  ``{"totalTokens": N}``); a vLLM server: ``chat_completions.tokenize_request`` (``/tokenize``,
  answer ``{"count": N}``). :func:`read_count` reads the number from any of them.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import orjson

from ..errors import UpstreamProtocolError
from .openai_responses import UpstreamRequest

__all__ = [
    "INPUT_TOKENS_OBJECT",
    "input_tokens_object",
    "native_count_answer",
    "native_count_request",
    "read_count",
]

#: The ``object`` of the answer (the Responses API reference).
INPUT_TOKENS_OBJECT: Final = "response.input_tokens"


def native_count_request(create: UpstreamRequest) -> UpstreamRequest:
    """``POST …/responses/input_tokens`` with the body, headers and query of ``create`` (the
    non-streamed ``POST …/responses`` built for the same call)."""
    return attrs.evolve(create, url=f"{create.url}/input_tokens")


def read_count(body: bytes, field: str) -> int:
    """The token count in a provider's JSON answer, under ``field``.

    Raises:
        UpstreamProtocolError: not JSON, not an object, or no count (a non-negative integer).
    """
    return _count(_answer(body), field, body)


def native_count_answer(body: bytes) -> dict[str, Any]:
    """A native upstream's answer, passed back as it came (fields we do not know included),
    once it is checked to carry its ``input_tokens``.

    Raises:
        UpstreamProtocolError: not an answer with an ``input_tokens`` count.
    """
    answer = _answer(body)
    _count(answer, "input_tokens", body)
    return {"object": INPUT_TOKENS_OBJECT, **answer}


def input_tokens_object(count: int) -> dict[str, Any]:
    """The answer for a count a bridged provider made."""
    return {"object": INPUT_TOKENS_OBJECT, "input_tokens": count}


def _answer(body: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(
            f"the upstream's token count is not JSON: {exc} in {_shown(body)}"
        ) from exc
    if not isinstance(answer, dict):
        raise UpstreamProtocolError(f"the upstream's token count is not an object: {_shown(body)}")
    return answer


def _count(answer: dict[str, Any], field: str, body: bytes) -> int:
    count = answer.get(field)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise UpstreamProtocolError(
            f"the upstream's token count answer has no '{field}' count: {_shown(body)}"
        )
    return count


def _shown(body: bytes) -> str:
    return repr(body[:200].decode("utf-8", "replace"))
