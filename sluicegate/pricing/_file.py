"""A user's own price file (``general_settings.pricing_file``), laid over the bundled table.

The file is either sluicegate's own format (``{"schema_version": 1, "models": {...}}``, the shape
of the bundled ``prices.json``) or LiteLLM's ``model_prices_and_context_window.json``: an object
keyed by model name whose entries carry ``litellm_provider``, ``mode`` and per-token rates. The
format is told from the content: a top-level ``schema_version`` means ours.

From a LiteLLM file only what sluicegate routes and prices is taken: entries whose
``litellm_provider`` is a provider a ``model_list`` entry may name (the caller says which), in a
mode priced per token (chat, completion, responses). Everything else (``sample_spec``, bedrock,
vertex_ai, embeddings, image generation...) is skipped. Of an entry's fields, the rates
:class:`ModelPrice` has are read; a rate that is there but not a finite number >= 0 is an error
naming the entry.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import orjson

from ..errors import ConfigError
from ._table import ModelPrice, PriceTable

__all__ = ["SETTING", "load_pricing_file", "overlay", "parse_pricing_file"]

#: The setting every error of a user's price file names.
SETTING = "general_settings.pricing_file"

#: LiteLLM modes priced per text token, as the gateway's responses are.
_PRICED_MODES = frozenset({"chat", "completion", "responses"})

#: LiteLLM's field -> ours. Its ``input_cost_per_token`` and ``output_cost_per_token`` are the
#: required pair; audio and tiered (``..._above_200k_tokens``) rates have no field of ours.
_OPTIONAL_RATES = (
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
)


def load_pricing_file(path: str, *, providers: Collection[str]) -> PriceTable:
    """Read and parse the price file at ``path`` (the user's entries only); of a LiteLLM file,
    the entries of ``providers`` (the ones a ``model_list`` may name).

    Raises:
        ConfigError: the file cannot be read, is not JSON, or has a malformed entry; the error
            names ``general_settings.pricing_file``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror or exc}", path=SETTING) from exc
    return parse_pricing_file(data, source=path, providers=providers)


def parse_pricing_file(data: bytes | str, *, source: str, providers: Collection[str]) -> PriceTable:
    """Parse a price file in either format.

    Args:
        data: the file's content.
        source: where it came from (its path), for the entries' ``source`` and error messages.
        providers: the providers whose entries a LiteLLM file gives (the others are skipped).

    Raises:
        ConfigError: not JSON, not an object, or a malformed entry.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{source!r} is not valid JSON: {exc}", path=SETTING) from exc
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source!r} must hold a JSON object", path=SETTING)
    if "schema_version" in document:
        return PriceTable.from_mapping(document, origin=SETTING)
    return _from_litellm(document, source, providers)


def overlay(base: PriceTable, user: PriceTable) -> PriceTable:
    """``base`` with ``user``'s entries in place of its own for the same ``provider/model``."""
    return PriceTable(entries={**base.entries(), **user.entries()})


def _from_litellm(
    document: Mapping[str, object], source: str, providers: Collection[str]
) -> PriceTable:
    entries: dict[str, ModelPrice] = {}
    prefixed: set[str] = set()
    for name, raw in document.items():
        if name == "sample_spec" or not isinstance(raw, Mapping):
            continue
        provider = raw.get("litellm_provider")
        mode = raw.get("mode", "chat")
        if provider not in providers or mode not in _PRICED_MODES:
            continue
        if "input_cost_per_token" not in raw and "output_cost_per_token" not in raw:
            continue  # priced per second, per character or per request: nothing of ours
        assert isinstance(provider, str)
        # LiteLLM names some models bare ("claude-sonnet-4-5", "gpt-4o") and some with the
        # provider in front ("gemini/gemini-2.5-pro", "azure/gpt-4o").
        model = name.removeprefix(f"{provider}/")
        key = f"{provider}/{model}"
        if key in prefixed and model == name:
            continue  # the provider-prefixed entry of the same model is the more specific one
        entries[key] = _litellm_price(raw, f"{SETTING}: {name!r}", source)
        if model != name:
            prefixed.add(key)
    return PriceTable(entries=entries)


def _litellm_price(raw: Mapping[str, object], where: str, source: str) -> ModelPrice:
    rates = {
        field: _rate(raw, field, where)
        for field in ("input_cost_per_token", "output_cost_per_token", *_OPTIONAL_RATES)
    }
    try:
        return ModelPrice(
            input_cost_per_token=rates["input_cost_per_token"] or 0.0,
            output_cost_per_token=rates["output_cost_per_token"] or 0.0,
            cache_read_input_token_cost=rates["cache_read_input_token_cost"],
            cache_creation_input_token_cost=rates["cache_creation_input_token_cost"],
            output_cost_per_reasoning_token=rates["output_cost_per_reasoning_token"],
            source=source,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid price entry: {exc}", path=where) from exc


def _rate(raw: Mapping[str, object], field: str, where: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"invalid price entry: {field} must be a number, got {value!r}", path=where
        )
    return float(value)
