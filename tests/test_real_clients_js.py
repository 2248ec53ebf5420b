"""The official ``openai`` Node SDK, unchanged, streaming a tool turn through the proxy on loopback:
``tests/js/tool_turn.mjs`` runs under ``node`` as a subprocess and prints what it saw as JSON.

``.ci/run`` installs the SDK at the version ``tests/js/package-lock.json`` pins (``npm ci --prefix
tests/js``). In CI (``CI`` set) a missing ``node`` or SDK fails the test: a client that was not
installed must not pass for one that works. Elsewhere the test is skipped with the command that
installs it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from .real_clients import MASTER, Stack, account_of, running_stack

JS = Path(__file__).parent / "js"
SCRIPT = JS / "tool_turn.mjs"


@pytest.fixture
def node_sdk() -> tuple[str, str] | str:
    """The ``node`` executable and the pinned SDK version, or in CI why they are missing (the
    test then fails); elsewhere a missing one skips (here, in a sync fixture, so the reason is
    reported as given rather than wrapped by the trio test runner)."""
    pinned: str = json.loads((JS / "package.json").read_text())["dependencies"]["openai"]
    node = shutil.which("node")
    installed = JS / "node_modules" / "openai" / "package.json"
    if node is None:
        reason = "node is not installed (.ci/run installs it)"
    elif not installed.is_file():
        reason = "the openai Node SDK is not installed: run `npm ci --prefix tests/js`"
    else:
        version: str = json.loads(installed.read_text())["version"]
        if version == pinned:
            return node, pinned
        reason = (
            f"tests/js has openai {version}, not the pinned {pinned}: "
            "run `npm ci --prefix tests/js`"
        )
    if os.environ.get("CI"):
        return reason
    pytest.skip(reason)


async def _run_script(node: str, stack: Stack, model: str) -> dict[str, Any]:
    env = {
        # Only what node needs: no proxy variables or keys of the machine leak into the client.
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "SLUICEGATE_BASE_URL": stack.base_url,
        "SLUICEGATE_API_KEY": MASTER,
        "SLUICEGATE_MODEL": model,
    }
    with trio.fail_after(120):
        done = await trio.run_process(
            [node, str(SCRIPT)],
            cwd=str(JS),
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stdout = done.stdout.decode()
    assert done.returncode == 0, f"node exited {done.returncode}: {stdout}{done.stderr.decode()}"
    result: dict[str, Any] = json.loads(stdout)
    return result


async def test_the_node_sdk_streams_a_tool_turn_through_the_proxy(
    node_sdk: tuple[str, str] | str,
) -> None:
    if isinstance(node_sdk, str):
        pytest.fail(node_sdk)
    node, pinned = node_sdk
    async with running_stack() as stack:
        result = await _run_script(node, stack, "pair")
        bodies = stack.creates()
    assert result["sdkVersion"] == pinned
    first, second = result["first"], result["second"]
    # Turn one: a reasoning item, then the function call with its arguments streamed.
    assert first["status"] == "completed"
    assert first["outputTypes"] == ["reasoning", "function_call"]
    assert first["types"][0] == "response.created"
    assert first["types"][-1] == "response.completed"
    assert "response.function_call_arguments.delta" in first["types"]
    assert first["sequenceNumbers"] == list(range(len(first["types"])))
    assert first["call"] == {"name": "get_weather", "arguments": '{"city":"fake"}'}
    assert first["argumentDeltas"] == first["call"]["arguments"]
    # Turn two: the output went back by previous_response_id; the answer streamed as text.
    assert second["status"] == "completed"
    assert second["previousResponseId"] == first["id"]
    assert second["outputTypes"] == ["reasoning", "message"]
    assert second["sequenceNumbers"] == list(range(len(second["types"])))
    assert second["textDeltas"] == second["outputText"]
    assert second["outputText"] == f"The tool returned: {result['toolOutput']}"
    assert account_of(second["id"]) == account_of(first["id"])
    # What the account received: the streamed tool definitions and, in turn two, the output.
    assert [body["stream"] for body in bodies] == [True, True]
    [turn_two] = [body for body in bodies if "previous_response_id" in body]
    assert turn_two["input"] == [
        {
            "type": "function_call_output",
            "call_id": turn_two["input"][0]["call_id"],
            "output": result["toolOutput"],
        }
    ]
