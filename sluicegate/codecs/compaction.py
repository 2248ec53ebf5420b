"""Compaction made by the gateway: the summary of a conversation, in an envelope only the
gateway can open (docs/compaction.md).

A native upstream compacts a conversation itself (``POST /responses/compact``) and answers with
a ``compaction`` item whose ``encrypted_content`` only its account can read; the gateway seals
that like any native state (``sealed.py``). A bridged provider has no such endpoint, so the
gateway compacts: the provider writes a summary of the conversation under
:data:`COMPACTION_INSTRUCTIONS`, and the ``compaction`` item's ``encrypted_content`` is this
module's envelope of that summary::

    sgc1.<base64url of: nonce (16 bytes) | ciphertext | tag (16 bytes)>

The plaintext is JSON (``{"summary": ...}``). The envelope is encrypt-then-MAC with two keys
derived from the gateway's ID secret (through :meth:`StateSeal.subkey`): the keystream is
HMAC-SHA256 of the nonce and a block counter (a PRF in counter mode), and the tag is
HMAC-SHA256, truncated to 128 bits, over the prefix, the nonce and the ciphertext. A client can
neither read the summary nor forge or alter an envelope; any gateway with the same secret opens
it, and the summary goes to any provider, so a gateway compaction pins nothing.

On a later request, a gateway ``compaction`` item in the input is replaced by the message
:func:`summary_message` makes (:func:`expand_compaction`) before routing, so every provider
reads it as ordinary input.

Sans-IO and pure: no trio, no httpx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
import orjson

from ..errors import InvalidRequestError
from .sealed import SEAL_PREFIX, ForgedState, StateSeal

__all__ = [
    "COMPACTION_INSTRUCTIONS",
    "COMPACTION_PREFIX",
    "SUMMARY_PREAMBLE",
    "CompactionSeal",
    "compaction_item",
    "expand_compaction",
    "summary_message",
    "user_messages",
]

COMPACTION_PREFIX: Final = "sgc1."
_NONCE_BYTES: Final = 16
_TAG_BYTES: Final = 16
_BLOCK: Final = hashlib.sha256().digest_size

#: The instruction a bridged provider compacts a conversation under (docs/compaction.md). It
#: goes as the summary request's ``instructions``, after the caller's own, if any.
COMPACTION_INSTRUCTIONS: Final = (
    "You are compacting the conversation above so that it can continue in a fresh context. "
    "Write a summary that another assistant can continue from without the original messages: "
    "the user's goals and constraints, the decisions made and why, facts, names, numbers, "
    "file paths and code identifiers that were established, the results of tool calls, what "
    "has been done, and what is still open or was to be done next. Keep the user's own "
    "wording where it matters. Do not address the user, do not continue the conversation and "
    "do not add anything that was not said: answer with the summary only."
)

#: What the expanded summary message starts with (:func:`summary_message`).
SUMMARY_PREAMBLE: Final = (
    "The earlier part of this conversation was compacted. This is a summary of it, written "
    "to continue from:"
)


@attrs.define(eq=False)
class CompactionSeal:
    """Seals and opens the gateway's compaction envelopes with keys from the ID secret."""

    _encryption_key: bytes = attrs.field(repr=False)
    _mac_key: bytes = attrs.field(repr=False)

    @classmethod
    def under(cls, seal: StateSeal) -> CompactionSeal:
        """The envelope keys derived from ``seal``'s key (itself the ID secret's)."""
        return cls(
            seal.subkey(b"sluicegate/compaction/v1/encrypt"),
            seal.subkey(b"sluicegate/compaction/v1/mac"),
        )

    def seal(self, summary: str, *, nonce: bytes | None = None) -> str:
        """``summary`` in an envelope (``nonce``: for tests; a random one by default)."""
        nonce = secrets.token_bytes(_NONCE_BYTES) if nonce is None else nonce
        if len(nonce) != _NONCE_BYTES:
            raise ValueError(f"the nonce must be {_NONCE_BYTES} bytes")
        plain = orjson.dumps({"summary": summary})
        cipher = _xor(plain, self._keystream(nonce, len(plain)))
        tag = self._tag(nonce, cipher)
        token = base64.urlsafe_b64encode(nonce + cipher + tag).rstrip(b"=").decode("ascii")
        return COMPACTION_PREFIX + token

    def open(self, value: str) -> str | None:
        """The summary in ``value``; None when ``value`` is not a gateway compaction envelope.

        Raises:
            ForgedState: it carries our prefix, but it was altered, cut or forged.
        """
        if not value.startswith(COMPACTION_PREFIX):
            return None
        text = value[len(COMPACTION_PREFIX) :]
        if "+" in text or "/" in text:
            raise ForgedState("malformed envelope")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ForgedState("malformed envelope") from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise ForgedState("malformed envelope")
        nonce, cipher, tag = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(nonce, cipher)):
            raise ForgedState("the envelope does not verify")
        try:
            payload = orjson.loads(_xor(cipher, self._keystream(nonce, len(cipher))))
        except orjson.JSONDecodeError:  # pragma: no cover -- the tag verified what we sealed
            raise ForgedState("malformed envelope") from None
        summary = payload.get("summary") if isinstance(payload, dict) else None
        if not isinstance(summary, str):  # pragma: no cover -- likewise
            raise ForgedState("malformed envelope")
        return summary

    def _keystream(self, nonce: bytes, size: int) -> bytes:
        blocks = [
            hmac.new(self._encryption_key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest()
            for i in range(-(-size // _BLOCK))
        ]
        return b"".join(blocks)[:size]

    def _tag(self, nonce: bytes, cipher: bytes) -> bytes:
        message = COMPACTION_PREFIX.encode() + nonce + cipher
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()[:_TAG_BYTES]


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def compaction_item(item_id: str, envelope: str) -> dict[str, Any]:
    """The ``compaction`` output item of a gateway compaction."""
    return {"id": item_id, "type": "compaction", "encrypted_content": envelope}


def summary_message(summary: str) -> dict[str, Any]:
    """What a gateway compaction item becomes in a request's input: a user message (the
    summary is the model's account of what the user and the tools said, so it gets no more
    authority than they had) that says what it is."""
    return {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": f"{SUMMARY_PREAMBLE}\n\n{summary}"}],
    }


def expand_compaction(
    item: Mapping[str, Any], index: int, seal: CompactionSeal, *, bridged: bool
) -> dict[str, Any] | None:
    """The input item that replaces ``item`` (a ``compaction`` item at ``input[index]``):
    the summary message of a gateway compaction; None to leave it as it is (a native one,
    which the caller's request may carry to its deployment).

    Raises:
        InvalidRequestError: an altered or forged gateway envelope; a compaction a native
            deployment sealed, sent where only bridged providers serve (none of them can read
            it); one without ``encrypted_content``.
    """
    state = item.get("encrypted_content")
    param = f"input[{index}].encrypted_content"
    if not isinstance(state, str) or not state:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    try:
        summary = seal.open(state)
    except ForgedState:
        raise InvalidRequestError(
            f"The compaction in input[{index}] was not made by this gateway or was altered; "
            "pass the output of a compaction back exactly as it was received.",
            param=param,
            code="invalid_encrypted_content",
        ) from None
    if summary is not None:
        return summary_message(summary)
    if bridged and state.startswith(SEAL_PREFIX):
        raise InvalidRequestError(
            f"The compaction in input[{index}] was made by a native deployment, and only that "
            "deployment's account can read it; this model is served by bridged providers "
            "only. Continue the conversation with the model that compacted it, or compact it "
            "again here.",
            param=param,
            code="invalid_encrypted_content",
        )
    return None


def user_messages(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The user messages of a conversation (Responses items in the normal form of
    ``conversation_items``), as a compaction's output lists them; an earlier compaction's
    summary message (:func:`summary_message`, from a stored conversation) is not one: the
    new compaction holds it, and a client never reads a summary."""
    out: list[dict[str, Any]] = []
    for item in items:
        if item.get("type", "message") != "message" or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        if _is_summary(content):
            continue  # an earlier compaction, expanded: its summary is in the new one
        # No ``id``: the items go back as input, where an ID names a stored item to the
        # upstream (and the gateway's stored input IDs are no upstream's).
        out.append({"type": "message", "role": "user", "content": content, "status": "completed"})
    return out


def _is_summary(content: Any) -> bool:
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        return False
    text = content[0].get("text")
    return isinstance(text, str) and text.startswith(f"{SUMMARY_PREAMBLE}\n\n")
