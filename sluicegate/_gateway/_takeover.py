"""Which background responses a gateway takes over from a dead instance (docs/background.md).

Theory of operation: when a gateway restarts (or another instance finds one dead: its lock
file free, its lease run out), the store's recovery looks at every response the dead instance
left unfinished (docs/design.md §5.5) and asks a :class:`Takeover` what to do with it:

- a background response at a native upstream (OpenAI, Azure, a fake served elsewhere) that the
  upstream had named (the store holds its raw ID) still runs there: it is taken over, and
  :meth:`~sluicegate._gateway._background.BackgroundRuns.take_over` follows its stream on from
  the last recorded event;
- a background response on a bridged provider ran in the dead gateway itself and is gone: it
  ends ``failed`` with :data:`BRIDGED_RESTART_ERROR`, which says so;
- anything else (a foreground response, one no upstream had named yet, one of the in-process
  fake, whose memory died with the process) ends ``failed`` with the store's
  :data:`~sluicegate.store.RECOVERY_ERROR`.

Recovery runs when the store opens, before the gateway's services exist, and (PostgreSQL) after
every heartbeat: what it takes over waits on :attr:`Takeover.adopted_rows` until the gateway
reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..actors._router import env_deployment_id
from ..codecs._registry import is_bridged
from ..codecs.ids import IdCodec
from ..config import is_in_process_fake
from ..errors import SluicegateError
from ..store import RECOVERY_ERROR

if TYPE_CHECKING:
    from ..config import Deployment
    from ..store import ResponseRow

__all__ = ["BRIDGED_RESTART_ERROR", "Takeover"]

#: How a bridged provider's background response ends when its gateway died under it.
BRIDGED_RESTART_ERROR: Final[dict[str, Any]] = {
    "code": "server_error",
    "message": (
        "The gateway restarted while this background response ran on a bridged provider, "
        "which cannot resume it: the gateway itself was running it. Please try again."
    ),
}


_Rows = tuple["trio.MemorySendChannel[ResponseRow]", "trio.MemoryReceiveChannel[ResponseRow]"]


def _channel() -> _Rows:
    # Unbounded: recovery cannot wait (it runs in the store's opening, before the reader
    # exists); what it holds is bounded by the responses a dead instance left running.
    return trio.open_memory_channel["ResponseRow"](math.inf)


@attrs.define(eq=False)
class Takeover:
    """The gateway's recovery policy (:class:`~sluicegate.store.RecoveryPolicy`; see the module
    docstring). ``deployments``: the configured ones, by ID."""

    _deployments: Mapping[str, Deployment]
    #: A background response's ID names its deployment before its upstream answered.
    _ids: IdCodec
    _channel: _Rows = attrs.Factory(_channel)

    @property
    def adopted_rows(self) -> trio.MemoryReceiveChannel[ResponseRow]:
        """The responses taken over, as they were before (read by the gateway)."""
        return self._channel[1]

    def error_for(self, row: ResponseRow) -> dict[str, Any] | None:
        if not row.background:
            return dict(RECOVERY_ERROR)
        provider, deployment_id = row.provider, row.deployment_id
        if provider is None or deployment_id is None:  # no upstream answered yet
            try:
                decoded = self._ids.decode(row.id)
            except SluicegateError:
                return dict(RECOVERY_ERROR)
            provider, deployment_id = decoded.provider, decoded.deployment_id
        if is_bridged(provider):
            return dict(BRIDGED_RESTART_ERROR)
        if row.upstream_id is None:
            return dict(RECOVERY_ERROR)  # no upstream had named it: nothing to follow
        deployment = self._deployments.get(deployment_id)
        if deployment is None:
            if deployment_id != env_deployment_id(provider) or provider == "fake":
                return dict(RECOVERY_ERROR)  # no longer configured
        elif is_in_process_fake(deployment):
            return dict(RECOVERY_ERROR)  # its upstream died with the process
        return None

    def adopted(self, row: ResponseRow) -> None:
        self._channel[0].send_nowait(row)
