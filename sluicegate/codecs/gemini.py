"""The Gemini generateContent bridge (Gemini's generateContent reference; docs/bridges.md, the
Gemini column).

Theory of operation. :meth:`GeminiCodec.build_request` turns a Responses request into
``POST {api_base}/v1beta/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse``
when streaming):

- ``instructions`` and the ``system``/``developer`` messages become ``systemInstruction.parts``
  (Gemini has no system role in ``contents``), in order;
- the rest of the conversation becomes ``user``/``model`` contents, consecutive items of one
  role merged into one content: function calls are ``functionCall`` parts, their outputs
  ``functionResponse`` parts (named after the call they answer), images and files
  ``inlineData``. The gateway has fetched remote media into ``data:`` URLs before this point
  (``inline_remote_media``): an https URL that is still there is refused, naming the part;
- whatever Gemini cannot take is refused before any upstream call (a 400 naming the
  parameter) or, with ``drop_params``, dropped and listed. What a model can do is one table,
  :data:`MODEL_RULES`, whose values a deployment's ``model_info`` overrides.

Thought signatures (Gemini's generateContent reference, docs/bridges.md §5). Gemini puts an opaque
``thoughtSignature`` on some part of its answer (a ``functionCall``, the last text part, an
empty text part, a thought) and wants it back on that very part. The decoders keep each one in
a reasoning item whose ``encrypted_content`` seals ``{"parts": [signed part, ...]}``, each
signed part naming where it goes:

- ``{"part": "function_call", "call_id", "signature"}``: onto that call's ``functionCall``
  part; the reasoning item comes right before the call (and also carries the thought summary
  that preceded it);
- ``{"part": "text", "signature"}``: onto the last text part of the message just before the
  reasoning item (the item comes right after the message the signed text ended);
- ``{"part": "empty", "signature"}``: an empty text part of its own, in its place;
- ``{"part": "thought", "text", "signature"}``: a thought part with that text, in its place.

:meth:`GeminiCodec.build_request` restores every one of them exactly. On Gemini 3, which
refuses a step whose first ``functionCall`` has no signature, a call without one (history from
another provider or model, or hand-built) gets Google's documented placeholder
(:data:`PLACEHOLDER_SIGNATURE`).

Call IDs (docs/bridges.md §6): ``functionCall.id`` when Gemini sends one (Gemini 3 always does),
echoed on the call and its ``functionResponse`` next turn; otherwise the gateway mints
``call_`` + 48 hex digits, recognises that form next turn and sends no ``id`` (some endpoints
refuse one they did not issue).

The decoders (``_gemini_answer.py``) turn Gemini's chunks into the canonical Responses events,
keeping each signature as above, and read its errors.

Custom tools are declarations of one string argument, their ``functionCall`` parts
``custom_tool_call`` items (signatures kept as for any call), and fields the gateway does not
know are refused or dropped by name: the shared checks of :mod:`._bridge`.
``prompt_cache_key`` has no Gemini field (implicit caching matches prefixes; explicit caching
names a ``cachedContent``, which a key cannot stand for), so the hint is left out without a
word: no answer changes.

Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ..errors import UpstreamStatusError
from ._bridge import (
    TOOL_CHOICE_TYPES,
    BridgeInput,
    BuiltRequest,
    RequestPlan,
    context_for,
    data_url_parts,
    function_items,
    instruction_texts,
    invalid,
    required_string,
    system_texts,
    text_format,
)
from ._emitter import (
    BridgeContext,
    open_reasoning,
)
from ._endpoint import request_body
from ._gemini_answer import GeminiBodyDecoder, GeminiStreamDecoder, upstream_error
from ._gemini_rules import _EFFORTS, FALLBACK_RULES, MODEL_RULES, ModelRules, rules_for
from .openai_responses import UpstreamRequest, parse_retry_after

if TYPE_CHECKING:
    from ._bridge import BridgeCodec
    from ._endpoint import Endpoint
    from .openai_responses import Decoder

__all__ = [
    "CODEC",
    "COUNT_TOKENS_FIELDS",
    "DEFAULT_API_BASE",
    "FALLBACK_RULES",
    "MODEL_RULES",
    "PLACEHOLDER_SIGNATURE",
    "GeminiBodyDecoder",
    "GeminiCodec",
    "GeminiStreamDecoder",
    "ModelRules",
    "count_tokens_request",
    "rules_for",
]

DEFAULT_API_BASE: Final = "https://generativelanguage.googleapis.com"
#: The value Google documents for a ``functionCall`` whose real signature is unknown
#: (Gemini's generateContent reference): Gemini 3 then skips the signature check.
PLACEHOLDER_SIGNATURE: Final = "skip_thought_signature_validator"

_SUMMARIES: Final = (None, "auto", "concise", "detailed")
#: OpenAI-style names callers put in ``extra_body`` -> Gemini's ``generationConfig`` field.
_GENERATION_ALIASES: Final = {
    "stop": "stopSequences",
    "seed": "seed",
    "top_k": "topK",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
_PENALTIES: Final = {"presencePenalty": "presence_penalty", "frequencyPenalty": "frequency_penalty"}
#: ``generationConfig.stopSequences`` takes at most this many (Gemini's generateContent reference).
_MAX_STOP_SEQUENCES: Final = 5
#: The ``call_id`` form :func:`~._bridge.mint_id` gives: a call Gemini sent without an ``id``.
_MINTED_CALL_ID: Final = re.compile(r"call_[0-9a-f]{48}")
#: Our reasoning envelope's prefix (:func:`~._bridge.seal_reasoning`).
_ENVELOPE_PREFIX: Final = "sg1."

# --- the request -------------------------------------------------------------------------------


class GeminiCodec:
    """The :class:`~._bridge.BridgeCodec` of Gemini generateContent (module docstring)."""

    #: Gemini takes no arbitrary URLs (Gemini's generateContent reference, ``fileData``): the
    #: gateway fetches https images and files and hands them over as ``data:`` URLs.
    inline_remote_media: bool = True

    def check_deployment(self, deployment: Endpoint) -> None:
        rules_for(deployment)

    def build_request(
        self, deployment: Endpoint, request: BridgeInput, *, stream: bool, created_at: int
    ) -> BuiltRequest:
        """``POST {api_base}/v1beta/models/{model}:generateContent`` (or
        ``:streamGenerateContent?alt=sse``) for ``request``.

        Raises:
            InvalidRequestError: a parameter Gemini (or this model) cannot take, naming it; a
                remote URL the gateway should have inlined; a reasoning item whose
                ``encrypted_content`` we sealed but that was altered.
            ConfigError: a malformed ``model_info`` override.
        """
        body = request.body
        plan = RequestPlan(
            provider=deployment.provider, model=deployment.model, drop_params=request.drop_params
        )
        functions = plan.check_common(body, request.unknown_params)
        rules = rules_for(deployment)
        mapper = _RequestMapper(
            plan=plan, rules=rules, provider=deployment.provider, model=deployment.model
        )
        payload = mapper.payload(body, function_items(request.items), functions)
        if request.extra_body:
            payload = mapper.merge_extra_body(payload, request.extra_body)
        method = "streamGenerateContent" if stream else "generateContent"
        # Gemini's generateContent reference: without alt=sse the stream is one big JSON array.
        params: dict[str, str | list[str]] = {"alt": "sse"} if stream else {}
        params.update(request.extra_query)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            **(
                {"x-goog-api-key": deployment.api_key.reveal()}
                if deployment.api_key is not None
                else {}
            ),
            **deployment.extra_headers,
            **request.extra_headers,
        }
        base = deployment.api_base or DEFAULT_API_BASE
        model = deployment.model.removeprefix("models/")
        upstream = UpstreamRequest(
            method="POST",
            url=f"{base}/v1beta/models/{model}:{method}",
            headers=headers,
            params=params,
            content=request_body(payload),
        )
        return BuiltRequest(
            request=upstream, context=context_for(deployment, body, plan, created_at=created_at)
        )

    def stream_decoder(self, context: BridgeContext) -> Decoder:
        return GeminiStreamDecoder(context)

    def body_decoder(self, context: BridgeContext) -> Decoder:
        return GeminiBodyDecoder(context)

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> UpstreamStatusError:
        """Gemini's google.rpc error status and body as ours (docs/bridges.md §8)."""
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and len(parsed) == 1:
            parsed = parsed[0]  # the un-SSE'd stream form wraps everything in an array
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if not isinstance(error, dict):
            text = body[:500].decode("utf-8", "replace").strip()
            error = {"message": f"answered HTTP {status}" + (f": {text}" if text else "")}
        return upstream_error(status, error, retry_after=parse_retry_after(headers, now=now))


