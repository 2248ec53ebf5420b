"""The Anthropic Messages bridge (Anthropic's Messages reference; docs/bridges.md, the Anthropic
column).

Theory of operation. :meth:`AnthropicCodec.build_request` turns a Responses request into
``POST {api_base}/v1/messages``:

- ``instructions`` and the ``system``/``developer`` messages become the top-level ``system``
  (Anthropic has no system role inside ``messages``), joined by a blank line, in order;
- the rest of the conversation becomes ``user``/``assistant`` turns, consecutive items of one
  role merged into one turn: function calls are ``tool_use`` blocks, their outputs
  ``tool_result`` blocks at the start of one user turn, and a reasoning item we emitted earlier
  gives back the exact ``thinking``/``redacted_thinking`` block it sealed, in its place;
- whatever Anthropic cannot take is refused before any upstream call (a 400 naming the
  parameter) or, with ``drop_params``, dropped and listed. What a model can do is one table,
  :data:`MODEL_RULES`, whose values a deployment's ``model_info`` overrides.

The decoders and the error mapping are the answer's side (``_anthropic_answer.py``).

Custom tools are tools of one string argument, their ``tool_use`` blocks ``custom_tool_call``
items, and fields the gateway does not know are refused or dropped by name: the shared checks
of :mod:`._bridge`. ``prompt_cache_key`` has no Anthropic field (prompt caching matches the
prefix up to a ``cache_control`` breakpoint; there is no key to give), so the hint is left out
without a word: no answer changes.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ..errors import (
    UpstreamStatusError,
)
from ._anthropic_answer import AnthropicBodyDecoder, AnthropicStreamDecoder, upstream_error
from ._bridge import (
    TOOL_CHOICE_TYPES,
    BridgeInput,
    BuiltRequest,
    RequestPlan,
    ToolChoice,
    context_for,
    data_url_parts,
    function_items,
    instruction_texts,
    invalid,
    required_string,
    system_texts,
    text_format,
    with_overrides,
)
from ._emitter import (
    BridgeContext,
    open_reasoning,
)
from ._endpoint import request_body
from .openai_responses import UpstreamRequest, parse_retry_after

if TYPE_CHECKING:
    from ._bridge import BridgeCodec
    from ._endpoint import Endpoint
    from .openai_responses import Decoder

__all__ = [
    "ANTHROPIC_VERSION",
    "CODEC",
    "COUNT_TOKENS_FIELDS",
    "DEFAULT_API_BASE",
    "FALLBACK_RULES",
    "MODEL_RULES",
    "AnthropicBodyDecoder",
    "AnthropicCodec",
    "AnthropicStreamDecoder",
    "ModelRules",
    "count_tokens_request",
    "rules_for",
]

DEFAULT_API_BASE: Final = "https://api.anthropic.com"
#: The only current API version (Anthropic's Messages reference).
ANTHROPIC_VERSION: Final = "2023-06-01"

# --- what each model takes ---------------------------------------------------------------------

_REASONING_KINDS: Final = ("budget", "adaptive", "none")


@attrs.frozen
class ModelRules:
    """What one Claude model takes. A deployment's ``model_info`` keys of the same names
    override these values (e.g. ``reasoning: adaptive`` for a model newer than the table)."""

    #: ``max_tokens`` when the request has no ``max_output_tokens`` (Anthropic requires one).
    max_output_tokens: int
    #: How ``reasoning.effort`` maps (docs/bridges.md §4): ``budget`` (``thinking.budget_tokens``),
    #: ``adaptive`` (``thinking.type: adaptive`` + ``output_config.effort``) or ``none``.
    reasoning: str
    #: ``output_config.format`` (JSON schema output) and ``strict`` tools.
    structured_outputs: bool
    #: Rejects ``temperature`` and ``top_p`` together (Anthropic's Messages reference).
    exclusive_sampling: bool


#: Claude models by name without a snapshot suffix (``-20250929``, ``-latest``).
MODEL_RULES: Final[Mapping[str, ModelRules]] = {
    "claude-3-haiku": ModelRules(4096, "none", False, False),
    "claude-3-opus": ModelRules(4096, "none", False, False),
    "claude-3-5-haiku": ModelRules(8192, "none", False, False),
    "claude-3-5-sonnet": ModelRules(8192, "none", False, False),
    "claude-3-7-sonnet": ModelRules(64000, "budget", False, False),
    "claude-sonnet-4": ModelRules(64000, "budget", False, False),
    "claude-sonnet-4-0": ModelRules(64000, "budget", False, False),
    "claude-opus-4": ModelRules(32000, "budget", False, False),
    "claude-opus-4-0": ModelRules(32000, "budget", False, False),
    "claude-opus-4-1": ModelRules(32000, "budget", True, True),
    "claude-sonnet-4-5": ModelRules(64000, "budget", True, True),
    "claude-haiku-4-5": ModelRules(64000, "budget", True, True),
    "claude-opus-4-5": ModelRules(64000, "budget", True, True),
    "claude-sonnet-4-6": ModelRules(64000, "adaptive", True, True),
    "claude-opus-4-6": ModelRules(128000, "adaptive", True, True),
}
#: A model the table does not know: nothing assumed beyond what every Claude model takes
#: (configure ``model_info`` to unlock reasoning or structured output).
FALLBACK_RULES: Final = ModelRules(4096, "none", False, False)

_SNAPSHOT: Final = re.compile(r"-(?:\d{8}|latest)$")

#: ``model_info`` key -> (whether a value is acceptable, what is expected).
_OVERRIDE_CHECKS: Final[Mapping[str, tuple[Any, str]]] = {
    "max_output_tokens": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "a positive integer",
    ),
    "reasoning": (lambda v: v in _REASONING_KINDS, "one of 'budget', 'adaptive', 'none'"),
    "structured_outputs": (lambda v: isinstance(v, bool), "a boolean"),
    "exclusive_sampling": (lambda v: isinstance(v, bool), "a boolean"),
}


def rules_for(deployment: Endpoint) -> ModelRules:
    """The deployment model's rules: :data:`MODEL_RULES` (else :data:`FALLBACK_RULES`) with
    the deployment's ``model_info`` overrides.

    Raises:
        ConfigError: an override of the wrong type (names the ``model_info`` key).
    """
    rules = MODEL_RULES.get(_SNAPSHOT.sub("", deployment.model), FALLBACK_RULES)
    return with_overrides(rules, deployment.model_info, _OVERRIDE_CHECKS)


#: ``reasoning.effort`` -> ``thinking.budget_tokens`` of ``budget`` models (docs/bridges.md §4).
_BUDGET_TOKENS: Final = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}
#: ``reasoning.effort`` -> ``output_config.effort`` of ``adaptive`` models (docs/bridges.md §4).
_ADAPTIVE_EFFORT: Final = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}
#: The smallest thinking budget Anthropic takes (Anthropic's Messages reference).
_MIN_BUDGET: Final = 1024
_SUMMARIES: Final = (None, "auto", "concise", "detailed")
#: Base64 image media types Anthropic takes (Anthropic's Messages reference).
_IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: Responses ``service_tier`` -> Anthropic's (docs/bridges.md §3).
_SERVICE_TIERS: Final = {"auto": "auto", "default": "standard_only"}

# --- the request -------------------------------------------------------------------------------


class AnthropicCodec:
    """The :class:`~._bridge.BridgeCodec` of Anthropic Messages (module docstring)."""

    #: Anthropic fetches https image and document URLs itself.
    inline_remote_media: bool = False

    def check_deployment(self, deployment: Endpoint) -> None:
        rules_for(deployment)

    def build_request(
        self, deployment: Endpoint, request: BridgeInput, *, stream: bool, created_at: int
    ) -> BuiltRequest:
        """``POST {api_base}/v1/messages`` for ``request``.

        Raises:
            InvalidRequestError: a parameter Anthropic (or this model) cannot take, naming it.
            ConfigError: a malformed ``model_info`` override.
        """
        body = request.body
        plan = RequestPlan(
            provider=deployment.provider, model=deployment.model, drop_params=request.drop_params
        )
        functions = plan.check_common(body, request.unknown_params)
        mapper = _RequestMapper(
            plan=plan,
            rules=rules_for(deployment),
            provider=deployment.provider,
            model=deployment.model,
        )
        payload = mapper.payload(body, function_items(request.items), functions)
        if stream:
            payload["stream"] = True
        if request.extra_body:
            payload.update(request.extra_body)  # after our own mapping: its keys win
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if deployment.api_key is not None:
            headers["x-api-key"] = deployment.api_key.reveal()
        headers.update(deployment.extra_headers)
        headers.update(request.extra_headers)  # the caller's last: its keys win
        upstream = UpstreamRequest(
            method="POST",
            url=f"{deployment.api_base or DEFAULT_API_BASE}/v1/messages",
            headers=headers,
            params=dict(request.extra_query),
            content=request_body(payload),
        )
        return BuiltRequest(
            request=upstream, context=context_for(deployment, body, plan, created_at=created_at)
        )

    def stream_decoder(self, context: BridgeContext) -> Decoder:
        return AnthropicStreamDecoder(context)

    def body_decoder(self, context: BridgeContext) -> Decoder:
        return AnthropicBodyDecoder(context)

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> UpstreamStatusError:
        """Anthropic's error status and body as ours (docs/bridges.md §8; keyed on the status,
        as Anthropic's Messages reference advises)."""
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        error = parsed.get("error") if isinstance(parsed, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str) or not message:
            text = body[:500].decode("utf-8", "replace").strip()
            message = f"answered HTTP {status}" + (f": {text}" if text else "")
        return upstream_error(status, message, retry_after=parse_retry_after(headers, now=now))


