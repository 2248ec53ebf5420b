"""A deterministic fake of the Gemini API's generateContent (Gemini's generateContent reference),
answering real wire bytes: ``data: <GenerateContentResponse>`` SSE frames (CRLF, no end marker)
on ``:streamGenerateContent?alt=sse``, one GenerateContentResponse on ``:generateContent``, and
google.rpc error bodies (§7) for what the real API refuses.

What it answers is driven by the last user text of the request (tests/bridge_fakes.py serves
it over ``httpx.MockTransport`` or a loopback socket):

- ``say: <text>`` answers ``<text>``, one text part per word;
- ``think: <text>`` thinks first: a thought part (only with ``includeThoughts``) and a
  ``thoughtSignature`` the fake mints and remembers, on the first ``functionCall`` or else on
  the last text part (§5). Gemini 3 models sign their first call even without ``think:``;
- ``call: name {json}; name2 {json}`` calls those functions (whole ``functionCall`` parts; with
  an ``id`` on Gemini 3 models only, as the real API);
- ``long: <text>`` ends with ``MAX_TOKENS``; ``filter:`` with ``SAFETY`` and no content;
- ``json:`` answers ``{"answer": 42}`` and requires ``responseMimeType: application/json``;
- ``fail: <text>`` sends the text, then ``data: {"error": …}`` (INTERNAL); 500 unstreamed;
- directives combine with ``|`` (``think: plan | call: f {}``); a text without one is said.

Validation that matters to the bridge, answered with the real status and shape: the API key
header, the body's fields and part shapes, both thinking knobs at once, and above all the
history: every ``thoughtSignature`` must be one this fake issued, on the kind of part (and the
very call) it was issued on, or Google's placeholder; on Gemini 3 the first ``functionCall`` of
every model content must carry one; a model content's calls must be answered by as many
``functionResponse`` parts, ids matching.

Usage: ``promptTokenCount`` = words of every input text; ``candidatesTokenCount`` = words of
the answer text and the calls; ``thoughtsTokenCount`` = words of the thinking.
``:countTokens`` answers ``totalTokens`` counted as ``promptTokenCount``.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from typing import Any, Final

import attrs

from .bridge_fakes import Fault, Reply

__all__ = ["PLACEHOLDER_SIGNATURES", "FakeGemini"]

#: The dummy signatures Google documents (Gemini's generateContent reference).
PLACEHOLDER_SIGNATURES: Final = frozenset(
    {"skip_thought_signature_validator", "context_engineering_is_the_way_to_go"}
)
_STATUSES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ROUTE: Final = re.compile(
    r"/v1beta/models/([^/:?]+):(generateContent|streamGenerateContent|countTokens)"
)
_KNOWN_FIELDS: Final = frozenset(
    {
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "generationConfig",
        "safetySettings",
        "cachedContent",
        "serviceTier",
    }
)
_GENERATION_FIELDS: Final = frozenset(
    {
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "stopSequences",
        "candidateCount",
        "presencePenalty",
        "frequencyPenalty",
        "seed",
        "responseLogprobs",
        "logprobs",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "thinkingConfig",
        "mediaResolution",
        "speechConfig",
        "imageConfig",
    }
)
_DATA_FIELDS: Final = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
    }
)
_PART_METADATA: Final = frozenset(
    {"thought", "thoughtSignature", "videoMetadata", "mediaResolution"}
)
_FUNCTION_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
_DIRECTIVE: Final = re.compile(r"\s*(say|think|call|long|json|fail|filter):\s*(.*)", re.DOTALL)
_CALL_NAME: Final = re.compile(r"\s*([A-Za-z0-9_-]+)\s*")
_BROKEN_FRAME: Final = b'data: {"candidates": [{"content": {"role": "model", "par\r\n\r\n'


class _Rejected(Exception):
    """The request is refused with this HTTP status and google.rpc message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class _Issued:
    """Where an issued signature belongs: a ``functionCall`` (its name and id), a ``text``
    part or a ``thought`` part."""

    kind: str
    name: str | None = None
    call_id: str | None = None