#: The codec the registry loads for ``provider: gemini``.
CODEC: Final[BridgeCodec] = GeminiCodec()

#: The fields of a ``GenerateContentRequest`` that ``:countTokens`` takes inside its
#: ``generateContentRequest`` (Gemini's countTokens reference).
COUNT_TOKENS_FIELDS: Final = frozenset(
    {
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "generationConfig",
        "safetySettings",
        "cachedContent",
    }
)


def count_tokens_request(create: UpstreamRequest) -> UpstreamRequest:
    """``POST {api_base}/v1beta/models/{model}:countTokens`` for the conversation of ``create``
    (a non-streamed ``:generateContent`` request :meth:`GeminiCodec.build_request` built): its
    body as ``{"generateContentRequest": {"model": "models/{model}", ...}}``, so tools, the
    system instruction and the generation config are counted as they would be sent. Gemini
    answers ``{"totalTokens": N, ...}`` (docs/input-tokens.md)."""
    assert isinstance(create.content, bytes), "a codec builds the whole body"
    prefix = create.url.removesuffix(":generateContent")
    model = prefix.rpartition("/models/")[2]
    payload = orjson.loads(create.content)
    inner = {k: v for k, v in payload.items() if k in COUNT_TOKENS_FIELDS}
    body = {"generateContentRequest": {"model": f"models/{model}", **inner}}
    return attrs.evolve(create, url=f"{prefix}:countTokens", content=request_body(body))


