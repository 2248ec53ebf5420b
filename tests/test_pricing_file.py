"""``general_settings.pricing_file``: a user's price table, in sluicegate's format or LiteLLM's,
laid over the bundled one (sluicegate/pricing/_file.py)."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import sluicegate
from sluicegate.codecs._registry import PROVIDERS
from sluicegate.config import load_config
from sluicegate.errors import ConfigError
from sluicegate.fake import open_fake_upstream
from sluicegate.pricing import ModelPrice, PriceTable
from sluicegate.pricing._file import SETTING, overlay, parse_pricing_file
from sluicegate.server import build_app
from sluicegate.store import SpendLog

from .bridge_fakes import mock_transport
from .conftest import MEMORY_STORE
from .fake_anthropic import FakeAnthropic
from .fake_gemini import FakeGemini

#: An excerpt in the shape of LiteLLM's ``model_prices_and_context_window.json``; every rate
#: differs from the bundled table's, so a price taken from the wrong table shows.
LITELLM: dict[str, Any] = {
    "sample_spec": {
        "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it.",
        "max_input_tokens": "max input tokens, if the provider specifies it.",
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "mode": "one of: chat, embedding, completion, image_generation, audio_transcription",
        "supports_function_calling": True,
    },
    "gpt-4o": {
        "max_tokens": 16384,
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "input_cost_per_token": 3.1e-06,
        "output_cost_per_token": 1.7e-05,
        "cache_read_input_token_cost": 1.3e-06,
        "input_cost_per_token_batches": 1.25e-06,
        "litellm_provider": "openai",
        "mode": "chat",
        "supports_function_calling": True,
        "supports_vision": True,
    },
    "azure/gpt-4o": {
        "max_tokens": 16384,
        "input_cost_per_token": 2.9e-06,
        "output_cost_per_token": 1.3e-05,
        "cache_read_input_token_cost": 1.45e-06,
        "litellm_provider": "azure",
        "mode": "chat",
    },
    "claude-sonnet-4-5": {
        "max_tokens": 64000,
        "input_cost_per_token": 3.3e-06,
        "output_cost_per_token": 1.6e-05,
        "cache_creation_input_token_cost": 4.1e-06,
        "cache_read_input_token_cost": 3.3e-07,
        "input_cost_per_token_above_200k_tokens": 6e-06,
        "litellm_provider": "anthropic",
        "mode": "chat",
        "supports_prompt_caching": True,
    },
    "anthropic/claude-haiku-4-5": {
        "input_cost_per_token": 1.1e-06,
        "output_cost_per_token": 5.5e-06,
        "cache_creation_input_token_cost": 1.4e-06,
        "cache_read_input_token_cost": 1.1e-07,
        "litellm_provider": "anthropic",
        "mode": "chat",
    },
    "gemini/gemini-2.5-flash": {
        "input_cost_per_token": 3.5e-07,
        "input_cost_per_audio_token": 1e-06,
        "output_cost_per_token": 2.7e-06,
        "output_cost_per_reasoning_token": 3.1e-06,
        "cache_read_input_token_cost": 7.5e-08,
        "litellm_provider": "gemini",
        "mode": "chat",
    },
    # The same model as Vertex AI serves it: a provider sluicegate does not route.
    "gemini-2.5-flash": {
        "input_cost_per_token": 9e-07,
        "output_cost_per_token": 9e-06,
        "litellm_provider": "vertex_ai-language-models",
        "mode": "chat",
    },
    "groq/llama-3.3-70b-versatile": {
        "input_cost_per_token": 5.9e-07,
        "output_cost_per_token": 7.9e-07,
        "litellm_provider": "groq",
        "mode": "chat",
    },
    "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0": {
        "input_cost_per_token": 3.3e-06,
        "output_cost_per_token": 1.65e-05,
        "litellm_provider": "bedrock_converse",
        "mode": "chat",
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "output_cost_per_token": 0.0,
        "output_vector_size": 1536,
        "litellm_provider": "openai",
        "mode": "embedding",
    },
    "dall-e-3": {
        "input_cost_per_pixel": 4.0054321e-08,
        "output_cost_per_pixel": 0.0,
        "litellm_provider": "openai",
        "mode": "image_generation",
    },
    "whisper-1": {
        "input_cost_per_second": 0.0001,
        "output_cost_per_second": 0.0001,
        "litellm_provider": "openai",
        "mode": "audio_transcription",
    },
}


def write(tmp_path: Path, document: object, name: str = "prices.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return str(path)


def file_rates(key: str) -> dict[str, float]:
    return {k: v for k, v in LITELLM[key].items() if k.endswith(("_cost", "_token"))}


# -- parsing -------------------------------------------------------------------------------------


def test_litellm_format_takes_what_sluicegate_routes_and_prices() -> None:
    table = parse_pricing_file(json.dumps(LITELLM), source="prices.json", providers=PROVIDERS)
    assert set(table.entries()) == {
        "openai/gpt-4o",
        "azure/gpt-4o",
        "anthropic/claude-sonnet-4-5",
        "anthropic/claude-haiku-4-5",
        "gemini/gemini-2.5-flash",
        "groq/llama-3.3-70b-versatile",
    }
    assert table.entries()["anthropic/claude-sonnet-4-5"] == ModelPrice(
        input_cost_per_token=3.3e-06,
        output_cost_per_token=1.6e-05,
        cache_read_input_token_cost=3.3e-07,
        cache_creation_input_token_cost=4.1e-06,
        source="prices.json",
    )
    assert table.entries()["gemini/gemini-2.5-flash"] == ModelPrice(
        input_cost_per_token=3.5e-07,
        output_cost_per_token=2.7e-06,
        cache_read_input_token_cost=7.5e-08,
        output_cost_per_reasoning_token=3.1e-06,
        source="prices.json",
    )
    openai = table.entries()["openai/gpt-4o"]
    assert openai.cache_read_input_token_cost == 1.3e-06
    assert openai.cache_creation_input_token_cost is None


def test_a_provider_prefixed_litellm_key_wins_over_the_bare_one_in_either_order() -> None:
    bare = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    prefixed = {"input_cost_per_token": 3e-06, "output_cost_per_token": 4e-06}
    for order in (["claude-x", "anthropic/claude-x"], ["anthropic/claude-x", "claude-x"]):
        rates = {"claude-x": bare, "anthropic/claude-x": prefixed}
        document = {k: {**rates[k], "litellm_provider": "anthropic", "mode": "chat"} for k in order}
        table = parse_pricing_file(json.dumps(document), source="p", providers=PROVIDERS)
        assert table.entries()["anthropic/claude-x"].input_cost_per_token == 3e-06


def test_own_format_is_told_from_schema_version() -> None:
    document = {
        "schema_version": 1,
        "models": {
            "openai/gpt-4o": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
        },
    }
    table = parse_pricing_file(json.dumps(document), source="p", providers=PROVIDERS)
    assert table.entries() == {
        "openai/gpt-4o": ModelPrice(input_cost_per_token=1e-06, output_cost_per_token=2e-06)
    }


def test_overlay_replaces_same_keys_and_keeps_the_rest() -> None:
    bundled = PriceTable.bundled()
    user = parse_pricing_file(json.dumps(LITELLM), source="p", providers=PROVIDERS)
    merged = overlay(bundled, user)
    assert merged.lookup("openai", "gpt-4o") == user.entries()["openai/gpt-4o"]
    assert merged.lookup("openai", "gpt-4o") != bundled.lookup("openai", "gpt-4o")
    # A dated snapshot of a model the user priced takes the user's price too.
    assert (
        merged.lookup("anthropic", "claude-sonnet-4-5-20250929")
        == (user.entries()["anthropic/claude-sonnet-4-5"])
    )
    assert merged.lookup("openai", "gpt-5") == bundled.lookup("openai", "gpt-5") is not None
    assert merged.lookup("fake", "anything") == bundled.lookup("fake", "anything") is not None


# -- through the gateway ---------------------------------------------------------------------------


@asynccontextmanager
async def native_upstream(provider: str) -> AsyncIterator[tuple[dict[str, Any], Any]]:
    async with open_fake_upstream(tokens=8) as fake:
        if provider == "azure":
            base = {"api_base": fake.base_url.removesuffix("/v1"), "api_version": "2025-04-01"}
        else:
            base = {"api_base": fake.base_url}
        yield base, None


@asynccontextmanager
async def bridged_upstream(provider: str) -> AsyncIterator[tuple[dict[str, Any], Any]]:
    if provider == "anthropic":
        yield {"api_base": "http://ant.test"}, mock_transport(FakeAnthropic())
    else:
        yield {"api_base": "http://gem.test"}, mock_transport(FakeGemini())


def gateway_config(
    model: str, pricing_file: str, upstream: dict[str, Any], **params: Any
) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "litellm_params": {"model": model, "api_key": "provider-key", **upstream, **params},
                "model_info": {"id": "dep-1"},
            }
        ],
        "general_settings": {
            "response_id_secret": "pricing-file-tests",
            "include_cost_in_streaming_usage": True,
            "store": MEMORY_STORE,
            "pricing_file": pricing_file,
        },
    }


def expected_cost(log: SpendLog, rates: dict[str, float]) -> float:
    """The file's rates times the spend row's counts (no cache writes: the fakes report none)."""
    input_rate = rates["input_cost_per_token"]
    output_rate = rates["output_cost_per_token"]
    cached_rate = rates.get("cache_read_input_token_cost", input_rate)
    reasoning_rate = rates.get("output_cost_per_reasoning_token", output_rate)
    uncached = log.input_tokens - log.cached_tokens
    plain_output = log.output_tokens - log.reasoning_tokens
    return (
        uncached * input_rate
        + log.cached_tokens * cached_rate
        + plain_output * output_rate
        + log.reasoning_tokens * reasoning_rate
    )


async def one_response(
    model: str,
    path: str,
    *,
    environ: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[sluicegate.Response, SpendLog]:
    provider = model.partition("/")[0]
    upstream = native_upstream if provider in ("openai", "azure") else bridged_upstream
    async with upstream(provider) as (base, transport):
        config = gateway_config(model, path, base, **(params or {}))
        async with sluicegate.open_gateway(
            config, transport=transport, rng=random.Random(3), environ=environ or {}
        ) as gw:
            response = await gw.responses(model="m", input="say: priced by the user's file")
            [log] = await gw.spend_logs()
    return response, log


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("openai/gpt-4o", "gpt-4o"),
        ("azure/gpt-4o", "azure/gpt-4o"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("anthropic/claude-haiku-4-5", "anthropic/claude-haiku-4-5"),
        ("gemini/gemini-2.5-flash", "gemini/gemini-2.5-flash"),
    ],
)
async def test_a_litellm_file_prices_responses(tmp_path: Path, model: str, key: str) -> None:
    path = write(tmp_path, LITELLM)
    response, log = await one_response(model, path)
    assert response.status is sluicegate.ResponseStatus.COMPLETED
    assert log.input_tokens > 0 and log.output_tokens > 0
    assert log.cost is not None
    assert log.cost == pytest.approx(expected_cost(log, file_rates(key)), rel=1e-12)
    assert response.usage is not None and response.usage.cost == pytest.approx(log.cost)
    provider, _, name = model.partition("/")
    bundled = PriceTable.bundled().lookup(provider, name)
    assert bundled is not None
    assert bundled.input_cost_per_token != LITELLM[key]["input_cost_per_token"]


async def test_our_format_over_the_bundled_table_through_os_environ(tmp_path: Path) -> None:
    rates = {"input_cost_per_token": 7e-06, "output_cost_per_token": 3e-05}
    path = write(
        tmp_path,
        {"schema_version": 1, "models": {"anthropic/claude-sonnet-4-5": rates}},
        "own.json",
    )
    _, log = await one_response(
        "anthropic/claude-sonnet-4-5",
        "os.environ/SLUICEGATE_PRICES",
        environ={"SLUICEGATE_PRICES": path},
    )
    assert log.cost == pytest.approx(expected_cost(log, rates), rel=1e-12)
    bundled = PriceTable.bundled().lookup("anthropic", "claude-sonnet-4-5")
    assert bundled is not None and bundled.input_cost_per_token != 7e-06


async def test_a_deployment_price_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, LITELLM)
    override = {"input_cost_per_token": 4.2e-06, "output_cost_per_token": 8.4e-06}
    _, log = await one_response("anthropic/claude-sonnet-4-5", path, params=override)
    assert log.cost == pytest.approx(expected_cost(log, override), rel=1e-12)
    assert log.cost != pytest.approx(expected_cost(log, file_rates("claude-sonnet-4-5")))


async def test_models_the_file_lacks_keep_the_bundled_price(tmp_path: Path) -> None:
    path = write(
        tmp_path, {"claude-x": {"input_cost_per_token": 1, "litellm_provider": "anthropic"}}
    )
    _, log = await one_response("anthropic/claude-sonnet-4-5", path)
    bundled = PriceTable.bundled().lookup("anthropic", "claude-sonnet-4-5")
    assert bundled is not None
    rates = {
        "input_cost_per_token": bundled.input_cost_per_token,
        "output_cost_per_token": bundled.output_cost_per_token,
    }
    assert log.cost == pytest.approx(expected_cost(log, rates), rel=1e-12)


# -- errors ----------------------------------------------------------------------------------------


async def open_with(path: str) -> None:
    config = {
        "general_settings": {"store": MEMORY_STORE, "pricing_file": path},
    }
    async with sluicegate.open_gateway(config, environ={}):
        pass  # pragma: no cover - every caller expects the open to fail


async def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.json")
    with pytest.raises(ConfigError) as caught:
        await open_with(missing)
    assert caught.value.path == SETTING
    assert "nowhere.json" in str(caught.value)


async def test_bad_json_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"gpt-4o": {"input_cost_per_token": 1e-06,')
    with pytest.raises(ConfigError, match="not valid JSON") as caught:
        await open_with(str(path))
    assert caught.value.path == SETTING


async def test_a_json_array_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JSON object") as caught:
        await open_with(write(tmp_path, [1, 2]))
    assert caught.value.path == SETTING


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ({"input_cost_per_token": -1e-06, "output_cost_per_token": 1e-06}, "input_cost_per_token"),
        ({"input_cost_per_token": 1e-06, "output_cost_per_token": "1e-06"}, "must be a number"),
        (
            {"input_cost_per_token": 1e-06, "cache_read_input_token_cost": True},
            "cache_read_input_token_cost",
        ),
    ],
)
async def test_a_bad_litellm_number_names_the_setting_and_the_entry(
    tmp_path: Path, rates: dict[str, Any], message: str
) -> None:
    document = {
        **LITELLM,
        "claude-bad": {**rates, "litellm_provider": "anthropic", "mode": "chat"},
    }
    with pytest.raises(ConfigError, match=message) as caught:
        await open_with(write(tmp_path, document))
    assert caught.value.path == f"{SETTING}: 'claude-bad'"


async def test_a_bad_entry_of_our_format_names_the_setting_and_the_entry(tmp_path: Path) -> None:
    document = {
        "schema_version": 1,
        "models": {"openai/gpt-4o": {"input_cost_per_token": -1, "output_cost_per_token": 0}},
    }
    with pytest.raises(ConfigError, match=">= 0") as caught:
        await open_with(write(tmp_path, document))
    assert caught.value.path == f"{SETTING}: models['openai/gpt-4o']"


def test_a_bad_entry_of_a_skipped_provider_is_not_read() -> None:
    # Skipped entries are LiteLLM's to judge: their fields are never read.
    document = {"bedrock/x": {"input_cost_per_token": "n/a", "litellm_provider": "bedrock"}}
    assert parse_pricing_file(json.dumps(document), source="p", providers=PROVIDERS).entries() == {}


def test_the_setting_is_a_path_string() -> None:
    config = load_config({"general_settings": {"pricing_file": "prices.json"}})
    assert config.general_settings.pricing_file == "prices.json"
    assert load_config(None).general_settings.pricing_file is None
    with pytest.raises(ConfigError) as caught:
        load_config({"general_settings": {"pricing_file": 3}})
    assert caught.value.path == SETTING


def test_the_proxy_refuses_a_bad_price_file_before_serving(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[")
    config = {
        "general_settings": {
            "allow_unauthenticated": True,
            "store": MEMORY_STORE,
            "pricing_file": str(path),
        }
    }
    with pytest.raises(ConfigError, match="not valid JSON") as caught:
        build_app(config, environ={})
    assert caught.value.path == SETTING
    path.write_text(json.dumps(LITELLM))
    assert build_app(config, environ={}) is not None
