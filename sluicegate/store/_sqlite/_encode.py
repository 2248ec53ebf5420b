"""Encoding, in the caller's task: SQLite binds what the SQL backends' encoding makes of a record
(``.._sql._encode``: its kind, ordinal and payload in the log, and the projection columns it
sets) as it is, payloads as BLOBs and booleans as integers."""

from __future__ import annotations

from .._sql._encode import _encode_all as _encode_all
from .._sql._encode import _Encoded as _Encoded
