"""Module-level conveniences, zero-config provider credentials, and the quickstart command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sluicegate
from sluicegate._cli import main
from sluicegate.errors import InvalidRequestError
from sluicegate.fake import FakeUpstream


async def test_aresponses_zero_config_uses_the_openai_environment(
    fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    response = await sluicegate.aresponses(model="openai/gpt-5.4-mini", input="hi")
    assert response.output_text and response.id.startswith("resp_")
    request = fake.requests[-1]
    assert request.headers["authorization"] == "Bearer sk-from-env"
    assert request.json()["model"] == "gpt-5.4-mini"


async def test_zero_config_fake_models_need_nothing() -> None:
    response = await sluicegate.aresponses(model="fake/anything", input="one two three")
    assert response.usage is not None and response.usage.input_tokens == 3


async def test_module_level_streaming_points_to_the_gateway() -> None:
    with pytest.raises(InvalidRequestError, match=r"gw\.stream|gateway") as info:
        await sluicegate.aresponses(model="fake/x", input="hi", stream=True)
    assert info.value.param == "stream"


async def test_unknown_provider_prefix_is_model_not_found() -> None:
    with pytest.raises(sluicegate.NotFoundError) as info:
        await sluicegate.aresponses(model="nosuch/model", input="hi")
    assert info.value.code == "model_not_found"


def test_sync_responses_runs_its_own_loop_and_leaves_no_file_behind() -> None:
    """Regression: a zero-config one-shot call created sluicegate.db in the working directory."""
    response = sluicegate.responses(model="fake/sync", input="hello")
    assert response.status == sluicegate.ResponseStatus.COMPLETED
    assert _working_directory() == []


def _working_directory() -> list[Path]:
    """What the test's own working directory (a fresh temporary one) holds."""
    return list(Path().iterdir())


async def test_one_shot_calls_leave_the_working_directory_clean() -> None:
    await sluicegate.aresponses(model="fake/anything", input="hi")
    assert _working_directory() == []


async def test_sync_responses_inside_trio_says_what_to_await_instead() -> None:
    """Regression: inside a running loop the synchronous call failed with trio's own message
    (or, under asyncio, silently blocked the loop)."""
    with pytest.raises(RuntimeError, match=r"await sluicegate\.aresponses"):
        sluicegate.responses(model="fake/sync", input="hello")


def test_quickstart_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--input", "hi there"]) == 0
    out = capsys.readouterr().out
    assert "status  completed" in out
    assert "follow-up via previous_response_id" in out
    assert "retrieved resp_" in out
    assert "queued -> completed" in out
    assert "event store (sluicegate.db): 3 responses of 'demo' recorded" in out
    # The default store is a file in the working directory (each test has its own).
    assert Path("sluicegate.db").exists()


def test_quickstart_reports_errors_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--model", "missing"]) == 1
    assert "404" in capsys.readouterr().err


def test_quickstart_with_the_example_config(capsys: pytest.CaptureFixture[str]) -> None:
    example: Any = Path(__file__).parent.parent / "examples" / "demo.yaml"
    assert main(["quickstart", "--config", str(example), "--input", "x"]) == 0
