from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sluicegate.fake import FakeUpstream, open_fake_upstream

FIXTURES = Path(__file__).parent / "fixtures"

# The real PostgreSQL and Redis servers some tests need (tests/servers.py).
pytest_plugins = ["tests.servers"]

# Property tests judge what the code does, never how fast a loaded machine runs it: no
# per-example deadline and no "too slow" health check, for every test of the suite (a test's
# own @settings starts from this profile). Hypothesis's examples stay random.
settings.register_profile(
    "sluicegate", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("sluicegate")


#: The environment variable that chooses where a request's actors run (``_gateway/_open.py``).
ACTOR_LAYOUT_ENV = "SLUICEGATE_ACTOR_LAYOUT"
#: The environment variable that chooses the proxy's HTTP server (``server/_serve.py``).
HTTP_SERVER_ENV = "SLUICEGATE_HTTP_SERVER"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--actor-layout",
        choices=("fused", "unfused"),
        default=None,
        help="run every gateway of the suite (the processes it starts too) with this actor "
        "layout (docs/design.md §2.1); default: the configured one, fused",
    )
    parser.addoption(
        "--http-server",
        choices=("lean", "hypercorn"),
        default=None,
        help="serve every proxy of the suite (the processes it starts too) on this HTTP server "
        "(docs/design.md §6.1); default: the configured one",
    )


def pytest_configure(config: pytest.Config) -> None:
    layout = config.getoption("--actor-layout")
    if layout is not None:
        # Through the environment, so the sluicegate processes the tests start inherit it.
        os.environ[ACTOR_LAYOUT_ENV] = layout
    server = config.getoption("--http-server")
    if server is not None:
        os.environ[HTTP_SERVER_ENV] = server


def pytest_report_header(config: pytest.Config) -> str:
    return f"actor layout: {os.environ.get(ACTOR_LAYOUT_ENV) or 'fused (configured)'}"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: a gateway's default store file lands there, never
    in the repository."""
    monkeypatch.chdir(tmp_path)


#: The store of gateways in tests: private, in memory, and inline on the trio thread, so
#: ``autojump_clock`` tests stay deterministic.
MEMORY_STORE = {"path": ":memory:"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with open_fake_upstream(tokens=8) as upstream:
        yield upstream


def fake_config(
    fake: FakeUpstream, *, http_transport: str = "lean", **router_settings: object
) -> dict[str, object]:
    """A gateway config with one deployment on the given fake upstream."""
    return {
        "model_list": [
            {
                "model_name": "gpt-test",
                "litellm_params": {
                    "model": "openai/gpt-5.4",
                    "api_base": fake.base_url,
                    "api_key": "sk-test-fake",
                },
                "model_info": {"id": "fake-1"},
            }
        ],
        "router_settings": {"retry_backoff_jitter": 0.0, **router_settings},
        "general_settings": {
            "response_id_secret": "test-secret",
            "http_transport": http_transport,
            "store": MEMORY_STORE,
        },
    }
