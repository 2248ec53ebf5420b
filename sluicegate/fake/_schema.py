"""A minimal valid instance of a JSON Schema, for the fake's structured output and tool arguments.

The fake answers ``text.format: json_schema`` with JSON that validates against the schema, and a
function call with arguments that validate against the tool's ``parameters``, so a client that
parses them (``responses.parse``, the Agents SDK's ``output_type``, a tool's pydantic model) gets
an object, not an error. "Minimal": only required properties, the fewest array items allowed,
the first ``enum`` value or ``anyOf`` branch, numbers at their lower bound. Strings are a short
word rather than ``""``, so a value is visibly present in a test's output.

Covers what pydantic and the SDKs' strict-schema converters emit: ``type`` (also as a list),
``properties``/``required``, ``items``/``prefixItems``/``minItems``, ``enum``/``const``,
``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``$defs``/``definitions`` (recursion cut off at a
depth no real schema needs), string ``format``/``minLength``/``maxLength`` and numeric bounds.
``pattern`` is not honoured: no generator can satisfy every regex, and no client checks it.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["minimal_instance"]

# Deeper than any schema an SDK generates; a self-referencing required property never ends.
_MAX_DEPTH: Final = 32
_WORD: Final = "fake"
_FORMATS: Final[Mapping[str, str]] = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "PT0S",
    "email": "fake@example.com",
    "idn-email": "fake@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def minimal_instance(schema: Any) -> Any:
    """A small JSON value (dicts, lists, str, int, bool, None) that ``schema`` accepts.

    ``$ref`` pointers resolve against ``schema`` itself (``#``, ``#/$defs/X``,
    ``#/definitions/X``, any JSON pointer into it); an unresolvable one gives ``None``.
    """
    return _instance(schema, schema, 0)


def _instance(schema: Any, root: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH or not isinstance(schema, Mapping):
        # ``true`` and ``{}`` accept anything; ``false`` accepts nothing, so nothing is better.
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _instance(_resolve(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            return _instance(branches[0], root, depth + 1)
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts:
        values = [_instance(part, root, depth + 1) for part in parts]
        if all(isinstance(value, dict) for value in values):
            merged: dict[str, Any] = {}
            for value in values:
                merged.update(value)
            # The schema's own keywords (``allOf`` beside ``properties``) still apply.
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            own = _instance(rest, root, depth + 1) if rest else None
            return {**merged, **own} if isinstance(own, dict) else merged
        return values[0]
    match _type_of(schema):
        case "object":
            return _object(schema, root, depth)
        case "array":
            return _array(schema, root, depth)
        case "string":
            return _string(schema)
        case "integer":
            return _number(schema, integer=True)
        case "number":
            return _number(schema, integer=False)
        case "boolean":
            return False
        case _:
            return None


def _type_of(schema: Mapping[str, Any]) -> str | None:
    declared = schema.get("type")
    if isinstance(declared, list):
        # ["string", "null"]: the non-null type is the more useful answer.
        named = [t for t in declared if isinstance(t, str) and t != "null"]
        return named[0] if named else ("null" if "null" in declared else None)
    if isinstance(declared, str):
        return declared
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _resolve(ref: str, root: Any) -> Any:
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None  # a remote reference: nothing an SDK sends
    node = root
    for raw in ref[2:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(token)
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _object(schema: Mapping[str, Any], root: Any, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        properties = {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    out: dict[str, Any] = {}
    for name in names:
        out[name] = _instance(properties.get(name, {}), root, depth + 1)
    minimum = schema.get("minProperties")
    if isinstance(minimum, int):
        for name, sub in properties.items():
            if len(out) >= minimum:
                break
            out.setdefault(name, _instance(sub, root, depth + 1))
    return out


def _array(schema: Mapping[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems")
    prefix_items = prefix if isinstance(prefix, list) else []
    minimum = schema.get("minItems")
    count = minimum if isinstance(minimum, int) and minimum > 0 else 0
    out = [_instance(sub, root, depth + 1) for sub in prefix_items[:count]]
    items = schema.get("items", {})
    while len(out) < count:
        out.append(_instance(items, root, depth + 1))
    return out


def _string(schema: Mapping[str, Any]) -> str:
    text = _FORMATS.get(str(schema.get("format")), _WORD)
    longest = schema.get("maxLength")
    if isinstance(longest, int) and len(text) > longest:
        text = _WORD[: max(longest, 0)]
    shortest = schema.get("minLength")
    if isinstance(shortest, int) and len(text) < shortest:
        text += "x" * (shortest - len(text))
    return text


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = _bound(schema, "minimum", "exclusiveMinimum", direction=1)
    high = _bound(schema, "maximum", "exclusiveMaximum", direction=-1)
    value: float = 0
    if low is not None and value < low:
        value = low
    elif high is not None and value > high:
        value = high
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
        value = math.ceil(value / step) * step
    if integer or float(value).is_integer():
        return math.ceil(value) if integer else int(value)
    return value


def _bound(
    schema: Mapping[str, Any], inclusive: str, exclusive: str, *, direction: int
) -> float | None:
    """The tightest value the bound allows (``direction`` 1: lower bound, -1: upper)."""
    found: float | None = None
    value = schema.get(inclusive)
    if isinstance(value, int | float) and not isinstance(value, bool):
        found = value
    value = schema.get(exclusive)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Draft 6+: a number. One past it for integers; for numbers, a small step.
        nudged = value + direction * (1 if float(value).is_integer() else 1e-9)
        if found is None or (nudged - found) * direction > 0:
            found = nudged
    return found
