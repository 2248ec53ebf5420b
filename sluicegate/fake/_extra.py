"""The fake upstream's endpoints beyond ``/responses`` and ``/responses/{id}``, as one table.

Each entry is a method (``"*"`` for any), a pattern the normalized path (``/v1/...``) must match
whole, and a handler ``(connection, head, body, match) -> _Next``. A handler answers with the
connection's ``_send_json`` (or takes the socket over, and says so by returning
``_Next.CLOSE``); state it keeps lives in ``connection.upstream.extra_state`` under a key of
its own. The table is tried in order, after the built-in routes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from ._compaction import COMPACTION_ROUTES
from ._conversations import CONVERSATION_ROUTES
from ._input_tokens import INPUT_TOKENS_ROUTES
from ._next import Next
from ._websocket import WEBSOCKET_ROUTES

if TYPE_CHECKING:
    from ._http import RequestHead

__all__ = ["EXTRA_ROUTES", "ExtraHandler", "Next"]

#: ``(connection, head, body, match) -> _Next`` (the types are ``_server``'s, which imports
#: this module).
ExtraHandler: TypeAlias = Callable[[Any, "RequestHead", bytes, re.Match[str]], Awaitable[Any]]

EXTRA_ROUTES: list[tuple[str, re.Pattern[str], ExtraHandler]] = []
EXTRA_ROUTES.extend(COMPACTION_ROUTES)  # POST /v1/responses/compact
EXTRA_ROUTES.extend(CONVERSATION_ROUTES)  # /v1/conversations
EXTRA_ROUTES.extend(INPUT_TOKENS_ROUTES)  # POST /v1/responses/input_tokens
EXTRA_ROUTES.extend(WEBSOCKET_ROUTES)  # GET /v1/responses, upgraded to a WebSocket
