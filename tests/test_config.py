"""Configuration loading: LiteLLM's shape, os.environ/ secrets, errors that name the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from sluicegate.config import (
    ROUTING_STRATEGIES,
    GeneralSettings,
    RouterSettings,
    RoutingStrategy,
    StoreBackend,
    StoreSettings,
    build_deployment,
    derive_deployment_id,
    load_config,
)
from sluicegate.errors import ConfigError

YAML = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/TEST_OPENAI_KEY
      weight: 2
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
    model_info:
      id: eu-1
      mode: responses
  - model_name: gpt-4o
    litellm_params:
      model: azure/my-deployment
      api_base: https://r.openai.azure.com
      api_key: os.environ/TEST_AZURE_KEY
router_settings:
  num_retries: 4
  idle_timeout: 30
general_settings:
  response_id_secret: os.environ/TEST_ID_SECRET
  include_cost_in_streaming_usage: true
"""
ENV = {"TEST_OPENAI_KEY": "sk-one", "TEST_AZURE_KEY": "az-two", "TEST_ID_SECRET": "s"}


def test_yaml_file_loads_with_secrets_resolved(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(YAML)
    config = load_config(path, environ=ENV)
    first, second = config.model_list
    assert first.litellm_params.api_key is not None
    assert first.litellm_params.api_key.reveal() == "sk-one"
    assert "sk-one" not in repr(config)  # secrets never show in reprs or logs
    assert first.model_info.id == "eu-1" and first.model_info.extra == {"mode": "responses"}
    assert config.router_settings.num_retries == 4
    assert config.general_settings.include_cost_in_streaming_usage
    dep = build_deployment(first, config.router_settings, environ={})
    assert (dep.id, dep.provider, dep.model, dep.weight) == ("eu-1", "openai", "gpt-4o", 2.0)
    assert dep.api_base == "https://api.openai.com/v1" and dep.max_retries == 4
    assert dep.timeouts.idle == 30 and dep.price is not None
    azure = build_deployment(second, config.router_settings, environ={})
    assert azure.id.startswith("dep-") and azure.provider == "azure"


@pytest.mark.parametrize(
    ("config", "path"),
    [
        (
            {
                "model_list": [
                    {"model_name": "a", "litellm_params": {"model": "openai/x", "weight": "heavy"}}
                ]
            },
            "model_list[0].litellm_params.weight",
        ),
        (
            {
                "model_list": [
                    {"model_name": "a", "litellm_params": {"model": "openai/x", "api_kee": "k"}}
                ]
            },
            "model_list[0].litellm_params",
        ),
        (
            {"model_list": [{"model_name": "a", "litellm_params": {"model": "gpt-4o"}}]},
            "model_list[0].litellm_params.model",
        ),
        (
            {"model_list": [{"model_name": "a", "litellm_params": {"model": "bedrock/x"}}]},
            "model_list[0].litellm_params.model",
        ),
        (
            {"model_list": [{"model_name": "a", "litellm_params": {"model": "azure/x"}}]},
            "model_list[0].litellm_params",
        ),
        (
            {
                "model_list": [
                    {
                        "model_name": "a",
                        "litellm_params": {"model": "openai/x", "api_key": "os.environ/NOPE"},
                    }
                ]
            },
            "model_list[0].litellm_params.api_key",
        ),
        (
            {"general_settings": {"include_cost_in_streaming_usage": "yes"}},
            "general_settings.include_cost_in_streaming_usage",
        ),
        ({"router_settings": {"num_retries": 1.5}}, "router_settings.num_retries"),
        ({"general_settings": {"http_transport": "curl"}}, "general_settings.http_transport"),
        (
            {"general_settings": {"forward_client_headers": "openai-beta"}},
            "general_settings.forward_client_headers",
        ),
        ({"surprise": 1}, None),
    ],
)
def test_bad_config_names_the_path(config: dict[str, object], path: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    if path is not None:
        assert info.value.path is not None and info.value.path.startswith(path), info.value
    else:
        assert "surprise" in info.value.message


def test_forward_client_headers_default_and_lower_cased() -> None:
    default = load_config(None, environ={}).general_settings.forward_client_headers
    assert default == ("openai-beta", "x-client-request-id", "idempotency-key")
    given = {"general_settings": {"forward_client_headers": ["OpenAI-Beta", " X-Stainless-Lang "]}}
    loaded = load_config(given, environ={}).general_settings.forward_client_headers
    assert loaded == ("openai-beta", "x-stainless-lang")
    empty: dict[str, Any] = {"general_settings": {"forward_client_headers": []}}
    assert load_config(empty, environ={}).general_settings.forward_client_headers == ()


@pytest.mark.parametrize(
    "name",
    [
        # credentials and the account billed
        "Authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "proxy-authorization",
        "openai-organization",
        "openai-project",
        # hop-by-hop and framing
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "content-type",
        "accept-encoding",
        # the gateway's own, and LiteLLM's
        "x-sluicegate-model",
        "X-SluiceGate-Session",
        "x-litellm-spend-logs-metadata",
        # routing headers the proxy refuses outright
        "x-api-base",
        "api-version",
        # not a header name
        "bad name",
        "",
    ],
)
def test_forward_client_headers_refuses_what_must_never_go_upstream(name: str) -> None:
    config = {"general_settings": {"forward_client_headers": ["openai-beta", name]}}
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    assert info.value.path == "general_settings.forward_client_headers[1]"
    assert "cannot be forwarded" in info.value.message


def test_duplicate_deployment_ids_are_rejected() -> None:
    entry = {"model_name": "a", "litellm_params": {"model": "openai/x"}, "model_info": {"id": "d"}}
    with pytest.raises(ConfigError) as info:
        load_config({"model_list": [entry, entry]}, environ={})
    assert info.value.path == "model_list[1].model_info.id"


def test_derived_deployment_id_ignores_secrets() -> None:
    def dep(key: str) -> str:
        config = load_config(
            {
                "model_list": [
                    {"model_name": "g", "litellm_params": {"model": "openai/x", "api_key": key}}
                ]
            },
            environ={},
        )
        return build_deployment(config.model_list[0], config.router_settings, environ={}).id

    assert dep("sk-old") == dep("sk-rotated") == derive_deployment_id("g", "openai/x", None)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def _entry(**params: Any) -> dict[str, Any]:
    return {"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x", **params}}]}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (
            {"general_settings": {"http_transport": "curl"}},
            "general_settings.http_transport: must be one of lean, httpx",
        ),
        (
            {"general_settings": {"http_transport": 2}},
            "general_settings.http_transport: must be one of lean, httpx",
        ),
        (
            {"general_settings": {"max_request_body_bytes": 1023}},
            "general_settings.max_request_body_bytes: must be at least 1024",
        ),
        (
            {"general_settings": {"max_concurrent_body_reads": 0}},
            "general_settings.max_concurrent_body_reads: must be at least 1",
        ),
        (
            {"general_settings": {"request_body_timeout": 0}},
            "general_settings.request_body_timeout: must be a positive duration",
        ),
        (
            {"general_settings": {"store": {"max_conversation_turns": 0}}},
            "general_settings.store.max_conversation_turns: must be at least 1",
        ),
        (
            {"general_settings": {"store": {"max_conversation_bytes": -5}}},
            "general_settings.store.max_conversation_bytes: must be at least 1",
        ),
        (
            {"general_settings": {"store": {"backend": "mysql"}}},
            "general_settings.store.backend: must be one of sqlite, memory, postgres",
        ),
        (
            {"general_settings": {"store": {"backend": None}}},
            "general_settings.store.backend: must be one of sqlite, memory, postgres",
        ),
        (
            {"general_settings": {"store": {"backend": "memory", "max_responses": 0}}},
            "general_settings.store.max_responses: must be at least 1",
        ),
        (
            {"general_settings": {"store": {"max_responses": "10k"}}},
            "general_settings.store.max_responses: invalid value for type, expected int",
        ),
        (_entry(weight=0), "model_list[0].litellm_params.weight: must be positive"),
        (_entry(weight=float("nan")), "model_list[0].litellm_params.weight: must be positive"),
        (_entry(rpm=0), "model_list[0].litellm_params.rpm: must be at least 1"),
        (_entry(tpm=-1), "model_list[0].litellm_params.tpm: must be at least 1"),
        (
            {"router_settings": {"routing_strategy": "round-robin"}},
            "router_settings.routing_strategy: must be one of " + ", ".join(ROUTING_STRATEGIES),
        ),
        *(
            ({"router_settings": {name: -1}}, f"router_settings.{name}: must not be negative")
            for name in ("num_retries", "allowed_fails", "retry_after", "limit_wait")
        ),
        (
            {"router_settings": {"cooldown_time": 0}},
            "router_settings.cooldown_time: must be positive",
        ),
        *(
            (
                {"router_settings": {"failure_rate_threshold": rate}},
                "router_settings.failure_rate_threshold: must be a fraction in (0, 1]",
            )
            for rate in (0, 1.5)
        ),
        (
            {"router_settings": {"failure_rate_min_requests": 0}},
            "router_settings.failure_rate_min_requests: must be at least 1",
        ),
        (
            {"general_settings": {"include_cost_in_streaming_usage": "yes"}},
            "general_settings.include_cost_in_streaming_usage: invalid value for type, "
            "expected bool",
        ),
    ],
)
def test_a_value_out_of_range_is_named_with_its_path(config: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    assert info.value.message == error
    assert info.value.path == error.partition(": ")[0]


def test_every_problem_is_named_under_the_first_ones_path() -> None:
    config = {
        **_entry(weight="heavy"),
        "router_settings": {"num_retries": -1},
        "general_settings": {"max_request_body_bytes": 1},
    }
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    assert info.value.path == "model_list[0].litellm_params.weight"
    assert info.value.message == (
        "model_list[0].litellm_params.weight: invalid value for type, expected float; "
        "router_settings.num_retries: must not be negative; "
        "general_settings.max_request_body_bytes: must be at least 1024"
    )


def test_the_bounds_hold_for_settings_made_in_code_too() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        RouterSettings(cooldown_time=0)
    with pytest.raises(ValueError, match="must be at least 1024"):
        GeneralSettings(max_request_body_bytes=10)
    assert RouterSettings(allowed_fails=0, failure_rate_threshold=1).allowed_fails == 0


def test_the_store_backend_is_sqlite_unless_memory_is_chosen() -> None:
    default = load_config({}, environ={}).general_settings.store
    assert (default.backend, default.path, default.max_responses) == (
        "sqlite",
        "sluicegate.db",
        10_000,
    )
    chosen = load_config(
        {"general_settings": {"store": {"backend": "memory", "max_responses": 50}}}, environ={}
    ).general_settings.store
    assert (chosen.backend, chosen.max_responses) == ("memory", 50)
    assert get_args(StoreBackend) == ("sqlite", "memory", "postgres")
    # Settings made in code are held to the same choices and bounds.
    with pytest.raises(ValueError, match="must be one of sqlite, memory, postgres"):
        StoreSettings(backend="mysql")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be at least 1"):
        StoreSettings(backend="memory", max_responses=0)


def test_a_database_url_selects_postgres_and_is_checked() -> None:
    url = "postgresql://gw:pw@db.internal:5432/sluicegate"
    general = load_config(
        {"general_settings": {"database_url": "os.environ/PG"}}, environ={"PG": url}
    ).general_settings
    assert general.database_url is not None and general.database_url.reveal() == url
    assert "pw" not in repr(general)
    assert (general.store.instance_lease, general.store.heartbeat_interval) == (15.0, 5.0)
    assert general.database_connection_pool_limit == 8
    refused = {
        "mysql://x/y": (
            "general_settings.database_url: must be a PostgreSQL URL "
            "(postgresql://user:password@host:port/database)"
        ),
    }
    for bad, message in refused.items():
        with pytest.raises(ConfigError) as info:
            load_config({"general_settings": {"database_url": bad}}, environ={})
        assert info.value.message == message
        assert "x/y" not in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(
            {"general_settings": {"database_url": url, "store": {"backend": "memory"}}},
            environ={},
        )
    assert info.value.message.startswith("general_settings.store.backend: the memory backend")
    with pytest.raises(ConfigError) as info:
        load_config({"general_settings": {"store": {"backend": "postgres"}}}, environ={})
    assert "needs general_settings.database_url" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(
            {"general_settings": {"store": {"instance_lease": "5s", "heartbeat_interval": 5}}},
            environ={},
        )
    assert info.value.path == "general_settings.store.heartbeat_interval"


def test_database_url_variable_is_read_only_where_asked() -> None:
    """``DATABASE_URL`` fills an unset ``database_url`` for the proxy's commands, never for the
    library: an application's own database is not taken by surprise."""
    env = {"DATABASE_URL": "postgresql://app@127.0.0.1/app"}
    assert load_config({}, environ=env).general_settings.database_url is None
    served = load_config({}, environ=env, database_url_variable=True).general_settings
    assert served.database_url is not None
    assert served.database_url.reveal() == env["DATABASE_URL"]
    configured = "postgresql://gw@127.0.0.1/gw"
    kept = load_config(
        {"general_settings": {"database_url": configured}}, environ=env, database_url_variable=True
    ).general_settings.database_url
    assert kept is not None and kept.reveal() == configured


def test_redis_is_named_by_url_or_by_litellms_host_and_port() -> None:
    assert RouterSettings().shared_limits_url() is None
    assert RouterSettings().redis_timeout == 0.25
    with pytest.raises(ConfigError) as timeout:
        load_config({"router_settings": {"redis_timeout": 0}}, environ={})
    assert timeout.value.path == "router_settings.redis_timeout"
    by_url = load_config(
        {"router_settings": {"redis_url": "redis://:pw@cache:6380/2", "redis_host": "other"}},
        environ={},
    ).router_settings
    assert by_url.shared_limits_url() == "redis://:pw@cache:6380/2"
    by_host = load_config(
        {
            "router_settings": {
                "redis_host": "cache",
                "redis_port": 6390,
                "redis_password": "os.environ/REDIS_PASSWORD",
            }
        },
        environ={"REDIS_PASSWORD": "pw"},
    ).router_settings
    assert by_host.shared_limits_url() == "redis://cache:6390/0"
    assert by_host.redis_password is not None and by_host.redis_password.reveal() == "pw"
    with pytest.raises(ConfigError) as info:
        load_config({"router_settings": {"redis_url": "http://cache"}}, environ={})
    assert info.value.path == "router_settings.redis_url"


def test_the_routing_strategy_type_names_every_strategy() -> None:
    assert get_args(RoutingStrategy) == tuple(ROUTING_STRATEGIES)
