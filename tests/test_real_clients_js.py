"""The official ``openai`` Node SDK, unchanged, through the proxy on loopback: a streamed tool turn
over HTTP (``tests/js/tool_turn.mjs``) and two turns over WebSocket mode with the SDK's
``ResponsesWS`` (``tests/js/ws_turns.mjs``). Each script runs under ``node`` as a subprocess and
prints what it saw as JSON.

``.ci/run`` installs the SDK and ``ws`` at the versions ``tests/js/package-lock.json`` pins
(``npm ci --prefix tests/js``). In CI (``CI`` set) a missing ``node`` or package fails the test: a
client that was not installed must not pass for one that works. Elsewhere the test is skipped
with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .real_clients import MASTER, Stack, account_of, running_stack

JS = Path(__file__).parent / "js"
SCRIPT = JS / "tool_turn.mjs"
WS_SCRIPT = JS / "ws_turns.mjs"


def _not_installed(pins: dict[str, str]) -> str | None:
    """Why a package of ``tests/js/package.json`` is not installed at its pin, if one is not."""
    for name, pinned in pins.items():
        installed = JS / "node_modules" / name / "package.json"
        if not installed.is_file():
            return f"the npm package {name} is not installed: run `npm ci --prefix tests/js`"
        version: str = json.loads(installed.read_text())["version"]
        if version != pinned:
            return (
                f"tests/js has {name} {version}, not the pinned {pinned}: "
                "run `npm ci --prefix tests/js`"
            )
    return None


@pytest.fixture
def node_sdk() -> tuple[str, str] | str:
    """The ``node`` executable and the pinned SDK version, or in CI why they are missing (the
    test then fails); elsewhere a missing one skips (here, in a sync fixture, so the reason is
    reported as given rather than wrapped by the trio test runner). Every package of
    ``tests/js/package.json`` must be installed at its pin (``ws`` too: the SDK's
    ``ResponsesWS`` needs it)."""
    pins: dict[str, str] = json.loads((JS / "package.json").read_text())["dependencies"]
    node = shutil.which("node")
    if node is None:
        reason = "node is not installed (.ci/run installs it)"
    else:
        missing = _not_installed(pins)
        if missing is None:
            return node, pins["openai"]
        reason = missing
    if os.environ.get("CI"):
        return reason
    pytest.skip(reason)


async def _run_script(node: str, stack: Stack, model: str, script: Path = SCRIPT) -> dict[str, Any]:
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
            [node, str(script)],
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


_TERMINAL = ("response.completed", "response.failed", "response.incomplete")


def _assert_stream_order(types: list[str], sequence_numbers: list[int]) -> None:
    """One response's events as the Responses stream orders them: ``response.created``, then
    ``response.in_progress``; output items one at a time, each opened (``output_item.added``)
    before its parts and deltas and closed (``output_item.done``) after them; the one terminal
    event last; sequence numbers 0, 1, 2, ..."""
    assert sequence_numbers == list(range(len(types)))
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in _TERMINAL
    assert not any(t in _TERMINAL or t == "error" for t in types[:-1])
    open_items = 0
    for event_type in types[2:-1]:
        if event_type == "response.output_item.added":
            assert open_items == 0, types
            open_items += 1
        elif event_type == "response.output_item.done":
            assert open_items == 1, types
            open_items -= 1
        else:  # parts, deltas and their ``done``s belong to the open item
            assert open_items == 1, (event_type, types)
    assert open_items == 0


async def test_the_node_sdk_runs_two_turns_and_bad_messages_over_websocket_mode(
    node_sdk: tuple[str, str] | str,
) -> None:
    """``ResponsesWS`` (``openai/resources/responses/ws``, over the ``ws`` package) on one
    connection to ``GET /v1/responses``: a function call, two bad messages answered by ``error``
    events with the connection going on, the function's output chained by
    ``previous_response_id`` (docs/websocket.md)."""
    if isinstance(node_sdk, str):
        pytest.fail(node_sdk)
    node, pinned = node_sdk
    async with running_stack() as stack:
        result = await _run_script(node, stack, "pair", WS_SCRIPT)
        async with httpx.AsyncClient(
            base_url=stack.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=30
        ) as http:
            got = {
                turn: (await http.get(f"/v1/responses/{result[turn]['id']}")).json()
                for turn in ("first", "second")
            }
            items = (await http.get(f"/v1/responses/{result['second']['id']}/input_items")).json()
            metrics = (await http.get("/metrics")).text
        bodies = stack.creates()
    assert result["sdkVersion"] == pinned
    assert result["url"] == stack.url.replace("http://", "ws://") + "/v1/responses"
    first, second = result["first"], result["second"]
    # Turn one: a reasoning item, then the function call with its arguments streamed.
    assert (first["status"], first["error"]) == ("completed", None)
    assert first["createdId"] == first["id"] and first["id"].startswith("resp_")
    _assert_stream_order(first["types"], first["sequenceNumbers"])
    assert first["types"][-1] == "response.completed"
    assert first["outputTypes"] == ["reasoning", "function_call"]
    assert "response.function_call_arguments.delta" in first["types"]
    call = first["call"]
    assert (call["name"], call["arguments"]) == ("get_weather", '{"city":"fake"}')
    assert first["argumentDeltas"] == call["arguments"]
    # The bad messages: each answered by an error event (the next message), the SDK raising
    # each as its error; the connection went on to turn two.
    unknown, not_json = result["unknownType"], result["notJson"]
    assert unknown["type"] == not_json["type"] == "error"
    assert (unknown["code"], unknown["param"], unknown["status"]) == (
        "unsupported_event_type",
        "type",
        400,
    )
    assert "response.frobnicate" in unknown["message"]
    assert unknown["error"] == {
        "type": "invalid_request_error",
        "code": "unsupported_event_type",
        "param": "type",
        "message": unknown["message"],
    }
    assert (not_json["code"], not_json["status"]) == ("invalid_json", 400)
    assert not_json["error"]["type"] == "invalid_request_error"
    assert [error["eventType"] for error in result["sdkErrors"]] == ["error", "error"]
    # Turn two: chained to turn one, the answer streamed as text.
    assert (second["status"], second["error"]) == ("completed", None)
    assert second["createdId"] == second["id"] != first["id"]
    _assert_stream_order(second["types"], second["sequenceNumbers"])
    assert second["types"][-1] == "response.completed"
    assert second["previousResponseId"] == first["id"]
    assert second["outputTypes"] == ["reasoning", "message"]
    assert second["textDeltas"] == second["outputText"]
    assert second["outputText"] == f"The tool returned: {result['toolOutput']}"
    assert account_of(second["id"]) == account_of(first["id"])
    # The client's close was answered in kind.
    assert (result["closed"]["kind"], result["closed"]["code"]) == ("close", 1000)
    # Both recorded as a streamed POST's would be, and retrievable over HTTP.
    one, two = got["first"], got["second"]
    assert (one["id"], one["status"], one["previous_response_id"]) == (
        first["id"],
        "completed",
        None,
    )
    assert [item["type"] for item in one["output"]] == first["outputTypes"]
    assert one["output"][-1]["call_id"] == call["call_id"]
    assert (two["id"], two["status"], two["previous_response_id"]) == (
        second["id"],
        "completed",
        first["id"],
    )
    assert two["output"][-1]["content"][0]["text"] == second["outputText"]
    # Its input items, newest first: the tool output, then the chain it continued.
    assert [item["type"] for item in items["data"]] == [
        "function_call_output",
        "function_call",
        "reasoning",
        "message",
    ]
    newest = items["data"][0]
    assert (newest["call_id"], newest["output"]) == (call["call_id"], result["toolOutput"])
    assert items["data"][-1]["content"] == [
        {"type": "input_text", "text": "What is the weather in Paris?"}
    ]
    requests = 'sluicegate_requests_total{route="/v1/responses",method="WEBSOCKET",status="200"}'
    assert f"{requests} 2.0" in metrics
    assert 'sluicegate_websocket_connections_total{outcome="accepted"} 1.0' in metrics
    assert 'sluicegate_websocket_messages_total{direction="in"} 4.0' in metrics
    # What the account received: two streamed creates, turn two with only the tool output.
    assert [body["stream"] for body in bodies] == [True, True]
    [turn_two] = [body for body in bodies if "previous_response_id" in body]
    assert turn_two["input"] == [
        {"type": "function_call_output", "call_id": call["call_id"], "output": result["toolOutput"]}
    ]
