"""The bundled price table, its lookup rules, and the cost formula."""

from __future__ import annotations

import datetime
import importlib.resources
import json
from typing import Any

import pytest

import sluicegate.pricing
from sluicegate.errors import ConfigError
from sluicegate.pricing import ModelPrice, PriceTable, TokenUsage, compute_cost

PROVIDERS = {"openai", "azure", "anthropic", "gemini", "fake"}

REQUIRED = [
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "openai/gpt-4.1",
    "openai/gpt-4.1-mini",
    "openai/gpt-4.1-nano",
    "openai/o3",
    "openai/o4-mini",
    "openai/o3-mini",
    "openai/gpt-5",
    "openai/gpt-5-mini",
    "openai/gpt-5-nano",
    "anthropic/claude-sonnet-4-5",
    "anthropic/claude-opus-4-1",
    "anthropic/claude-haiku-4-5",
    "gemini/gemini-2.5-pro",
    "gemini/gemini-2.5-flash",
    "gemini/gemini-2.5-flash-lite",
    "fake/*",
]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.bundled()


def _price(table: PriceTable, provider: str, model: str) -> ModelPrice:
    price = table.lookup(provider, model)
    assert price is not None, f"{provider}/{model}"
    return price


# -- exports and packaging ---------------------------------------------------------------------


def test_exports_are_explicit_and_sorted() -> None:
    assert sluicegate.pricing.__all__ == sorted(sluicegate.pricing.__all__)
    assert set(sluicegate.pricing.__all__) == {
        "ModelPrice",
        "PriceTable",
        "TokenUsage",
        "compute_cost",
    }
    for name in sluicegate.pricing.__all__:
        assert getattr(sluicegate.pricing, name).__module__ == "sluicegate.pricing._table"


def test_prices_json_is_package_data() -> None:
    resource = importlib.resources.files("sluicegate.pricing").joinpath("prices.json")
    assert resource.is_file()
    assert json.loads(resource.read_bytes())["schema_version"] == 1


def test_bundled_table_is_loaded_once() -> None:
    assert PriceTable.bundled() is PriceTable.bundled()


# -- the bundled entries -----------------------------------------------------------------------


def test_required_models_are_priced(table: PriceTable) -> None:
    missing = [key for key in REQUIRED if key not in table.entries()]
    assert missing == []


def test_every_entry_is_sourced_and_sane(table: PriceTable) -> None:
    for key, price in table.entries().items():
        provider, _, model = key.partition("/")
        assert provider in PROVIDERS, key
        assert model, key
        assert price.input_cost_per_token > 0, key
        assert price.output_cost_per_token > 0, key
        for rate in (
            price.cache_read_input_token_cost,
            price.cache_creation_input_token_cost,
            price.output_cost_per_reasoning_token,
        ):
            assert rate is None or rate > 0, key
        # A cache hit never costs more than a fresh input token.
        if price.cache_read_input_token_cost is not None:
            assert price.cache_read_input_token_cost <= price.input_cost_per_token, key
        assert price.source.strip(), key
        checked = datetime.date.fromisoformat(price.checked)
        assert price.checked == checked.isoformat(), key


def test_entries_are_read_only(table: PriceTable) -> None:
    entries: Any = table.entries()
    with pytest.raises(TypeError):
        entries["openai/free"] = ModelPrice(input_cost_per_token=0, output_cost_per_token=0)


def test_fake_provider_price_is_synthetic(table: PriceTable) -> None:
    price = table.entries()["fake/*"]
    assert price.input_cost_per_token == 1e-06
    assert price.output_cost_per_token == 2e-06
    assert price.cache_read_input_token_cost == 5e-07
    assert price.source == "sluicegate: synthetic price for the built-in fake provider"


# -- lookup ------------------------------------------------------------------------------------


def test_lookup_exact(table: PriceTable) -> None:
    assert _price(table, "openai", "gpt-4o") is table.entries()["openai/gpt-4o"]
    assert _price(table, "gemini", "gemini-2.5-pro") is table.entries()["gemini/gemini-2.5-pro"]


@pytest.mark.parametrize(
    ("provider", "model", "key"),
    [
        ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai", "gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),
        ("openai", "gpt-5-2025-08-07", "openai/gpt-5"),
        ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5"),
    ],
)
def test_lookup_dated_snapshot(table: PriceTable, provider: str, model: str, key: str) -> None:
    assert table.lookup(provider, model) is table.entries()[key]


def test_lookup_exact_snapshot_beats_its_undated_alias(table: PriceTable) -> None:
    # gpt-4o-2024-05-13 costs twice gpt-4o's input rate; stripping the date would under-bill it.
    snapshot = _price(table, "openai", "gpt-4o-2024-05-13")
    assert snapshot is table.entries()["openai/gpt-4o-2024-05-13"]
    assert snapshot.input_cost_per_token > _price(table, "openai", "gpt-4o").input_cost_per_token


