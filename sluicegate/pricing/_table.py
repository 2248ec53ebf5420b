"""The model price table and the arithmetic that turns token usage into dollars.

Prices are USD per token, keyed ``provider/model``. The bundled table lives next to this module in
``prices.json``; every entry says where its numbers came from (``source``) and when they were last
checked (``checked``), because provider prices change and a number without provenance cannot be
audited.

Usage follows Responses API semantics (docs/bridges.md §7): ``input_tokens`` counts every prompt
token, including the ones read from a cache and the ones written to it; ``output_tokens`` counts
every generated token, including reasoning. The codecs normalise each provider's usage into that
shape, so one formula prices them all.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import re
import types
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
import cattrs.v
import orjson

from ..errors import ConfigError

__all__ = ["ModelPrice", "PriceTable", "TokenUsage", "compute_cost", "make_price_converter"]

#: The ``schema_version`` this module reads; bump it when the file's shape changes.
SCHEMA_VERSION = 1

_PACKAGE = "sluicegate.pricing"
_BUNDLED_FILE = "prices.json"

# A dated snapshot suffix: OpenAI's "-2024-08-06", Anthropic's "-20250929".
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")

# Azure OpenAI mostly lists OpenAI's prices for the same model; where Azure's price differs, the
# table carries an azure/ entry of its own, which lookup tries first.
_FALLBACK_PROVIDER = {"azure": "openai"}


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ModelPrice:
    """What one model costs, in USD per token.

    ``None`` for an optional rate means the provider does not price that kind of token separately:
    cache reads and cache writes then cost the input rate, reasoning the output rate.
    """

    input_cost_per_token: float = attrs.field(validator=_non_negative)
    output_cost_per_token: float = attrs.field(validator=_non_negative)
    cache_read_input_token_cost: float | None = attrs.field(default=None, validator=_non_negative)
    cache_creation_input_token_cost: float | None = attrs.field(
        default=None, validator=_non_negative
    )
    output_cost_per_reasoning_token: float | None = attrs.field(
        default=None, validator=_non_negative
    )
    #: Where the numbers came from (a URL, or a note for synthetic prices).
    source: str = ""
    #: ISO date (YYYY-MM-DD) the numbers were last checked against ``source``.
    checked: str = ""


@attrs.frozen(kw_only=True)
class TokenUsage:
    """The token counts of one response, in Responses API semantics.

    ``cached_tokens`` and ``cache_write_tokens`` are parts of ``input_tokens``;
    ``reasoning_tokens`` is part of ``output_tokens``.
    """

    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


def compute_cost(price: ModelPrice, usage: TokenUsage) -> float:
    """Price ``usage`` at ``price``.

    Uncached input is billed at the input rate, cache reads at the cache-read rate and cache writes
    at the cache-creation rate (each falling back to the input rate when the price has none).
    Output is billed at the output rate, except that reasoning tokens are billed at the reasoning
    rate when the price sets one.

    Counts a provider reports inconsistently (cached or reasoning tokens above their total, or
    negative counts) are clamped so that no part of the bill is negative and no token is billed
    twice.

    Args:
        price: the model's rates.
        usage: the response's token counts.

    Returns:
        The cost in USD.
    """
    input_tokens = max(usage.input_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), input_tokens)
    cache_writes = min(max(usage.cache_write_tokens, 0), input_tokens - cached)
    uncached = input_tokens - cached - cache_writes

    output_tokens = max(usage.output_tokens, 0)
    reasoning = min(max(usage.reasoning_tokens, 0), output_tokens)

    input_rate = price.input_cost_per_token
    cache_read_rate = _or(price.cache_read_input_token_cost, input_rate)
    cache_write_rate = _or(price.cache_creation_input_token_cost, input_rate)
    cost = uncached * input_rate + cached * cache_read_rate + cache_writes * cache_write_rate

    if price.output_cost_per_reasoning_token is None:
        cost += output_tokens * price.output_cost_per_token
    else:
        cost += (output_tokens - reasoning) * price.output_cost_per_token
        cost += reasoning * price.output_cost_per_reasoning_token
    return cost


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _read_only(entries: Mapping[str, ModelPrice]) -> Mapping[str, ModelPrice]:
    # A private copy behind a read-only view: entries() can hand it out without a defensive copy.
    return types.MappingProxyType(dict(entries))


@attrs.frozen(kw_only=True)
class PriceTable:
    """Model prices keyed ``provider/model``, with the lookup rules the accountant relies on.

    A key whose model part is ``*`` (``fake/*``) prices every model of that provider that has no
    entry of its own.
    """

    _entries: Mapping[str, ModelPrice] = attrs.field(converter=_read_only)

    @classmethod
    def bundled(cls) -> PriceTable:
        """The price table shipped with sluicegate (``pricing/prices.json``), loaded once.

        Raises:
            ConfigError: the bundled file is malformed (a packaging bug).
        """
        return _bundled_table()

    @classmethod
    def from_json(cls, data: bytes | str, *, origin: str = "price table") -> PriceTable:
        """Parse a price file of the bundled file's shape.

        Args:
            data: the JSON document.
            origin: what to call the document in error messages (e.g. its path).

        Raises:
            ConfigError: the document is not JSON or not a valid price table.
        """
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}", path=origin) from exc
        return cls.from_mapping(document, origin=origin)

    @classmethod
    def from_mapping(cls, document: object, *, origin: str = "price table") -> PriceTable:
        """Build a table from an already-parsed price document.

        The document is ``{"schema_version": 1, "models": {"provider/model": {...}, ...}}``; each
        entry has the fields of :class:`ModelPrice` and nothing else.

        Args:
            document: the parsed document.
            origin: what to call the document in error messages (e.g. its path).

        Raises:
            ConfigError: the document is malformed; the message names the offending model key.
        """
        if not isinstance(document, Mapping):
            raise ConfigError("expected a JSON object", path=origin)
        version = document.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"unsupported schema_version {version!r} (expected {SCHEMA_VERSION})",
                path=f"{origin}: schema_version",
            )
        models = document.get("models")
        if not isinstance(models, Mapping):
            raise ConfigError("expected an object of model prices", path=f"{origin}: models")
        extra = set(document) - {"schema_version", "models"}
        if extra:
            raise ConfigError(f"unknown keys {sorted(extra)}", path=origin)

        converter = make_price_converter()
        entries: dict[str, ModelPrice] = {}
        for key, raw in models.items():
            where = f"{origin}: models[{key!r}]"
            if not isinstance(key, str) or not _is_model_key(key):
                raise ConfigError("model keys must look like 'provider/model'", path=where)
            try:
                entries[key] = converter.structure(raw, ModelPrice)
            except cattrs.BaseValidationError as exc:
                detail = "; ".join(
                    cattrs.transform_error(exc, path="$", format_exception=_format_exception)
                )
                raise ConfigError(f"invalid price entry: {detail}", path=where) from exc
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"invalid price entry: {exc}", path=where) from exc
        return cls(entries=entries)

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price of ``model`` as served by ``provider``, or ``None`` if the table has none.

        Tried in order: the exact ``provider/model`` key; the model with a trailing snapshot date
        (``-2024-08-06``, ``-20250929``) removed; the provider's ``*`` wildcard entry. An ``azure``
        model with no entry of its own then takes the ``openai`` entry of the same model.
        """
        price = self._lookup_in(provider, model)
        if price is None and provider in _FALLBACK_PROVIDER:
            price = self._lookup_in(_FALLBACK_PROVIDER[provider], model)
        return price

    def _lookup_in(self, provider: str, model: str) -> ModelPrice | None:
        price = self._entries.get(f"{provider}/{model}")
        if price is not None:
            return price
        undated = _DATE_SUFFIX.sub("", model)
        if undated != model and undated:
            price = self._entries.get(f"{provider}/{undated}")
            if price is not None:
                return price
        return self._entries.get(f"{provider}/*")

    def entries(self) -> Mapping[str, ModelPrice]:
        """Every entry, keyed ``provider/model`` (read-only)."""
        return self._entries


def _is_model_key(key: str) -> bool:
    provider, slash, model = key.partition("/")
    return bool(provider and slash and model)


def make_price_converter() -> cattrs.Converter:
    """The converter for price files: strict, so a typo or a quoted number is an error."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(float, _structure_number)
    converter.register_structure_hook(str, _structure_str)
    return converter


def _structure_number(value: object, _type: object) -> float:
    # cattrs' default would take "2.5e-06" or `true` (bool is an int); in a price file both are
    # mistakes.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    # Our hooks and validators raise messages meant for people; cattrs' own say less.
    if type(exc) in (TypeError, ValueError):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _structure_str(value: object, _type: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


@functools.cache
def _bundled_table() -> PriceTable:
    data = importlib.resources.files(_PACKAGE).joinpath(_BUNDLED_FILE).read_bytes()
    return PriceTable.from_json(data, origin=f"sluicegate/pricing/{_BUNDLED_FILE}")