def _no_parameters(schema: Any) -> bool:
    """Whether a function's schema says it takes no arguments: Gemini wants no schema then
    (Gemini's generateContent reference, "Empty-parameter functions: omit both")."""
    if schema is None or schema == {}:
        return True
    return (
        isinstance(schema, dict)
        and schema.get("type") == "object"
        and set(schema) <= {"type", "properties", "required", "additionalProperties"}
        and not schema.get("properties")
        and not schema.get("required")
        and schema.get("additionalProperties") in (None, False)
    )


def _minted(call_id: str) -> bool:
    """Whether the gateway minted this call ID (Gemini sent the call without one)."""
    return _MINTED_CALL_ID.fullmatch(call_id) is not None


def _broken_envelope(token: Any) -> bool:
    """Whether ``token`` has our envelope's prefix but does not decode: it was altered. (An
    intact envelope of another provider or model opens to None too, and is dropped instead.)"""
    if not isinstance(token, str) or not token.startswith(_ENVELOPE_PREFIX):
        return False
    data = token[len(_ENVELOPE_PREFIX) :]
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        return True
    return not isinstance(payload, dict) or not isinstance(payload.get("s"), dict)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: objects merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        below = merged.get(key)
        if isinstance(below, dict) and isinstance(value, Mapping):
            merged[key] = _deep_merge(below, value)
        else:
            merged[key] = value
    return merged


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Add parts to the conversation, merging consecutive contents of one role (docs/bridges.md
    §1: "merging is safer"; one user content then holds all the function responses of a step,
    as Gemini's generateContent reference asks)."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": list(parts)})


@attrs.define(eq=False)
class _RequestMapper:
    """One request's mapping to a generateContent body, refusing or dropping through ``plan``."""

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
        system, contents = self._conversation(body, items)
        payload: dict[str, Any] = {}
        if system:
            payload["systemInstruction"] = {"parts": system}
        payload["contents"] = contents
        payload.update(self._tools(body, functions))
        generation = self._generation(body)
        if generation:
            payload["generationConfig"] = generation
        self._check_unsupported(body)
        return payload

    def _check_unsupported(self, body: Mapping[str, Any]) -> None:
        # Gemini's logprobs (responseLogprobs) exist, but the emitter has no way to carry them
        # onto the output_text parts: refused rather than silently missing.
        if body.get("top_logprobs"):
            self.plan.unsupported("top_logprobs")
        for i, value in enumerate(body.get("include") or []):
            if value == "message.output_text.logprobs":
                self.plan.unsupported(f"include[{i}]", f"'include' value {value!r}")
        tier = body.get("service_tier")
        if tier not in (None, "auto", "default"):
            self.plan.unsupported("service_tier", f"'service_tier' {tier!r}")

    # -- generation controls --

    def _generation(self, body: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        max_tokens = body.get("max_output_tokens")
        if max_tokens is not None:
            cap = self.rules.max_output_tokens
            if cap is not None and max_tokens > cap:
                self.plan.unsupported_value(
                    "max_output_tokens",
                    f"'max_output_tokens' must be at most {cap}, got {max_tokens}",
                )
            out["maxOutputTokens"] = max_tokens
        temperature = body.get("temperature")
        if temperature is not None:
            if not 0 <= temperature <= self.rules.max_temperature:
                self.plan.unsupported_value(
                    "temperature",
                    f"'temperature' must be between 0 and {self.rules.max_temperature}, "
                    f"got {temperature}",
                )
            out["temperature"] = temperature
        top_p = body.get("top_p")
        if top_p is not None:
            out["topP"] = top_p
        out.update(self._output_format(body))
        thinking = self._thinking(body)
        if thinking:
            out["thinkingConfig"] = thinking
        return out

    def _thinking(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``thinkingConfig`` for ``reasoning`` (docs/bridges.md §3, §4)."""
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
        if effort is not None and effort not in _EFFORTS:
            raise invalid("reasoning.effort", f"Invalid value for 'reasoning.effort': {effort!r}.")
        if self.rules.reasoning == "none":
            # A thinkingConfig is a 400 on a model that does not think (§2); "none" asks for
            # what the model does anyway.
            if effort not in (None, "none"):
                self.plan.unsupported("reasoning.effort", f"'reasoning.effort' {effort!r}")
            if summary is not None:
                self.plan.unsupported("reasoning.summary", "'reasoning.summary'")
            return {}
        config: dict[str, Any] = {}
        if effort is not None:
            value = self.rules.efforts.get(effort)
            if value is None:
                self.plan.unsupported_value(
                    "reasoning.effort", f"'reasoning.effort' {effort!r} has no thinking setting"
                )
            # Never both (docs/bridges.md §4: Gemini answers 400).
            key = "thinkingLevel" if self.rules.reasoning == "level" else "thinkingBudget"
            config[key] = value
        if summary is not None:
            config["includeThoughts"] = True
        return config

    def _output_format(self, body: Mapping[str, Any]) -> dict[str, Any]:
        fmt = text_format(self.plan, body)
        if fmt is None:
            return {}
        if fmt["type"] == "json_object":
            return {"responseMimeType": "application/json"}
        # ``name``/``description``/``strict`` have no Gemini field: the schema is the contract.
        return {"responseMimeType": "application/json", "responseJsonSchema": fmt["schema"]}

    # -- tools --

    def _tools(self, body: Mapping[str, Any], functions: list[dict[str, Any]]) -> dict[str, Any]:
        given = body.get("tool_choice")
        if isinstance(given, dict) and given.get("type") not in TOOL_CHOICE_TYPES:
            # check_common refused it, or dropped it (and listed the drop once already):
            # RequestPlan.tool_choice would list it a second time.
            body, given = {**body, "tool_choice": None}, None
        choice = self.plan.tool_choice(body, functions)
        if not functions:
            if choice.mode == "required":
                self.plan.unsupported_value(
                    "tool_choice", "'tool_choice' 'required' needs at least one function tool"
                )
            return {}
        if body.get("parallel_tool_calls") is False and choice.mode != "none":
            # docs/bridges.md §10: Gemini has no way to ask for at most one call.
            self.plan.unsupported("parallel_tool_calls", "'parallel_tool_calls': false")
        out: dict[str, Any] = {
            "tools": [{"functionDeclarations": [self._declaration(f) for f in functions]}]
        }
        if given is None:
            return out  # Gemini's default is AUTO
        config: dict[str, Any]
        if choice.mode == "function":
            config = {"mode": "ANY", "allowedFunctionNames": choice.names}
        elif choice.names is None:
            config = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice.mode]}
        elif not choice.names:  # allowed_tools whose every entry was dropped
            if choice.mode == "required":
                self.plan.unsupported_value(
                    "tool_choice.tools", "'tool_choice' allows no function to be required"
                )
            config = {"mode": "NONE"}
        else:
            # docs/bridges.md §2: allowed_tools auto -> VALIDATED (text or calls, calls restricted
            # to the names; AUTO takes no allowedFunctionNames), required -> ANY.
            mode = "ANY" if choice.mode == "required" else "VALIDATED"
            config = {"mode": mode, "allowedFunctionNames": choice.names}
        out["toolConfig"] = {"functionCallingConfig": config}
        return out

    def _declaration(self, tool: Mapping[str, Any]) -> dict[str, Any]:
        wire: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            wire["description"] = tool["description"]
        parameters = tool.get("parameters")
        # Plain JSON Schema, no conversion (§2). ``strict`` has no equivalent: the schema is
        # still sent, unenforced, rather than refusing the clients that send it by default.
        if not _no_parameters(parameters):
            wire["parametersJsonSchema"] = parameters
        return wire

    # -- extra_body --

    def merge_extra_body(
        self, payload: dict[str, Any], extra_body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``extra_body`` merged last, key by key into objects (so ``{"generationConfig":
        {"topK": 40}}`` adds to the mapped ``generationConfig`` instead of replacing it), its
        OpenAI-style sampling names translated, and what this model refuses checked.

        Raises:
            InvalidRequestError: penalties for a model that refuses them (dropped with
                ``drop_params``); more stop sequences than Gemini takes; a thinking budget and
                a thinking level together.
        """
        extra = dict(extra_body)
        aliased: dict[str, Any] = {}
        for alias, field in _GENERATION_ALIASES.items():
            if alias in extra:
                value = extra.pop(alias)
                if alias == "stop":
                    value = [value] if isinstance(value, str) else value
                    if isinstance(value, list) and len(value) > _MAX_STOP_SEQUENCES:
                        self.plan.unsupported_value(
                            "extra_body.stop",
                            f"'stop' takes at most {_MAX_STOP_SEQUENCES} sequences",
                        )
                aliased[field] = value
        native = extra.get("generationConfig")
        native = dict(native) if isinstance(native, Mapping) else None
        if not self.rules.penalties:
            for field, alias in _PENALTIES.items():
                if field in aliased:
                    self.plan.unsupported(f"extra_body.{alias}", f"'{alias}'")
                    del aliased[field]
                if native is not None and field in native:
                    path = f"extra_body.generationConfig.{field}"
                    self.plan.unsupported(path, f"'{path}'")
                    del native[field]
        if native is not None:
            extra["generationConfig"] = native
        merged = _deep_merge(payload, {"generationConfig": aliased} if aliased else {})
        merged = _deep_merge(merged, extra)
        generation = merged.get("generationConfig")
        thinking = generation.get("thinkingConfig") if isinstance(generation, dict) else None
        if isinstance(thinking, dict) and {"thinkingBudget", "thinkingLevel"} <= set(thinking):
            raise invalid(
                "extra_body.generationConfig.thinkingConfig",
                "'thinkingBudget' and 'thinkingLevel' cannot both be set (Gemini refuses "
                "it); 'reasoning.effort' sets one of them.",
                "unsupported_value",
            )
        return merged

    # -- the conversation --

    def _conversation(
        self, body: Mapping[str, Any], items: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The ``systemInstruction`` parts and the ``contents``."""
        system = [{"text": t} for t in instruction_texts(self.plan, body.get("instructions"))]
        # functionResponse needs the function's name, which function_call_output lacks.
        names = {
            item["call_id"]: item["name"]
            for item in items
            if item.get("type") == "function_call"
            and isinstance(item.get("call_id"), str)
            and isinstance(item.get("name"), str)
        }
        contents: list[dict[str, Any]] = []
        #: Signatures restored from reasoning items, waiting for the call they belong to.
        call_signatures: dict[str, str] = {}
        for i, item in enumerate(items):
            path = f"input[{i}]"
            kind = item.get("type", "message")
            if kind == "message":
                role = item.get("role")
                if role in ("system", "developer"):
                    system.extend({"text": t} for t in system_texts(self.plan, item, path))
                elif role in ("user", "assistant"):
                    assistant = role == "assistant"
                    parts = self._parts(item, path, assistant=assistant)
                    _append(contents, "model" if assistant else "user", parts)
                else:
                    raise invalid(f"{path}.role", f"Invalid value for '{path}.role': {role!r}.")
            elif kind == "function_call":
                _append(contents, "model", [self._function_call(item, path, call_signatures)])
            elif kind == "function_call_output":
                _append(contents, "user", [self._function_response(item, path, names)])
            elif kind == "reasoning":
                self._restore(item, path, contents, call_signatures)
            elif kind == "item_reference":
                self.plan.unsupported("input", f"'{path}' of type 'item_reference'")
            else:
                self.plan.unsupported(path, f"'{path}' of type {kind!r}")
        if self.rules.signed_calls:
            _add_placeholders(contents)
        return system, contents

    def _parts(
        self, item: Mapping[str, Any], path: str, *, assistant: bool
    ) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(item.get("content") or []):
            wire = self._part(part, f"{path}.content[{j}]", assistant=assistant)
            if wire is not None:
                parts.append(wire)
        return parts

    def _part(self, part: Any, path: str, *, assistant: bool) -> dict[str, Any] | None:
        """One content part as a Gemini part; None when it is empty or dropped."""
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            text = required_string(part, "text", path)
            return {"text": text} if text else None  # an empty part says nothing
        if kind == "refusal" and assistant:
            text = required_string(part, "refusal", path)
            return {"text": text} if text else None
        if kind == "input_image" and not assistant:
            return self._image(part, path)
        if kind == "input_file" and not assistant:
            return self._file(part, path)
        self.plan.unsupported(path, f"'{path}' of type {kind!r}")
        return None

    def _image(self, part: Mapping[str, Any], path: str) -> dict[str, Any] | None:
        if part.get("image_url") is None and part.get("file_id") is not None:
            self.plan.unsupported(path, f"'{path}' by 'file_id'")
            return None
        # ``detail`` has no equivalent worth mapping (docs/bridges.md §1: dropping it is fine).
        return _inline(required_string(part, "image_url", path), f"{path}.image_url")

    def _file(self, part: Mapping[str, Any], path: str) -> dict[str, Any] | None:
        data = part.get("file_data")
        url = part.get("file_url")
        if data is None and url is None and part.get("file_id") is not None:
            self.plan.unsupported(path, f"'{path}' by 'file_id'")
            return None
        if data is None:
            return _inline(required_string(part, "file_url", path), f"{path}.file_url")
        encoded = required_string(part, "file_data", path)
        if encoded.startswith("data:"):
            return _inline(encoded, f"{path}.file_data")
        # Plain base64: only the filename can say what it is.
        filename = part.get("filename")
        media_type = mimetypes.guess_type(filename)[0] if isinstance(filename, str) else None
        if media_type is None:
            self.plan.unsupported_value(
                f"{path}.filename",
                f"the media type of '{path}' cannot be told: send 'file_data' as a data URL "
                "or a 'filename' with a known extension",
            )
        return {"inlineData": {"mimeType": media_type, "data": encoded}}

    def _function_call(
        self, item: Mapping[str, Any], path: str, call_signatures: dict[str, str]
    ) -> dict[str, Any]:
        call_id = required_string(item, "call_id", path)
        arguments = required_string(item, "arguments", path)
        try:
            args = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise invalid(
                f"{path}.arguments", f"'{path}.arguments' is not valid JSON: {exc}."
            ) from exc
        if not isinstance(args, dict):
            # functionCall.args is a JSON object (Gemini's generateContent reference).
            raise invalid(f"{path}.arguments", f"'{path}.arguments' must be a JSON object.")
        call: dict[str, Any] = {"name": required_string(item, "name", path), "args": args}
        if not _minted(call_id):
            call["id"] = call_id
        part: dict[str, Any] = {"functionCall": call}
        signature = call_signatures.pop(call_id, None)
        if signature is not None:
            part["thoughtSignature"] = signature
        return part

    def _function_response(
        self, item: Mapping[str, Any], path: str, names: Mapping[str, str]
    ) -> dict[str, Any]:
        call_id = required_string(item, "call_id", path)
        name = names.get(call_id)
        if name is None:
            # Gemini requires the function's name (§2), known only from the call.
            raise invalid(
                path,
                f"'{path}' answers call_id {call_id!r}, but no function_call with that call_id "
                "is in the conversation (Gemini needs the function's name).",
            )
        output = item.get("output")
        media: list[dict[str, Any]] = []
        if isinstance(output, list):
            texts: list[str] = []
            for j, part in enumerate(output):
                where = f"{path}.output[{j}]"
                wire = self._part(part, where, assistant=False)
                if wire is None:
                    continue
                if "text" in wire:
                    texts.append(wire["text"])
                elif self.rules.function_response_media:
                    media.append(wire)
                else:
                    self.plan.unsupported(where, f"'{where}' (media in a function output)")
            output = "".join(texts)
        elif not isinstance(output, str):
            raise invalid(
                f"{path}.output",
                f"Invalid type for '{path}.output': expected a string or an array of parts.",
                "invalid_type",
            )
        # ``response`` must be an object; "output" is the key Gemini documents for it (§2).
        response: dict[str, Any] = {"name": name, "response": {"output": output}}
        if not _minted(call_id):
            response["id"] = call_id
        if media:
            response["parts"] = media
        return {"functionResponse": response}

    def _restore(
        self,
        item: Mapping[str, Any],
        path: str,
        contents: list[dict[str, Any]],
        call_signatures: dict[str, str],
    ) -> None:
        """Put back the signed parts a reasoning item of ours sealed for this model (module
        docstring); any other reasoning item is dropped (docs/bridges.md §5)."""
        token = item.get("encrypted_content")
        state = open_reasoning(token, self.provider, self.model)
        if state is None:
            if _broken_envelope(token):
                raise invalid(
                    f"{path}.encrypted_content",
                    f"The encrypted content of '{path}' could not be decoded: it was altered.",
                    "invalid_encrypted_content",
                )
            return
        signed_parts = state.get("parts")
        for signed in signed_parts if isinstance(signed_parts, list) else ():
            signature = signed.get("signature") if isinstance(signed, dict) else None
            if not isinstance(signature, str):
                continue
            kind = signed.get("part")
            if kind == "function_call" and isinstance(signed.get("call_id"), str):
                call_signatures[signed["call_id"]] = signature
            elif kind == "text":
                # The signed text ended the message just before this item.
                last = contents[-1] if contents and contents[-1]["role"] == "model" else None
                part = last["parts"][-1] if last is not None else None
                if (
                    part is not None
                    and "text" in part
                    and not part.get("thought")
                    and "thoughtSignature" not in part
                ):
                    part["thoughtSignature"] = signature
            elif kind == "empty":
                _append(contents, "model", [{"text": "", "thoughtSignature": signature}])
            elif kind == "thought" and isinstance(signed.get("text"), str):
                thought = {"text": signed["text"], "thought": True, "thoughtSignature": signature}
                _append(contents, "model", [thought])


def _inline(url: str, param: str) -> dict[str, Any]:
    """A ``data:`` URL as ``inlineData``."""
    parsed = data_url_parts(url)
    if parsed is None:
        if url.startswith(("https://", "http://")):
            # The gateway fetches remote media for Gemini before the codec runs
            # (inline_remote_media); a URL still here means that did not happen.
            raise invalid(
                param,
                f"'{param}' is a remote URL, which Gemini cannot fetch, and the gateway did not "
                "inline it (is media fetching configured?). Send it as a base64 data URL.",
                "unsupported_value",
            )
        raise invalid(param, f"'{param}' must be a base64 data URL.", "unsupported_value")
    media_type, data = parsed
    return {"inlineData": {"mimeType": media_type, "data": data}}


def _add_placeholders(contents: list[dict[str, Any]]) -> None:
    """Gemini 3 refuses a step whose first ``functionCall`` carries no signature (§5): give
    such a call (from elsewhere, or whose reasoning item was dropped) the placeholder."""
    for content in contents:
        if content["role"] != "model":
            continue
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and "thoughtSignature" not in first:
            first["thoughtSignature"] = PLACEHOLDER_SIGNATURE