def test_lookup_only_strips_a_trailing_date(table: PriceTable) -> None:
    assert table.lookup("openai", "gpt-4o-2024-08-06-custom") is None
    assert table.lookup("openai", "gpt-4o-202408") is None


def test_lookup_wildcard(table: PriceTable) -> None:
    assert table.lookup("fake", "anything") is table.entries()["fake/*"]
    assert table.lookup("fake", "echo-2025-01-01") is table.entries()["fake/*"]


def test_lookup_azure_falls_back_to_openai(table: PriceTable) -> None:
    assert "azure/o3" not in table.entries()
    assert table.lookup("azure", "o3") is table.entries()["openai/o3"]
    assert table.lookup("azure", "gpt-4o-2024-11-20") is table.entries()["openai/gpt-4o"]


def test_lookup_azure_entry_wins_over_openai(table: PriceTable) -> None:
    azure = _price(table, "azure", "gpt-4o-mini")
    assert azure is table.entries()["azure/gpt-4o-mini"]
    assert azure != _price(table, "openai", "gpt-4o-mini")


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "no-such-model"),
        ("anthropic", "gpt-4o"),  # no cross-provider fallback but azure -> openai
        ("gemini", "gemini-1.0-ultra"),
        ("nowhere", "gpt-4o"),
        ("openai", ""),
    ],
)
def test_lookup_unknown_is_none(table: PriceTable, provider: str, model: str) -> None:
    assert table.lookup(provider, model) is None


def test_lookup_on_a_custom_table_uses_the_same_rules() -> None:
    cheap = ModelPrice(input_cost_per_token=1e-06, output_cost_per_token=1e-06)
    table = PriceTable(entries={"azure/*": cheap})
    # The wildcard is the provider's own entry, so it is tried before the openai fallback.
    assert table.lookup("azure", "gpt-4o") is cheap
    assert PriceTable(entries={}).lookup("azure", "gpt-4o") is None


# -- compute_cost ------------------------------------------------------------------------------

GPT_4O = ModelPrice(
    input_cost_per_token=2.5e-06, output_cost_per_token=1e-05, cache_read_input_token_cost=1.25e-06
)
SONNET = ModelPrice(
    input_cost_per_token=3e-06,
    output_cost_per_token=1.5e-05,
    cache_read_input_token_cost=3e-07,
    cache_creation_input_token_cost=3.75e-06,
)
REASONER = ModelPrice(
    input_cost_per_token=1e-06, output_cost_per_token=4e-06, output_cost_per_reasoning_token=8e-06
)
PLAIN = ModelPrice(input_cost_per_token=1e-06, output_cost_per_token=2e-06)


def test_cost_of_nothing_is_zero() -> None:
    assert compute_cost(GPT_4O, TokenUsage()) == 0.0


def test_cost_plain() -> None:
    # 1000 * $2.50/M + 200 * $10/M = 0.0025 + 0.002
    assert compute_cost(GPT_4O, TokenUsage(input_tokens=1000, output_tokens=200)) == pytest.approx(
        0.0045
    )


def test_cost_with_cached_input() -> None:
    # 600 uncached * $2.50/M + 400 cached * $1.25/M + 200 * $10/M = 0.0015 + 0.0005 + 0.002
    usage = TokenUsage(input_tokens=1000, cached_tokens=400, output_tokens=200)
    assert compute_cost(GPT_4O, usage) == pytest.approx(0.004)


def test_cost_with_cache_reads_and_writes() -> None:
    # Anthropic-shaped: input_tokens counts uncached + cache reads + cache writes (docs/bridges.md
    # §7). 2000 * $3/M + 6000 * $0.30/M + 2000 * $3.75/M + 1000 * $15/M
    # = 0.006 + 0.0018 + 0.0075 + 0.015
    usage = TokenUsage(
        input_tokens=10_000, cached_tokens=6_000, cache_write_tokens=2_000, output_tokens=1_000
    )
    assert compute_cost(SONNET, usage) == pytest.approx(0.0303)


def test_cost_with_reasoning_priced_separately() -> None:
    # 100 * $1/M + 400 visible * $4/M + 600 reasoning * $8/M = 0.0001 + 0.0016 + 0.0048
    usage = TokenUsage(input_tokens=100, output_tokens=1000, reasoning_tokens=600)
    assert compute_cost(REASONER, usage) == pytest.approx(0.0065)


