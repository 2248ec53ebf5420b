"""Upstream content either backend can keep, even when part of it cannot be encoded.

A response the upstream answered is recorded and billed even when part of its content cannot
be stored (nested deeper than the JSON encoder goes, which a provider's JSON can be): that
part is replaced by a stand-in that says so. Anything else that is not JSON is a bug of ours,
not provider content, and refused.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from ..errors import StoreIntegrityError

__all__ = ["UNRECORDED", "storable", "too_deep"]

#: The key of the stand-in for content the JSON encoder cannot hold.
UNRECORDED: Final = "sluicegate_unrecorded"


def too_deep(exc: orjson.JSONEncodeError) -> bool:
    """Whether the encoder refused ``exc``'s value for its depth (else: it is not JSON)."""
    return "recursion" in str(exc).lower()


def storable(value: Any, levels: int) -> Any:
    """``value`` with every part the encoder refuses replaced by ``{UNRECORDED: reason}``,
    keeping everything else (identities, types, statuses, usage) as it was. ``levels``: how
    far down only what fails is replaced (an item's fields: 1; an event's item's fields: 2; a
    response's output items' fields: 3); below, the whole failing value is.

    Raises:
        StoreIntegrityError: a part is not JSON for another reason than its depth.
    """
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if not too_deep(exc):
            raise StoreIntegrityError(f"a record is not JSON-serializable: {exc}") from exc
        if levels > 0 and isinstance(value, dict):
            return {k: storable(v, levels - 1) for k, v in value.items()}
        if levels > 0 and isinstance(value, list):
            return [storable(v, levels - 1) for v in value]
        return {UNRECORDED: f"not storable as JSON ({exc})"}
    return value
