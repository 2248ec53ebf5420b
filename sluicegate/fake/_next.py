"""What a fake upstream connection does after answering a request (the server's and its
extra routes' common word, in a module of its own so neither imports the other for it)."""

from __future__ import annotations

import enum

__all__ = ["Next"]


class Next(enum.Enum):
    """What a connection does after answering a request: a handler that takes the socket
    over returns ``CLOSE``."""

    KEEP_ALIVE = enum.auto()
    CLOSE = enum.auto()
    RESET = enum.auto()
