"""The ``resp_`` ID codec (docs/design.md §4).

An encoded ID is ``resp_`` + URL-safe base64 (no padding) of::

    version (1 byte) | field* | tag (16 bytes)
    field = length (2 bytes, big endian) | UTF-8 bytes
    fields, in order: provider, deployment ID, upstream's raw ID, owner

``tag`` is HMAC-SHA256 over everything before it, keyed by a key derived from the configured
secret, truncated to 128 bits. A forged or altered ID fails the tag check and decodes to a
:class:`~sluicegate.errors.NotFoundError`: never a route to another deployment or another owner.

IDs minted by LiteLLM (``resp_`` + base64 of
``litellm:custom_llm_provider:P;model_id:D;response_id:R``) are unsigned; they are accepted on
input, for users migrating, and marked ``signed=False`` so callers can apply their own policy.

Sans-IO and pure: no trio, no httpx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import attrs

from ..errors import NotFoundError

__all__ = ["DecodedId", "IdCodec"]

_VERSION = 1
_TAG_BYTES = 16
_LITELLM_PREFIX = "litellm:custom_llm_provider:"


@attrs.frozen(kw_only=True)
class DecodedId:
    provider: str
    deployment_id: str
    raw_id: str
    owner: str = ""
    #: False for LiteLLM's unsigned IDs.
    signed: bool = True


@attrs.define(eq=False)
class IdCodec:
    """Encodes and verifies IDs with one prefix (``resp_``; files and batches get their own)."""

    _key: bytes = attrs.field(repr=False)
    _prefix: str = "resp_"

    @classmethod
    def from_secret(cls, secret: str | bytes, *, prefix: str = "resp_") -> IdCodec:
        raw = secret.encode() if isinstance(secret, str) else secret
        # Derive a purpose-bound key so the same secret can key other things safely.
        key = hmac.new(raw, b"sluicegate/id/v1/" + prefix.encode(), hashlib.sha256).digest()
        return cls(key, prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    def encode(self, *, provider: str, deployment_id: str, raw_id: str, owner: str = "") -> str:
        body = bytearray([_VERSION])
        for field in (provider, deployment_id, raw_id, owner):
            data = field.encode()
            if len(data) > 0xFFFF:
                raise ValueError("ID field too long to encode")
            body += len(data).to_bytes(2, "big")
            body += data
        body += hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG_BYTES]
        return self._prefix + base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode("ascii")

    def decode(self, value: str, *, param: str | None = None) -> DecodedId:
        """Verify and decode; raises NotFoundError (naming ``param``) when it is not ours."""
        if not isinstance(value, str) or not value.startswith(self._prefix):
            raise self._not_found(value, param)
        blob = _b64decode(value[len(self._prefix) :])
        if blob is None:
            raise self._not_found(value, param)
        if blob.startswith(_LITELLM_PREFIX.encode()):
            litellm = _decode_litellm(blob)
            if litellm is None:
                raise self._not_found(value, param)
            return litellm
        if len(blob) < 1 + _TAG_BYTES or blob[0] != _VERSION:
            raise self._not_found(value, param)
        body, tag = blob[:-_TAG_BYTES], blob[-_TAG_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG_BYTES]
        if not hmac.compare_digest(tag, expected):
            raise self._not_found(value, param)
        fields: list[str] = []
        pos = 1
        try:
            while pos < len(body):
                size = int.from_bytes(body[pos : pos + 2], "big")
                pos += 2
                if pos + size > len(body):
                    raise ValueError("truncated")
                fields.append(body[pos : pos + size].decode())
                pos += size
        except (ValueError, UnicodeDecodeError):
            raise self._not_found(value, param) from None
        if len(fields) != 4:
            raise self._not_found(value, param)
        provider, deployment_id, raw_id, owner = fields
        return DecodedId(provider=provider, deployment_id=deployment_id, raw_id=raw_id, owner=owner)

    def _not_found(self, value: object, param: str | None) -> NotFoundError:
        shown = value if isinstance(value, str) and len(value) <= 200 else "<id>"
        if param == "previous_response_id":
            return NotFoundError(
                f"Previous response with id '{shown}' not found.",
                param=param,
                code="previous_response_not_found",
            )
        return NotFoundError(f"No response found with id '{shown}'.", param=param)


def _b64decode(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "+" in text or "/" in text:  # LiteLLM uses the standard alphabet
            return base64.b64decode(padded, validate=True)
        return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        return None


def _decode_litellm(blob: bytes) -> DecodedId | None:
    try:
        text = blob.decode()
    except UnicodeDecodeError:
        return None
    parts = text.split(";", 2)
    if len(parts) != 3:
        return None
    provider = parts[0][len(_LITELLM_PREFIX) :]
    model_id = parts[1].removeprefix("model_id:")
    raw_id = parts[2].removeprefix("response_id:")
    if not parts[1].startswith("model_id:") or not parts[2].startswith("response_id:"):
        return None
    if not provider or not raw_id:
        return None
    return DecodedId(
        provider=provider,
        deployment_id="" if model_id == "None" else model_id,
        raw_id=raw_id,
        signed=False,
    )