@attrs.define
class _Answer:
    thought: str | None = None
    #: Parts of the answer after the thought, in order (text parts one per word).
    parts: list[dict[str, Any]] = attrs.Factory(list)
    finish: str = "STOP"
    fail: bool = False
    output_words: int = 0


def _words(text: str) -> int:
    return len(text.split())


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\r\n\r\n"


def _error_body(status: int, message: str, *, retry_delay: str | None = None) -> bytes:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUSES.get(status, "UNKNOWN"),
    }
    if retry_delay is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        ]
    return json.dumps({"error": error}, indent=2).encode()


def _texts(parts: Any) -> list[str]:
    return [
        p["text"] for p in parts or () if isinstance(p, dict) and isinstance(p.get("text"), str)
    ]


@attrs.define(eq=False)
class FakeGemini:
    """The fake; see the module docstring."""

    requests: list[dict[str, Any]] = attrs.Factory(list)
    paths: list[str] = attrs.Factory(list)
    headers: list[dict[str, str]] = attrs.Factory(list)
    faults: list[Fault] = attrs.Factory(list)
    _signatures: dict[str, _Issued] = attrs.Factory(dict)
    _minted: int = 0

    @property
    def issued_signatures(self) -> list[str]:
        """Every signature this fake has issued, oldest first."""
        return list(self._signatures)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        self.paths.append(path)
        self.headers.append(dict(headers))
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        self.requests.append(request if isinstance(request, dict) else {})
        fault = self.faults.pop(0) if self.faults else Fault()
        if fault.status is not None:
            retry = fault.headers.get("retry-after")
            delay = f"{retry}s" if fault.status == 429 and retry else None
            return self._error(
                fault.status, "Injected fault.", fault.headers, fault.stall, retry_delay=delay
            )
        route_path, _, query = path.partition("?")
        route = _ROUTE.fullmatch(route_path)
        try:
            if method != "POST" or route is None:
                raise _Rejected(404, f"Method not found: {method} {route_path}.")
            model, rpc = route.groups()
            if not headers.get("x-goog-api-key") and "key=" not in query:
                raise _Rejected(
                    401,
                    "Request is missing required authentication credential. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                )
            stream = rpc == "streamGenerateContent"
            if stream and "alt=sse" not in query.split("&"):
                raise _Rejected(400, "This fake streams Server-Sent Events only: add alt=sse.")
            if not isinstance(request, dict):
                raise _Rejected(400, "Invalid JSON payload received.")
            if rpc == "countTokens":
                return self._count_tokens(model, request, fault)
            self._validate(model, request)
            answer = self._answer(model, request)
        except _Rejected as exc:
            return self._error(exc.status, exc.message, {}, fault.stall)
        prompt = self._prompt_words(request)
        if not stream:
            if answer.fail:
                return self._error(500, "An internal error has occurred.", {}, fault.stall)
            data = json.dumps(self._whole(model, answer, prompt), indent=2).encode()
            if fault.malformed:
                data = data[: len(data) // 2]
            return Reply(
                status=200,
                headers={"content-type": "application/json; charset=UTF-8"},
                chunks=[data],
                reset_after=fault.reset_after,
                stall=fault.stall,
            )
        chunks = [_sse(c) for c in self._stream(model, answer, prompt)]
        if answer.fail:
            error = {
                "code": 500,
                "message": "An internal error has occurred.",
                "status": "INTERNAL",
            }
            chunks.append(_sse({"error": error}))
        if fault.malformed:
            chunks[len(chunks) // 2] = _BROKEN_FRAME
        return Reply(
            status=200,
            headers={"content-type": "text/event-stream"},
            chunks=chunks,
            reset_after=fault.reset_after,
            stall=fault.stall,
        )

    def _count_tokens(self, model: str, request: dict[str, Any], fault: Fault) -> Reply:
        """``:countTokens`` (Gemini's countTokens reference): ``contents`` alone, or a whole
        ``generateContentRequest`` naming ``models/{model}``, validated as a create's body;
        ``totalTokens`` counted as a create's ``promptTokenCount``."""
        for key in request:
            if key not in ("contents", "generateContentRequest"):
                raise _Rejected(
                    400, f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                )
        inner = request.get("generateContentRequest")
        if inner is not None:
            if "contents" in request:
                raise _Rejected(400, "contents and generateContentRequest are mutually exclusive.")
            if not isinstance(inner, dict) or inner.get("model") != f"models/{model}":
                raise _Rejected(400, f"* generateContentRequest.model: must be 'models/{model}'.")
            request = {k: v for k, v in inner.items() if k != "model"}
        self._validate(model, request)
        total = self._prompt_words(request)
        details = [{"modality": "TEXT", "tokenCount": total}]
        data = json.dumps({"totalTokens": total, "promptTokensDetails": details}).encode()
        if fault.malformed:
            data = data[: len(data) // 2]
        return Reply(
            status=200,
            headers={"content-type": "application/json; charset=UTF-8"},
            chunks=[data],
            reset_after=fault.reset_after,
            stall=fault.stall,
        )

    def _error(
        self,
        status: int,
        message: str,
        headers: dict[str, str],
        stall: float,
        *,
        retry_delay: str | None = None,
    ) -> Reply:
        return Reply(
            status=status,
            headers={"content-type": "application/json; charset=UTF-8", **headers},
            chunks=[_error_body(status, message, retry_delay=retry_delay)],
            stall=stall,
        )

    # -- validation (the rules of Gemini's generateContent reference-§5 that matter to the bridge)
    # --

    def _validate(self, model: str, request: dict[str, Any]) -> None:
        for key in request:
            if key not in _KNOWN_FIELDS:
                raise _Rejected(
                    400, f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                )
        contents = request.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _Rejected(400, "* GenerateContentRequest.contents: contents is not specified")
        system = request.get("systemInstruction")
        if system is not None:
            parts = system.get("parts") if isinstance(system, dict) else None
            if not isinstance(parts, list) or any(set(p) != {"text"} for p in parts):
                raise _Rejected(400, "systemInstruction: only text parts are supported.")
        for n, content in enumerate(contents):
            self._content(n, content)
        self._generation(request.get("generationConfig") or {})
        self._tools(request.get("tools") or [], request.get("toolConfig"))
        self._history(model, contents)

    def _content(self, n: int, content: Any) -> None:
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            raise _Rejected(400, "Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Rejected(400, f"* contents[{n}].parts: contents.parts must not be empty.")
        for k, part in enumerate(parts):
            data = set(part) & _DATA_FIELDS if isinstance(part, dict) else set()
            if len(data) != 1 or not set(part) <= _DATA_FIELDS | _PART_METADATA:
                raise _Rejected(
                    400,
                    f"* contents[{n}].parts[{k}].data: required oneof field 'data' must have "
                    "one initialized field",
                )
            inline = part.get("inlineData")
            if inline is not None and set(inline) != {"mimeType", "data"}:
                raise _Rejected(400, f"* contents[{n}].parts[{k}].inlineData: invalid blob.")

    def _generation(self, config: dict[str, Any]) -> None:
        for key in config:
            if key not in _GENERATION_FIELDS:
                raise _Rejected(
                    400,
                    f'Invalid JSON payload received. Unknown name "{key}" at '
                    "'generation_config': Cannot find field.",
                )
        temperature = config.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            raise _Rejected(
                400, "* GenerateContentRequest.generation_config.temperature: must be in [0, 2]"
            )
        thinking = config.get("thinkingConfig") or {}
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            raise _Rejected(400, "You can only set only one of thinking budget and thinking level.")
        if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
            raise _Rejected(
                400, "responseJsonSchema requires responseMimeType to be application/json."
            )

    def _tools(self, tools: list[Any], tool_config: Any) -> None:
        for tool in tools:
            for declaration in tool.get("functionDeclarations") or []:
                name = declaration.get("name")
                if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
                    raise _Rejected(400, f"* function_declarations.name: invalid name {name!r}")
                if "parameters" in declaration and "parametersJsonSchema" in declaration:
                    raise _Rejected(
                        400, "parameters and parametersJsonSchema are mutually exclusive."
                    )
        calling = (tool_config or {}).get("functionCallingConfig") or {}
        if calling.get("allowedFunctionNames") and calling.get("mode") not in ("ANY", "VALIDATED"):
            raise _Rejected(
                400,
                "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_"
                "names: only allowed when mode is ANY or VALIDATED.",
            )

    def _history(self, model: str, contents: list[dict[str, Any]]) -> None:
        for n, content in enumerate(contents):
            if content.get("role") != "model":
                continue
            parts = content["parts"]
            for part in parts:
                self._check_signature(part)
            calls = [p["functionCall"] for p in parts if "functionCall" in p]
            if not calls:
                continue
            first = next(p for p in parts if "functionCall" in p)
            if model.startswith("gemini-3") and "thoughtSignature" not in first:
                raise _Rejected(
                    400,
                    f"Function call `{first['functionCall'].get('name')}` in the `{n + 1}.` "
                    "content block is missing a `thought_signature`. Learn more: "
                    "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/thought-signatures",
                )
            if n + 1 < len(contents):
                self._responses_answer(calls, contents[n + 1])

    def _check_signature(self, part: dict[str, Any]) -> None:
        signature = part.get("thoughtSignature")
        if signature is None or signature in PLACEHOLDER_SIGNATURES:
            return
        issued = self._signatures.get(signature)
        if issued is None:
            raise _Rejected(400, "Corrupted thought signature.")
        call = part.get("functionCall")
        if issued.kind == "functionCall":
            right = call is not None and (call.get("name"), call.get("id")) == (
                issued.name,
                issued.call_id,
            )
        elif issued.kind == "thought":
            right = part.get("thought") is True
        else:
            right = "text" in part and part.get("thought") is not True
        if not right:
            raise _Rejected(400, "Thought signature is not valid for this part.")

    def _responses_answer(self, calls: list[dict[str, Any]], content: dict[str, Any]) -> None:
        responses = [p["functionResponse"] for p in content["parts"] if "functionResponse" in p]
        if content.get("role", "user") != "user" or len(responses) != len(calls):
            raise _Rejected(
                400,
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn.",
            )
        if Counter(r.get("name") for r in responses) != Counter(c.get("name") for c in calls):
            raise _Rejected(400, "functionResponse.name does not match functionCall.name.")
        ids = {c["id"] for c in calls if "id" in c}
        for response in responses:
            if response.get("id") is not None and response["id"] not in ids:
                raise _Rejected(400, "functionResponse.id does not match functionCall.id.")
            if not isinstance(response.get("response"), dict):
                raise _Rejected(400, "functionResponse.response must be a JSON object.")
        if ids - {r.get("id") for r in responses}:
            raise _Rejected(400, "functionResponse.id does not match functionCall.id.")

    # -- the answer --

    def _mint(self, model: str, issued: _Issued) -> str:
        self._minted += 1
        raw = f"fake-thought-signature/{model}/{self._minted}".encode()
        signature = base64.b64encode(raw).decode()
        self._signatures[signature] = issued
        return signature

    def _answer(self, model: str, request: dict[str, Any]) -> _Answer:
        text = self._last_user_text(request["contents"])
        directives = [m for seg in text.split("|") if (m := _DIRECTIVE.fullmatch(seg))]
        if not directives:
            directives = [m for m in [_DIRECTIVE.fullmatch(f"say: {text}")] if m]
        answer = _Answer()
        gemini_3 = model.startswith("gemini-3")
        for match in directives:
            kind, rest = match.group(1), match.group(2).strip()
            if kind == "think":
                answer.thought = rest
            elif kind == "call":
                for n, (name, args) in enumerate(_calls(rest)):
                    call: dict[str, Any] = {"name": name, "args": args}
                    if gemini_3:
                        self._minted += 1
                        call["id"] = f"fc{self._minted:04d}"
                    part: dict[str, Any] = {"functionCall": call}
                    # §5: Gemini 3 always signs the first call; 2.5 only when it thought.
                    if n == 0 and (gemini_3 or answer.thought is not None):
                        issued = _Issued("functionCall", name, call.get("id"))
                        part["thoughtSignature"] = self._mint(model, issued)
                    answer.parts.append(part)
                    answer.output_words += _words(name) + _words(json.dumps(args))
            elif kind == "filter":
                answer.finish = "SAFETY"
            else:
                if kind == "json":
                    config = request.get("generationConfig") or {}
                    if config.get("responseMimeType") != "application/json":
                        raise _Rejected(
                            400, "json: asked without responseMimeType application/json"
                        )
                    rest = '{"answer": 42}'
                answer.finish = "MAX_TOKENS" if kind == "long" else "STOP"
                answer.fail = kind == "fail"
                words = rest.split(" ")
                answer.parts += [{"text": w if i == 0 else f" {w}"} for i, w in enumerate(words)]
                answer.output_words += _words(rest)
        texts = [p for p in answer.parts if "text" in p]
        if (
            answer.thought is not None
            and texts
            and not any("functionCall" in p for p in answer.parts)
        ):
            texts[-1]["thoughtSignature"] = self._mint(model, _Issued("text"))
        return answer

    def _last_user_text(self, contents: list[dict[str, Any]]) -> str:
        for content in reversed(contents):
            if content.get("role", "user") == "user":
                texts = _texts(content["parts"])
                if texts:
                    return texts[-1]
        return ""

    def _prompt_words(self, request: dict[str, Any]) -> int:
        system = request.get("systemInstruction") or {}
        texts = _texts(system.get("parts"))
        for content in request["contents"]:
            texts += _texts(content["parts"])
        return sum(_words(t) for t in texts)

    def _usage(self, answer: _Answer, prompt: int, *, final: bool) -> dict[str, Any]:
        thoughts = _words(answer.thought or "")
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if final:
            usage["candidatesTokenCount"] = answer.output_words
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        usage["totalTokenCount"] = prompt + thoughts + (answer.output_words if final else 0)
        return usage

    def _thought_parts(self, answer: _Answer) -> list[dict[str, Any]]:
        """The thought summary, when the request asked for it (``includeThoughts``)."""
        config = self.requests[-1].get("generationConfig") or {}
        if answer.thought is None or not (config.get("thinkingConfig") or {}).get(
            "includeThoughts"
        ):
            return []
        return [{"text": answer.thought, "thought": True}]

    def _stream(self, model: str, answer: _Answer, prompt: int) -> list[dict[str, Any]]:
        pieces = [[p] for p in self._thought_parts(answer)]
        pieces += [[p] for p in answer.parts]
        if answer.fail:
            return [self._chunk(model, parts, answer, prompt, None) for parts in pieces]
        if answer.finish == "SAFETY":
            pieces = [*pieces, []]
        if not pieces:
            pieces = [[]]
        chunks = [self._chunk(model, parts, answer, prompt, None) for parts in pieces[:-1]]
        chunks.append(self._chunk(model, pieces[-1], answer, prompt, answer.finish))
        return chunks

    def _whole(self, model: str, answer: _Answer, prompt: int) -> dict[str, Any]:
        parts = self._thought_parts(answer)
        text: dict[str, Any] | None = None
        for part in answer.parts:
            if "text" in part:
                if text is None:
                    text = dict(part)
                    parts.append(text)
                else:
                    text["text"] += part["text"]
                    if "thoughtSignature" in part:
                        text["thoughtSignature"] = part["thoughtSignature"]
            else:
                parts.append(part)
        return self._chunk(model, parts, answer, prompt, answer.finish)

    def _chunk(
        self,
        model: str,
        parts: list[dict[str, Any]],
        answer: _Answer,
        prompt: int,
        finish: str | None,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {}
        if parts:
            candidate["content"] = {"role": "model", "parts": parts}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        if finish == "SAFETY":
            candidate["safetyRatings"] = [
                {
                    "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                    "probability": "HIGH",
                    "blocked": True,
                }
            ]
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(answer, prompt, final=finish is not None),
            "modelVersion": model,
            "responseId": f"fake-{self._minted:04d}",
        }


def _calls(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``name {json}; name2 {json}`` -> the calls (a missing argument object is ``{}``)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    decoder = json.JSONDecoder()
    at = 0
    while at < len(spec):
        match = _CALL_NAME.match(spec, at)
        if match is None or not match.group(1):
            break
        at = match.end()
        args: dict[str, Any] = {}
        if spec.startswith("{", at):
            args, at = decoder.raw_decode(spec, at)
        calls.append((match.group(1), args))
        at = len(spec) if (semi := spec.find(";", at)) < 0 else semi + 1
    return calls
