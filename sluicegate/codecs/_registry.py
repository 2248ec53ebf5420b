"""Which codec speaks to which provider: the bridges by provider name (native Responses
upstreams have none: they use ``openai_responses`` directly)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from ..config import CHAT_PROVIDERS

if TYPE_CHECKING:
    from ._bridge import BridgeCodec

__all__ = ["bridge_codec"]

#: Provider -> the module whose ``CODEC`` bridges it.
_MODULES: Final = {
    **{provider: "chat_completions" for provider in CHAT_PROVIDERS},
    "anthropic": "anthropic",
    "gemini": "gemini",
}
_LOADED: dict[str, BridgeCodec] = {}


def bridge_codec(provider: str) -> BridgeCodec | None:
    """The bridge for ``provider``, or None for a native Responses upstream. Imported on first
    use: a gateway that bridges nothing never loads a bridge."""
    codec = _LOADED.get(provider)
    if codec is None:
        module = _MODULES.get(provider)
        if module is None:
            return None
        codec = _LOADED[provider] = importlib.import_module(f"{__package__}.{module}").CODEC
    return codec
