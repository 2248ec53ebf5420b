"""One rule for every integer argument that reaches the store (``_params.checked_int``): the
list ``limit``s, ``starting_after``, in the library and as the proxy's query parameters.
Non-integers, floats, bools, values out of range (huge ones included) are a 400 naming the
parameter; the store never sees them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing

from sluicegate import ResponseEvent
from sluicegate.errors import InvalidRequestError

from .test_proxy import Proxy, running
from .test_recording import NativeUpstream, gateway

TOP = 2**53 - 1
#: Beyond SQLite's 64-bit integers: the store raised OverflowError on it.
HUGE = 99999999999999999999


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 30 else f"<{len(text)} digits>"


def _refused(caught: pytest.ExceptionInfo[InvalidRequestError], param: str) -> None:
    assert (caught.value.status_code, caught.value.param) == (400, param)
    assert f"'{param}'" in caught.value.message


# -- the library --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [HUGE, TOP + 1, 10**400, -1, -5, True, 1.5, "3"], ids=_short)
async def test_library_starting_after_is_a_sequence_number_within_the_bound(
    autojump_clock: trio.testing.MockClock, value: Any
) -> None:
    """Regression: a starting_after past 64 bits reached SQLite (an OverflowError, a 500)."""
    async with gateway(NativeUpstream()) as gw:
        async with gw.stream(model="g", input="hi", background=True) as events:
            seen = [e async for e in events]
        assert isinstance(seen[0], ResponseEvent)
        rid = seen[0].response.id
        with pytest.raises(InvalidRequestError) as caught:
            await gw.get_response(rid, stream=True, starting_after=value)
        _refused(caught, "starting_after")
        # Both ends of the range are taken; past the last event there is nothing to send.
        after_first = await gw.get_response(rid, stream=True, starting_after=0)
        numbers = [e.sequence_number async for e in after_first]
        assert numbers == [e.sequence_number for e in seen[1:]]
        past_the_end = await gw.get_response(rid, stream=True, starting_after=TOP)
        assert [e async for e in past_the_end] == []


@pytest.mark.parametrize("value", [0, -5, 101, HUGE, 10**400, True, 1.5, "5"], ids=_short)
async def test_library_input_items_limit_is_from_1_to_100(
    autojump_clock: trio.testing.MockClock, value: Any
) -> None:
    async with gateway(NativeUpstream()) as gw:
        made = await gw.responses(model="g", input="hi")
        with pytest.raises(InvalidRequestError) as caught:
            await gw.list_input_items(made.id, limit=value)
        _refused(caught, "limit")
        for limit in (1, 100):
            assert len((await gw.list_input_items(made.id, limit=limit))["data"]) == 1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"limit": HUGE}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "5"}, "limit"),
        ({"after": 5}, "after"),
    ],
)
async def test_library_file_and_batch_lists_check_limit_and_after(
    autojump_clock: trio.testing.MockClock, params: dict[str, Any], param: str
) -> None:
    async with gateway(NativeUpstream()) as gw:
        for listing in (gw.list_files, gw.list_batches):
            with pytest.raises(InvalidRequestError) as caught:
                await listing(**params)
            _refused(caught, param)
            for limit in (1, 10000):
                assert (await listing(limit=limit))["data"] == []


# -- the proxy ----------------------------------------------------------------------------------

#: Query values that are not integers at all, then integers out of every range here.
_NOT_INTEGERS = ["", "x", "1.5", "1e3", "+3", " 3", "3 ", "0x10", "1_000", "٣"]
_OUT_OF_RANGE = ["-1", str(HUGE), str(TOP + 1), "9" * 5000]


async def _finished_background_stream(proxy: Proxy, http: httpx.AsyncClient) -> str:
    rid = ""
    body = {"model": "gpt-test", "input": "hi", "background": True, "stream": True}
    async with http.stream("POST", "/v1/responses", json=body) as answer:
        async for line in answer.aiter_lines():
            if not rid and line.startswith("data: ") and '"response.created"' in line:
                rid = line.split('"id":"', 1)[1].split('"', 1)[0]
    return rid


async def test_proxy_query_integers_are_400s_naming_the_parameter() -> None:
    """Regression: ``starting_after=99999999999999999999`` was a 500 (SQLite's OverflowError),
    and ``limit=0`` answered 200 where ``limit=-5`` was a 400."""
    async with running() as proxy, proxy.http() as http:
        rid = await _finished_background_stream(proxy, http)
        assert rid.startswith("resp_")
        made = (await http.post("/v1/responses", json={"model": "gpt-test", "input": "x"})).json()
        checks: list[tuple[str, str, dict[str, str], list[str]]] = [
            (f"/v1/responses/{rid}", "starting_after", {"stream": "true"}, []),
            (f"/v1/responses/{made['id']}/input_items", "limit", {}, ["0", "101"]),
            ("/v1/files", "limit", {}, ["0", "10001"]),
            ("/v1/batches", "limit", {}, ["0", "10001"]),
        ]
        for path, param, extra, more in checks:
            for value in _NOT_INTEGERS + _OUT_OF_RANGE + more:
                answer = await http.get(path, params={**extra, param: value})
                assert answer.status_code == 400, (path, value, answer.text)
                error = answer.json()["error"]
                assert error["param"] == param, (path, value)
                code = "invalid_type" if value in _NOT_INTEGERS else "invalid_value"
                assert error["code"] == code, (path, value)
                assert len(error["message"]) < 300  # a 5000-digit value is not echoed
        # What is in range is answered.
        resumed = await http.get(
            f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "0"}
        )
        assert resumed.status_code == 200 and "sequence_number" in resumed.text
        for path, param, value in [
            (f"/v1/responses/{made['id']}/input_items", "limit", "1"),
            (f"/v1/responses/{made['id']}/input_items", "limit", "100"),
            ("/v1/files", "limit", "1"),
            ("/v1/batches", "limit", "10000"),
        ]:
            answer = await http.get(path, params={param: value})
            assert answer.status_code == 200, (path, value, answer.text)
