"""``POST /v1/responses/compact``: a conversation compacted, by its provider or by the gateway
(docs/compaction.md).

The request is prepared as a create's is (``Gateway._prepare``: validated, its
``previous_response_id`` continued, its replayed state opened and pinned, earlier compactions
expanded), and the router chooses a deployment as for a create. Then:

- **native** (OpenAI, Azure, the fake): the body goes to the deployment's ``responses/compact``,
  with the raw ``previous_response_id`` and the deployment's model, through the route plan's
  attempts (another deployment, or the same after a back-off, as for a create; a pinned one
  only itself). The answer's opaque state (the ``compaction`` item's ``encrypted_content``) is
  sealed for the deployment (``codecs/sealed.py``), so a later create that carries it is pinned
  there and the raw text goes up again. Its ID becomes a ``resp_`` ID naming the deployment
  and the upstream's raw ID, and its usage is priced and recorded as a spend row of its own
  (``Accepted``, ``Routed``, ``Settled``, ``Ended`` in one append, ``store: false``: the
  store keeps no content of it). An upstream answer that is not a compaction object is a 502;
  one no upstream answered is recorded failed, nothing owed, as a create's would be.
- **bridged** (Anthropic, Gemini, chat servers): the gateway compacts. The conversation (the
  input, after the stored chain of ``previous_response_id``) runs through the ordinary
  pipeline, non-streamed, with the same model and :data:`COMPACTION_INSTRUCTIONS`, recorded
  and accounted like any response (``store: false``: the summary is not kept). The answer's
  output is the conversation's user messages and one ``compaction`` item whose
  ``encrypted_content`` is the gateway's envelope of the summary (``codecs/compaction.py``),
  which any later request expands back into a message.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import orjson
import trio

from .._types import ResponseEvent, ResponseStatus
from ..actors._connector import Connector
from ..actors._plan import RoutePlan
from ..actors._recorder import Recorder
from ..actors._stages import seal_output
from ..codecs._bridge import conversation_items
from ..codecs._lifecycle import StreamTracker, failure_code
from ..codecs._registry import is_bridged
from ..codecs.compaction import (
    COMPACTION_INSTRUCTIONS,
    CompactionSeal,
    compaction_item,
    user_messages,
)
from ..codecs.openai_responses import UpstreamRequest
from ..config import Deployment
from ..errors import (
    ClientError,
    InvalidRequestError,
    RateLimitError,
    SluicegateError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from ..runtime._messages import PreparedCall, Routed
from ..store import Ended, Settled, Store
from ..store import Routed as RoutedRecord
from ._pipeline import UNANSWERED_PROVIDER, Pipeline, run_request

__all__ = ["COMPACTION_OBJECT", "Compactions"]

logger = logging.getLogger("sluicegate")

#: The ``object`` of a compaction's answer.
COMPACTION_OBJECT = "response.compaction"

#: Create parameters that mean nothing for a compaction, refused by name when they ask for
#: something (the answer is one JSON object; nothing runs in the background; nothing of it is
#: stored; a conversation object is not the gateway's).
_NOT_COMPACT_PARAMETERS = ("stream", "background", "store", "conversation")

Prepare = Callable[[Mapping[str, Any]], Awaitable[PreparedCall]]


@attrs.define(eq=False)
class Compactions:
    """Compacts conversations for one gateway (module docstring)."""

    _pipeline: Pipeline
    _store: Store
    _recorder: Recorder
    #: The gateway's preparation of a create (validation, continuation, replayed state).
    _prepare: Prepare

    async def compact(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The compacted conversation, as the ``response.compaction`` object.

        Raises:
            InvalidRequestError: a bad request (as a create's), or a parameter a compaction
                does not take.
            UpstreamError: the provider's failure, after the route plan's retries; an answer
                that is not a compaction object (502).
        """
        for name in _NOT_COMPACT_PARAMETERS:
            if params.get(name) not in (None, False):
                raise InvalidRequestError(
                    f"'{name}' is not a parameter of a compaction.",
                    param=name,
                    code="unknown_parameter",
                )
        call = await self._prepare(params)
        # Nothing of a compaction is kept but its accounting: its answer is the caller's to
        # carry, and a summary kept in the store would be one a later GET could read.
        call = attrs.evolve(call, store=False, input_items=[])
        given = params.get("input")
        plan = RoutePlan(self._pipeline.router, call)
        routed = await plan.first()
        if is_bridged(routed.deployment.provider):
            return await self._by_the_gateway(call, routed, given)
        return await self._upstream(call, plan, routed)

    # -- native: the upstream's own compaction -----------------------------------------------

    async def _upstream(
        self, call: PreparedCall, plan: RoutePlan, routed: Routed
    ) -> dict[str, Any]:
        pipeline = self._pipeline
        started = trio.current_time()
        created_at = self._recorder.wall_clock()
        try:
            with trio.move_on_after(call.timeout or math.inf) as overall:
                routed, raw = await self._attempts(plan, routed)
            if overall.cancelled_caught:
                raise UpstreamTimeoutError(
                    f"the request took longer than its total timeout of {call.timeout} s"
                )
            answer = _compaction_object(raw)
        except SluicegateError as exc:
            await self._record_failed(call, exc, created_at, started)
            raise
        deployment = routed.deployment
        raw_id = answer["id"]
        response_id = pipeline.ids.encode(
            provider=deployment.provider,
            deployment_id=deployment.id,
            raw_id=raw_id,
            owner=call.owner,
        )
        accountant = pipeline.accountant
        usage = answer.get("usage")
        terminal = ResponseEvent(
            type="response.completed",
            sequence_number=0,
            data={"response": {"id": raw_id, "usage": usage}},
        )
        priced, settlement = accountant.settle(terminal, accountant.price_for(deployment))
        accountant.report(deployment, settlement)
        records = [
            self._recorder.accepted(call, response_id, created_at),
            RoutedRecord(
                response_id=response_id,
                deployment_id=deployment.id,
                provider=deployment.provider,
                attempt=routed.attempt,
                upstream_id=raw_id,
            ),
            Settled(response_id=response_id, usage=settlement.usage, cost=settlement.cost),
            Ended(
                response_id=response_id,
                status=ResponseStatus.COMPLETED,
                error=None,
                response=None,
                completed_at=self._recorder.wall_clock(),
                duration=trio.current_time() - started,
            ),
        ]
        await self._store.append(records)
        output = _sealed(pipeline, deployment.id, answer["output"])
        result = {**answer, "id": response_id, "output": output}
        if usage is not None:
            result["usage"] = priced.response_data["usage"]
        return result

    async def _record_failed(
        self, call: PreparedCall, error: SluicegateError, created_at: float, started: float
    ) -> None:
        """A compaction no upstream answered ends recorded as a create would (a failed row,
        nothing owed, under an ID of its own that the error carries), unless the caller got
        it wrong (docs/design.md §5.2)."""
        if isinstance(error, ClientError) and not isinstance(error, RateLimitError):
            return
        response_id = self._pipeline.ids.encode(
            provider=UNANSWERED_PROVIDER,
            deployment_id="",
            raw_id=f"resp_{secrets.token_hex(24)}",
            owner=call.owner,
        )
        records = [
            self._recorder.accepted(call, response_id, created_at),
            Ended(
                response_id=response_id,
                status=ResponseStatus.FAILED,
                error={"code": failure_code(error), "message": error.message},
                response=None,
                completed_at=self._recorder.wall_clock(),
                duration=trio.current_time() - started,
            ),
        ]
        try:
            await self._store.append(records)
        except SluicegateError:
            logger.exception("could not record the failed compaction %s", response_id)
            return
        error.headers["x-sluicegate-response-id"] = response_id

    async def _attempts(self, plan: RoutePlan, routed: Routed) -> tuple[Routed, Any]:
        """The upstream's answer to the first attempt that gets one, as the route plan
        decides the attempts (as a create's, ``_plan.py``)."""
        connector = self._pipeline.connector
        while True:
            deployment = routed.deployment
            if is_bridged(deployment.provider):
                # A fallback group of bridges: no such endpoint there.
                raise InvalidRequestError(
                    f"The fallback for model '{routed.call.model}' is served by a bridged "
                    "provider, which cannot continue a native compaction.",
                    param="model",
                )
            request = _compact_request(routed.call, deployment)
            health = plan.health(deployment)
            now = trio.current_time()
            health.started(now)
            try:
                with trio.move_on_after(deployment.timeouts.total or math.inf) as scope:
                    _, body = await connector.open(request, deployment.timeouts, 0, read_body=True)
                if scope.cancelled_caught or body is None:
                    raise UpstreamTimeoutError(
                        f"the upstream did not answer within {deployment.timeouts.total} s"
                    )
            except UpstreamError as exc:
                health.failed(trio.current_time(), exc)
                routed = await plan.next(exc)
                continue
            except BaseException:
                health.answered(trio.current_time(), ttfb=None, total=None)
                raise
            end = trio.current_time()
            health.answered(end, ttfb=end - now, total=end - now)
            try:
                return routed, orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise UpstreamProtocolError(f"upstream sent a malformed compaction: {exc}") from exc

    # -- bridged: the gateway's own compaction -------------------------------------------

    async def _by_the_gateway(
        self, call: PreparedCall, routed: Routed, given: Any
    ) -> dict[str, Any]:
        pipeline = self._pipeline
        instructions = call.body.get("instructions")
        summary_instructions: Any = COMPACTION_INSTRUCTIONS
        if isinstance(instructions, str) and instructions:
            summary_instructions = (
                f"{instructions}\n\n---\n\nThe conversation ran under the instructions above. "
                f"{COMPACTION_INSTRUCTIONS}"
            )
        elif isinstance(instructions, list) and instructions:  # a prompt template's messages
            summary_instructions = [
                *instructions,
                {"role": "developer", "content": COMPACTION_INSTRUCTIONS},
            ]
        summary_call = attrs.evolve(
            call,
            body={**call.body, "instructions": summary_instructions},
            deployment=routed.deployment,
        )
        tracker = StreamTracker()
        recording = self._recorder.start(summary_call)
        await run_request(pipeline, summary_call, tracker, None, recording)
        response = tracker.fold()
        summary = response.output_text
        if response.status != ResponseStatus.COMPLETED or not summary.strip():
            raise UpstreamProtocolError(
                f"the model gave no complete summary of the conversation (its response "
                f"{response.id} ended {_status(response.status)})"
            )
        # The user messages as the caller sent them (a gateway compaction among them stays
        # out: its summary is in the new one).
        conversation = conversation_items(call.history or [], given)
        envelope = CompactionSeal.under(pipeline.seal).seal(summary)
        output = [
            *user_messages(conversation),
            compaction_item(f"cmp_{secrets.token_hex(24)}", envelope),
        ]
        usage = response.data.get("usage")
        return {
            "id": response.id,
            "object": COMPACTION_OBJECT,
            "created_at": response.created_at,
            "output": output,
            "usage": usage,
        }


def _status(status: ResponseStatus | str) -> str:
    return status.value if isinstance(status, ResponseStatus) else status


def _compact_request(call: PreparedCall, deployment: Deployment) -> UpstreamRequest:
    """``POST …/responses/compact`` for ``deployment``: a create's request (its model, its raw
    ``previous_response_id``, ``extra_body``, its headers) at the compact route."""
    request = Connector.native_request(call, deployment)
    return attrs.evolve(request, url=f"{request.url}/compact")


def _compaction_object(raw: Any) -> dict[str, Any]:
    """The upstream's answer, checked to be a compaction object (a 502 otherwise)."""
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("id"), str)
        or not isinstance(raw.get("output"), list)
    ):
        raise UpstreamProtocolError("the upstream's answer is not a compaction object")
    usage = raw.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise UpstreamProtocolError("the upstream's compaction has a malformed 'usage'")
    return raw


def _sealed(pipeline: Pipeline, deployment_id: str, output: list[Any]) -> list[Any]:
    sealed: list[Any] = seal_output(pipeline.seal, deployment_id, output)
    return sealed
