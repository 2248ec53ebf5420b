"""Sealed provider state: opaque state that only one deployment can read, in our envelope.

A native upstream's ``encrypted_content`` (on ``reasoning`` items, and on any other output item
that carries one, such as compaction items) can be decrypted only by the provider account that
issued it: replayed to another deployment of the same model group, it fails with
``invalid_encrypted_content``. The gateway therefore never hands it to a caller bare. On the
way out it is sealed, naming the deployment that issued it::

    sgs1.<deployment ID, base64url>.<tag, base64url>.<the provider's text, unchanged>

``tag`` is HMAC-SHA256 (truncated to 128 bits) over the deployment ID and the provider's text,
keyed by a key derived from the gateway's ID secret, so a caller can neither forge a seal nor
move state to another deployment by editing it. On the way in (input items the caller replays)
the seal is checked and removed, and the deployment it names pins the request (see the
router's affinity rules). The provider's text is kept as it is (it is already URL-safe text),
so sealing costs a few dozen bytes, not a re-encoding.

An ``encrypted_content`` without our prefix is not ours (the caller talks to a provider
directly too, or replays state from elsewhere): it passes through untouched and pins nothing.

Sans-IO and pure: no trio, no httpx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

import attrs

__all__ = ["SEAL_PREFIX", "ForgedState", "SealedState", "StateSeal"]

SEAL_PREFIX: Final = "sgs1."
_TAG_BYTES: Final = 16


class ForgedState(ValueError):
    """A value that carries our prefix but not a valid seal (altered, truncated or forged)."""


@attrs.frozen
class SealedState:
    """What a seal holds: the deployment that issued the state, and the state itself."""

    deployment_id: str
    raw: str


@attrs.define(eq=False)
class StateSeal:
    """Seals and opens provider state with one key (derived from the gateway's ID secret)."""

    _key: bytes = attrs.field(repr=False)

    @classmethod
    def from_secret(cls, secret: str | bytes) -> StateSeal:
        raw = secret.encode() if isinstance(secret, str) else secret
        # A purpose-bound key: the same secret also keys the resp_ IDs.
        return cls(hmac.new(raw, b"sluicegate/state/v1", hashlib.sha256).digest())

    def seal(self, deployment_id: str, raw: str) -> str:
        """``raw`` (the provider's opaque text) sealed for ``deployment_id``. Idempotent: a
        value that is already sealed is returned as it is."""
        if raw.startswith(SEAL_PREFIX):
            return raw
        dep = deployment_id.encode()
        tag = self._tag(dep, raw.encode())
        return f"{SEAL_PREFIX}{_b64(dep)}.{_b64(tag)}.{raw}"

    def subkey(self, purpose: bytes) -> bytes:
        """A key for another envelope of the gateway's (``compaction.py``), bound to
        ``purpose`` and derived from this one, so no key serves two purposes."""
        return hmac.new(self._key, purpose, hashlib.sha256).digest()

    def open(self, value: str) -> SealedState | None:
        """The sealed state in ``value``; None when ``value`` is not sealed by a gateway.

        Raises:
            ForgedState: it carries our prefix, but its seal does not verify.
        """
        if not value.startswith(SEAL_PREFIX):
            return None
        dep_text, sep1, rest = value[len(SEAL_PREFIX) :].partition(".")
        tag_text, sep2, raw = rest.partition(".")
        if not (sep1 and sep2):
            raise ForgedState("malformed seal")
        dep = _unb64(dep_text)
        tag = _unb64(tag_text)
        if dep is None or tag is None or len(tag) != _TAG_BYTES:
            raise ForgedState("malformed seal")
        if not hmac.compare_digest(tag, self._tag(dep, raw.encode())):
            raise ForgedState("the seal does not verify")
        try:
            deployment_id = dep.decode()
        except UnicodeDecodeError:  # pragma: no cover -- the tag verified what we encoded
            raise ForgedState("malformed seal") from None
        return SealedState(deployment_id, raw)

    def _tag(self, dep: bytes, raw: bytes) -> bytes:
        message = len(dep).to_bytes(2, "big") + dep + raw
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    if "+" in text or "/" in text:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Canonical only: base64's unused low bits would let a changed seal open unchanged.
    return data if _b64(data) == text else None
