"""Accounts of the fake upstream: whose reasoning state a request may replay.

A real provider encrypts a reasoning item's ``encrypted_content`` under a key of the account
that produced it and refuses the token from any other account with 400
``invalid_encrypted_content``; a reasoning item replayed by ID alone must be one the account
stored. A gateway that spreads one conversation over deployments on different accounts must
keep that state with its account, and the fake has to refuse it the same way or such a gateway
bug would pass every test.

Here an account is a fake instance plus the API key it was called with: each instance draws a
random secret, and the account key is an HMAC of the API key under it. The token is
``gAAAAA`` (what OpenAI's tokens start with) followed by base64 of the sealed payload and its
HMAC-SHA256 under the account key; it is bound, not secret, which is all a fake needs.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

import attrs
import orjson

__all__ = ["Account", "unverified_message"]

_PREFIX: Final = "gAAAAA"
_MAC_SIZE: Final = hashlib.sha256().digest_size


@attrs.frozen
class Account:
    """One account's key: it seals reasoning state and knows its own tokens."""

    key: bytes = attrs.field(repr=False)

    @classmethod
    def of(cls, secret: bytes, api_key: str) -> Account:
        """The account behind ``api_key`` on the fake instance whose secret is ``secret``."""
        return cls(hmac.digest(secret, api_key.encode(), "sha256"))

    def seal(self, item_id: str, reasoning: str) -> str:
        """The ``encrypted_content`` token of reasoning item ``item_id``."""
        payload = orjson.dumps({"id": item_id, "reasoning": reasoning})
        mac = hmac.digest(self.key, payload, "sha256")
        return _PREFIX + base64.b64encode(payload + mac).decode()

    def issued(self, token: str) -> bool:
        """Whether ``token`` is one this account sealed, unaltered."""
        if not token.startswith(_PREFIX):
            return False
        try:
            raw = base64.b64decode(token[len(_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            return False
        payload, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
        if not payload:
            return False
        return hmac.compare_digest(mac, hmac.digest(self.key, payload, "sha256"))


def unverified_message(token: str) -> str:
    """OpenAI's wording for a token it cannot verify: the token abbreviated to its ends."""
    shown = f"{token[:4]}...{token[-4:]}" if len(token) > 8 else token
    return f"The encrypted content {shown} could not be verified."