def test_cost_with_reasoning_at_the_output_rate() -> None:
    # o3 bills reasoning as output: 1000 * $8/M, however much of it was reasoning.
    o3 = ModelPrice(input_cost_per_token=2e-06, output_cost_per_token=8e-06)
    usage = TokenUsage(output_tokens=1000, reasoning_tokens=800)
    assert compute_cost(o3, usage) == pytest.approx(0.008)


def test_cost_without_cache_rates_bills_the_input_rate() -> None:
    usage = TokenUsage(input_tokens=1000, cached_tokens=500, cache_write_tokens=200)
    assert compute_cost(PLAIN, usage) == pytest.approx(0.001)


def test_cost_of_bundled_fake_price(table: PriceTable) -> None:
    # 800 * $1/M + 200 * $0.50/M + 300 * $2/M = 0.0008 + 0.0001 + 0.0006
    usage = TokenUsage(input_tokens=1000, cached_tokens=200, output_tokens=300)
    assert compute_cost(_price(table, "fake", "echo"), usage) == pytest.approx(0.0015)


def test_cost_clamps_cached_above_input() -> None:
    # A provider reporting more cached than total input: all 100 input tokens bill as cached.
    usage = TokenUsage(input_tokens=100, cached_tokens=500)
    assert compute_cost(GPT_4O, usage) == pytest.approx(100 * 1.25e-06)


def test_cost_clamps_cache_writes_to_what_input_leaves() -> None:
    # 80 reads + 50 writes > 100 input: reads keep 80, writes get the remaining 20.
    usage = TokenUsage(input_tokens=100, cached_tokens=80, cache_write_tokens=50)
    assert compute_cost(SONNET, usage) == pytest.approx(80 * 3e-07 + 20 * 3.75e-06)


def test_cost_clamps_reasoning_above_output() -> None:
    usage = TokenUsage(output_tokens=100, reasoning_tokens=500)
    assert compute_cost(REASONER, usage) == pytest.approx(100 * 8e-06)


def test_cost_is_never_negative() -> None:
    usage = TokenUsage(
        input_tokens=-10,
        cached_tokens=-5,
        cache_write_tokens=-5,
        output_tokens=-10,
        reasoning_tokens=-3,
    )
    for price in (GPT_4O, SONNET, REASONER, PLAIN):
        assert compute_cost(price, usage) == 0.0
    assert compute_cost(GPT_4O, TokenUsage(input_tokens=10, cached_tokens=-5)) == pytest.approx(
        10 * 2.5e-06
    )


# -- malformed price files ---------------------------------------------------------------------


def _document(**entry: object) -> dict[str, object]:
    good: dict[str, object] = {
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "source": "test",
        "checked": "2026-01-01",
    }
    good.update(entry)
    return {"schema_version": 1, "models": {"openai/broken": good}}


def test_from_mapping_accepts_a_good_document() -> None:
    table = PriceTable.from_mapping(_document(cache_read_input_token_cost=5e-07))
    assert table.lookup("openai", "broken") == ModelPrice(
        input_cost_per_token=1e-06,
        output_cost_per_token=2e-06,
        cache_read_input_token_cost=5e-07,
        source="test",
        checked="2026-01-01",
    )


@pytest.mark.parametrize(
    "entry",
    [
        {"input_cost_per_token": "1e-06"},  # quoted number
        {"output_cost_per_token": True},
        {"input_cost_per_token": None},
        {"cache_read_input_token_cost": [1]},
        {"input_cost_per_token": -1e-06},
        {"output_cost_per_token": float("nan")},
        {"source": 3},
        {"cached_input_cost": 1e-07},  # unknown key, e.g. a typo
    ],
)
def test_malformed_entry_names_the_model(entry: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"openai/broken"):
        PriceTable.from_mapping(_document(**entry), origin="prices.json")


def test_missing_required_rate_names_the_model() -> None:
    document = _document()
    models: Any = document["models"]
    del models["openai/broken"]["output_cost_per_token"]
    with pytest.raises(ConfigError, match=r"openai/broken.*output_cost_per_token"):
        PriceTable.from_mapping(document)


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"models": {}},
        {"schema_version": 2, "models": {}},
        {"schema_version": 1, "models": []},
        {"schema_version": 1, "models": {}, "extra": 1},
        {"schema_version": 1, "models": {"gpt-4o": {}}},
        {"schema_version": 1, "models": {"openai/": {}}},
    ],
)
def test_malformed_document_is_a_config_error(document: object) -> None:
    with pytest.raises(ConfigError):
        PriceTable.from_mapping(document)


def test_from_json_rejects_invalid_json() -> None:
    with pytest.raises(ConfigError, match=r"prices\.json"):
        PriceTable.from_json(b"{not json", origin="prices.json")
