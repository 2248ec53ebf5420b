"""Which codec speaks to which provider, and the providers the gateway knows.

Native Responses upstreams have no bridge: they use ``openai_responses`` directly. Every other
provider is bridged by the codec its wire format names, loaded on first use. The configuration
reads this catalogue (which provider names a ``model_list`` entry may use, and where each lives
by default); the codecs read nothing of the configuration.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._bridge import BridgeCodec

__all__ = [
    "CHAT_PROVIDERS",
    "MESSAGE_PROVIDERS",
    "NATIVE_PROVIDERS",
    "PROVIDERS",
    "bridge_codec",
    "is_bridged",
]

#: Providers whose upstream speaks the Responses API natively.
NATIVE_PROVIDERS = frozenset({"openai", "azure", "fake"})
#: OpenAI-compatible Chat Completions servers, LiteLLM's prefixes where it has one:
#: provider -> (default api_base or None when it must be configured, API key variable or None).
CHAT_PROVIDERS: Mapping[str, tuple[str | None, str | None]] = {
    "chat": (None, None),
    "openai_chat": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "hosted_vllm": (None, "HOSTED_VLLM_API_KEY"),
    "ollama_chat": ("http://127.0.0.1:11434/v1", None),
    "groq": ("https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "deepseek": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "together_ai": ("https://api.together.xyz/v1", "TOGETHERAI_API_KEY"),
    "fireworks_ai": ("https://api.fireworks.ai/inference/v1", "FIREWORKS_AI_API_KEY"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "xai": ("https://api.x.ai/v1", "XAI_API_KEY"),
}
#: Bridged providers with their own wire format: (default api_base, API key variable, the
#: variable that overrides the api_base).
MESSAGE_PROVIDERS: Mapping[str, tuple[str, str, str]] = {
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY", "ANTHROPIC_API_BASE"),
    "gemini": (
        "https://generativelanguage.googleapis.com",
        "GEMINI_API_KEY",
        "GEMINI_API_BASE",
    ),
}
#: Every provider a ``model_list`` entry may name.
PROVIDERS = NATIVE_PROVIDERS | frozenset(CHAT_PROVIDERS) | frozenset(MESSAGE_PROVIDERS)


def is_bridged(provider: str) -> bool:
    """Whether the gateway translates this provider's wire format (docs/bridges.md): the
    conversation of such a response lives in the event store, not at the provider."""
    return provider not in NATIVE_PROVIDERS


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