#: The codec the registry loads for ``provider: anthropic``.
CODEC: Final[BridgeCodec] = AnthropicCodec()

#: What ``POST /v1/messages/count_tokens`` takes of a Messages body (Anthropic's token counting
#: reference); the rest (``max_tokens``, ``stream``, sampling, ``metadata``, ``service_tier``)
#: shapes the answer, not the input, and the endpoint refuses it.
COUNT_TOKENS_FIELDS: Final = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
    }
)


def count_tokens_request(create: UpstreamRequest) -> UpstreamRequest:
    """``POST {api_base}/v1/messages/count_tokens`` for the conversation of ``create`` (a
    non-streamed request :meth:`AnthropicCodec.build_request` built): the same mapping, headers
    and query, the body without what only shapes the answer. Anthropic answers
    ``{"input_tokens": N}`` (docs/input-tokens.md)."""
    assert isinstance(create.content, bytes), "a codec builds the whole body"
    payload = orjson.loads(create.content)
    body = {k: v for k, v in payload.items() if k in COUNT_TOKENS_FIELDS}
    return attrs.evolve(create, url=f"{create.url}/count_tokens", content=request_body(body))


@attrs.define(eq=False)
class _RequestMapper:
    """One request's mapping to a Messages body, refusing or dropping through ``plan``."""

    plan: RequestPlan
    rules: ModelRules
    provider: str
    model: str

    def payload(
        self,
        body: Mapping[str, Any],
        items: list[dict[str, Any]],
        functions: list[dict[str, Any]],
    ) -> dict[str, Any]:
        given = body.get("max_output_tokens")
        max_tokens = self.rules.max_output_tokens if given is None else int(given)
        thinking, effort = self._reasoning(body, max_tokens, given=given is not None)
        thinking_on = thinking is not None and thinking["type"] != "disabled"
        system, messages = self._conversation(body, items)
        payload: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens}
        if system:
            payload["system"] = system
        payload["messages"] = messages
        payload.update(self._tools(body, functions, thinking_on=thinking_on))
        if thinking is not None:
            payload["thinking"] = thinking
        output_config: dict[str, Any] = {}
        if effort is not None:
            output_config["effort"] = effort
        output_format = self._output_format(body)
        if output_format is not None:
            output_config["format"] = output_format
        if output_config:
            payload["output_config"] = output_config
        payload.update(self._sampling(body, thinking_on=thinking_on))
        self._check_logprobs(body)
        # docs/bridges.md §3: the end-user id is Anthropic's metadata.user_id (its only key).
        user = body.get("safety_identifier") or body.get("user")
        if user:
            payload["metadata"] = {"user_id": user}
        tier = body.get("service_tier")
        if tier is not None:
            if tier in _SERVICE_TIERS:
                payload["service_tier"] = _SERVICE_TIERS[tier]
            else:
                self.plan.unsupported("service_tier", f"'service_tier' {tier!r}")
        return payload

    # -- generation controls --

    def _reasoning(
        self, body: Mapping[str, Any], max_tokens: int, *, given: bool
    ) -> tuple[dict[str, Any] | None, str | None]:
        """``thinking`` and ``output_config.effort`` for ``reasoning`` (docs/bridges.md §4)."""
        reasoning = body.get("reasoning") or {}
        for key, value in reasoning.items():
            if key not in ("effort", "summary") and value is not None:
                self.plan.unsupported(f"reasoning.{key}")
        summary = reasoning.get("summary")
        if summary not in _SUMMARIES:
            raise invalid(
                "reasoning.summary", f"Invalid value for 'reasoning.summary': {summary!r}."
            )
        effort = reasoning.get("effort")
        if effort is None:
            return None, None  # the provider's default: no thinking
        if effort != "none" and effort not in _BUDGET_TOKENS:
            raise invalid("reasoning.effort", f"Invalid value for 'reasoning.effort': {effort!r}.")
        kind = self.rules.reasoning
        if kind == "none":
            if effort != "none":
                self.plan.unsupported("reasoning.effort", f"'reasoning.effort' {effort!r}")
            return None, None
        if effort == "none":
            return {"type": "disabled"}, None
        # Without a summary asked for, the thinking text is not needed: "omitted" still returns
        # the signatures to replay (Anthropic's Messages reference, docs/bridges.md §3).
        display = {} if summary is not None else {"display": "omitted"}
        if kind == "adaptive":
            return {"type": "adaptive", **display}, _ADAPTIVE_EFFORT[effort]
        # Anthropic's Messages reference: 1024 <= budget_tokens < max_tokens.
        budget = min(_BUDGET_TOKENS[effort], max_tokens - 1)
        if budget < _MIN_BUDGET:
            self.plan.unsupported_value(
                "max_output_tokens" if given else "reasoning.effort",
                f"reasoning needs more than {_MIN_BUDGET} output tokens (Anthropic's smallest "
                f"thinking budget), but 'max_output_tokens' is {max_tokens}",
            )
        return {"type": "enabled", "budget_tokens": budget, **display}, None

    def _sampling(self, body: Mapping[str, Any], *, thinking_on: bool) -> dict[str, Any]:
        temperature = body.get("temperature")
        top_p = body.get("top_p")
        if temperature is not None and temperature > 1:
            self.plan.unsupported_value(
                "temperature", f"'temperature' must be between 0 and 1, got {temperature}"
            )
        if thinking_on:
            # Anthropic's Messages reference: with thinking on, temperature keeps its default (1,
            # which therefore costs nothing to leave out) and top_p stays within 0.95-1.
            if temperature is not None and temperature != 1:
                self.plan.unsupported("temperature", "'temperature' with reasoning on")
            temperature = None
            if top_p is not None and top_p < 0.95:
                self.plan.unsupported("top_p", "'top_p' below 0.95 with reasoning on")
                top_p = None
        if self.rules.exclusive_sampling and temperature is not None and top_p is not None:
            # Anthropic's Messages reference: one or the other. A default value (1) chooses nothing.
            if top_p == 1:
                top_p = None
            elif temperature == 1:
                temperature = None
            else:
                self.plan.unsupported_value(
                    "top_p", "'temperature' and 'top_p' cannot both be set for this model"
                )
        out: dict[str, Any] = {}
        if temperature is not None:
            out["temperature"] = temperature
        if top_p is not None:
            out["top_p"] = top_p
        return out

    def _output_format(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        fmt = text_format(self.plan, body)
        if fmt is None:
            return None
        if fmt["type"] == "json_object":
            self.plan.unsupported(
                "text.format", "'text.format' of type 'json_object' (use 'json_schema')"
            )
            return None
        schema = fmt["schema"]
        if not self.rules.structured_outputs:
            self.plan.unsupported("text.format", "'text.format' of type 'json_schema'")
            return None
        return {"type": "json_schema", "schema": schema}

    def _check_logprobs(self, body: Mapping[str, Any]) -> None:
        # docs/bridges.md §10: Anthropic returns no logprobs.
        if body.get("top_logprobs"):
            self.plan.unsupported("top_logprobs")
        for i, value in enumerate(body.get("include") or []):
            if value == "message.output_text.logprobs":
                self.plan.unsupported(f"include[{i}]", f"'include' value {value!r}")

    # -- tools --

    def _tools(
        self, body: Mapping[str, Any], functions: list[dict[str, Any]], *, thinking_on: bool
    ) -> dict[str, Any]:
        raw = body.get("tool_choice")
        if isinstance(raw, dict) and raw.get("type") not in TOOL_CHOICE_TYPES:
            # check_common refused it, or dropped (and listed) it once already: the default.
            choice = ToolChoice(mode="auto", names=None)
        else:
            choice = self.plan.tool_choice(body, functions)
        if thinking_on and choice.mode in ("required", "function"):
            # Anthropic's Messages reference: with thinking on only auto/none (docs/bridges.md §2:
            # reject).
            self.plan.unsupported_value(
                "tool_choice", "forcing a tool call cannot be combined with reasoning"
            )
        if choice.mode == "function":
            wire: dict[str, Any] = {"type": "tool", "name": (choice.names or [""])[0]}
        else:
            wire = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice.mode]}
            if choice.names is not None:  # allowed_tools: send only those (docs/bridges.md §2)
                functions = [f for f in functions if f["name"] in choice.names]
        if not functions:
            return {}
        if body.get("parallel_tool_calls") is False and choice.mode != "none":
            wire["disable_parallel_tool_use"] = True
        return {"tools": [self._tool(f) for f in functions], "tool_choice": wire}

    def _tool(self, tool: Mapping[str, Any]) -> dict[str, Any]:
        wire: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            wire["description"] = tool["description"]
        parameters = tool.get("parameters")
        wire["input_schema"] = (
            parameters if parameters is not None else {"type": "object", "properties": {}}
        )
        # Strict tools need a model with structured outputs; elsewhere the schema still goes,
        # unenforced, rather than refusing the many clients that send strict by default.
        if tool.get("strict") is True and self.rules.structured_outputs:
            wire["strict"] = True
        return wire

    # -- the conversation --

    def _conversation(
        self, body: Mapping[str, Any], items: list[dict[str, Any]]
    ) -> tuple[str, list[dict[str, Any]]]:
        """The ``system`` text and the ``messages`` turns."""
        system = instruction_texts(self.plan, body.get("instructions"))
        turns: list[dict[str, Any]] = []
        #: Thinking blocks restored from reasoning items, waiting for the assistant item they
        #: preceded (docs/bridges.md §5): they go into that assistant turn, in their place.
        thinking: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            path = f"input[{i}]"
            kind = item.get("type", "message")
            if kind == "message":
                role = item.get("role")
                if role in ("system", "developer"):
                    system.extend(system_texts(self.plan, item, path))
                elif role == "user":
                    thinking = []  # thinking not followed by an answer: nothing to replay it with
                    _append(turns, "user", self._blocks(item, path, assistant=False))
                elif role == "assistant":
                    _append(turns, "assistant", thinking + self._blocks(item, path, assistant=True))
                    thinking = []
                else:
                    raise invalid(f"{path}.role", f"Invalid value for '{path}.role': {role!r}.")
            elif kind == "function_call":
                _append(turns, "assistant", [*thinking, self._tool_use(item, path)])
                thinking = []
            elif kind == "function_call_output":
                thinking = []
                _append(turns, "user", [self._tool_result(item, path)])
            elif kind == "reasoning":
                thinking.extend(self._thinking_blocks(item))
            elif kind == "item_reference":
                self.plan.unsupported("input", f"'{path}' of type 'item_reference'")
            else:
                self.plan.unsupported(path, f"'{path}' of type {kind!r}")
        return "\n\n".join(system), turns

    def _blocks(
        self, item: Mapping[str, Any], path: str, *, assistant: bool
    ) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        for j, part in enumerate(item.get("content") or []):
            block = self._part(part, f"{path}.content[{j}]", assistant=assistant)
            if block is not None:
                blocks.append(block)
        return blocks

    def _part(self, part: Any, path: str, *, assistant: bool) -> dict[str, Any] | None:
        """One content part as a block; None when it is empty or dropped."""
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text = required_string(part, "text", path)
            # Anthropic rejects empty text blocks; an empty part says nothing anyway.
            return {"type": "text", "text": text} if text else None
        if kind == "refusal" and assistant:
            text = required_string(part, "refusal", path)
            return {"type": "text", "text": text} if text else None
        if kind == "input_image" and not assistant:
            return self._image(part, path)
        if kind == "input_file" and not assistant:
            return self._document(part, path)
        self.plan.unsupported(path, f"'{path}' of type {kind!r}")
        return None

    def _image(self, part: Mapping[str, Any], path: str) -> dict[str, Any] | None:
        if part.get("image_url") is None and part.get("file_id") is not None:
            self.plan.unsupported(path, f"'{path}' by 'file_id'")
            return None
        url = required_string(part, "image_url", path)
        data = data_url_parts(url)
        if data is None and not url.startswith("https://"):
            self.plan.unsupported_value(
                f"{path}.image_url", f"'{path}.image_url' must be an https URL or a base64 data URL"
            )
        if data is None:
            return {"type": "image", "source": {"type": "url", "url": url}}
        media_type, encoded = data
        if media_type not in _IMAGE_TYPES:
            self.plan.unsupported_value(
                path,
                f"'{path}' is of type {media_type!r}; Anthropic takes image/jpeg, image/png, "
                "image/gif and image/webp",
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": encoded},
        }

    def _document(self, part: Mapping[str, Any], path: str) -> dict[str, Any] | None:
        data = part.get("file_data")
        url = part.get("file_url")
        if data is None and url is None and part.get("file_id") is not None:
            self.plan.unsupported(path, f"'{path}' by 'file_id'")
            return None
        filename = part.get("filename")
        source: dict[str, Any]
        if data is not None:
            encoded = required_string(part, "file_data", path)
            parsed = data_url_parts(encoded)
            if parsed is None:
                # Plain base64: only the filename can say it is a PDF.
                pdf = isinstance(filename, str) and filename.lower().endswith(".pdf")
                parsed = ("application/pdf" if pdf else "an unknown type", encoded)
            media_type, encoded = parsed
            if media_type != "application/pdf":
                self.plan.unsupported_value(
                    path, f"'{path}' is of type {media_type!r}; Anthropic takes PDF files"
                )
            source = {"type": "base64", "media_type": "application/pdf", "data": encoded}
        else:
            url = required_string(part, "file_url", path)
            if not url.startswith("https://"):
                self.plan.unsupported_value(
                    f"{path}.file_url", f"'{path}.file_url' must be an https URL"
                )
            source = {"type": "url", "url": url}
        block: dict[str, Any] = {"type": "document", "source": source}
        if isinstance(filename, str) and filename:
            block["title"] = filename
        return block

    def _tool_use(self, item: Mapping[str, Any], path: str) -> dict[str, Any]:
        call_id = required_string(item, "call_id", path)
        name = required_string(item, "name", path)
        arguments = required_string(item, "arguments", path)
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise invalid(
                f"{path}.arguments", f"'{path}.arguments' is not valid JSON: {exc}."
            ) from exc
        if not isinstance(parsed, dict):
            # A tool_use input is a JSON object (Anthropic's Messages reference).
            raise invalid(f"{path}.arguments", f"'{path}.arguments' must be a JSON object.")
        return {"type": "tool_use", "id": call_id, "name": name, "input": parsed}

    def _tool_result(self, item: Mapping[str, Any], path: str) -> dict[str, Any]:
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": required_string(item, "call_id", path),
        }
        output = item.get("output")
        if isinstance(output, str):
            if output:
                block["content"] = output
        elif isinstance(output, list):
            content = [
                b
                for j, part in enumerate(output)
                if (b := self._part(part, f"{path}.output[{j}]", assistant=False)) is not None
            ]
            if content:
                block["content"] = content
        else:
            raise invalid(
                f"{path}.output",
                f"Invalid type for '{path}.output': expected a string or an array of parts.",
                "invalid_type",
            )
        return block

    def _thinking_blocks(self, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The blocks a reasoning item of ours sealed for this model; none for any other
        reasoning item (another provider's or model's cannot be replayed: docs/bridges.md §5)."""
        state = open_reasoning(item.get("encrypted_content"), self.provider, self.model)
        blocks = state.get("blocks") if state is not None else None
        if not isinstance(blocks, list):
            return []
        return [block for block in blocks if isinstance(block, dict)]


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks to the conversation, merging consecutive turns of one role."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        content: list[dict[str, Any]] = turns[-1]["content"]
    else:
        content = []
        turns.append({"role": role, "content": content})
    for block in blocks:
        if block["type"] == "tool_result":
            # Anthropic's Messages reference: the tool results open their user turn.
            at = next((k for k, b in enumerate(content) if b["type"] != "tool_result"), None)
            content.insert(len(content) if at is None else at, block)
        else:
            content.append(block)
