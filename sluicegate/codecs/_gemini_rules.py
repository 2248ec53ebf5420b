"""What each Gemini model takes (the Gemini bridge's per-model rules, docs/bridges.md §12).

One table, :data:`MODEL_RULES`, by model-name prefix; a deployment's ``model_info`` overrides
its values (checked when the gateway opens). Sans-IO: no trio, no httpx.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._bridge import with_overrides
from ._gemini_answer import is_int

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["FALLBACK_RULES", "MODEL_RULES", "ModelRules", "rules_for"]

_REASONING_KINDS: Final = ("level", "budget", "none")
_EFFORTS: Final = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

#: ``reasoning.effort`` -> ``thinkingLevel`` / ``thinkingBudget`` (docs/bridges.md §4). Gemini 3 Pro
#: takes LOW/HIGH only and cannot stop thinking; 2.5 Pro cannot go below 128 tokens; 2.5 Flash
#: (and Flash-Lite: 0 or 512-24576) stops at 0 and tops out at 24576.
_PRO_LEVELS: Final[Mapping[str, str | int]] = {
    "none": "LOW",
    "minimal": "LOW",
    "low": "LOW",
    "medium": "HIGH",
    "high": "HIGH",
    "xhigh": "HIGH",
    "max": "HIGH",
}
_FLASH_LEVELS: Final[Mapping[str, str | int]] = {
    "none": "MINIMAL",
    "minimal": "MINIMAL",
    "low": "LOW",
    "medium": "MEDIUM",
    "high": "HIGH",
    "xhigh": "HIGH",
    "max": "HIGH",
}
_PRO_BUDGETS: Final[Mapping[str, str | int]] = {
    "none": 128,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 32768,
}
_FLASH_BUDGETS: Final[Mapping[str, str | int]] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
    "max": 24576,
}
#: The effort table a ``model_info`` ``reasoning`` override brings when it names no ``efforts``.
_DEFAULT_EFFORTS: Final[Mapping[str, Mapping[str, str | int]]] = {
    "level": _FLASH_LEVELS,
    "budget": _FLASH_BUDGETS,
    "none": {},
}


@attrs.frozen
class ModelRules:
    """What one Gemini model takes. A deployment's ``model_info`` keys of the same names
    override these values (e.g. ``reasoning: level`` for a model newer than the table)."""

    #: How ``reasoning.effort`` maps (docs/bridges.md §4): ``level`` (``thinkingLevel``, Gemini 3),
    #: ``budget`` (``thinkingBudget``, Gemini 2.5) or ``none`` (no thinking: no
    #: ``thinkingConfig`` at all, which such models refuse).
    reasoning: str
    #: ``reasoning.effort`` -> the ``thinkingLevel`` or ``thinkingBudget`` value.
    efforts: Mapping[str, str | int]
    #: Takes ``presencePenalty``/``frequencyPenalty`` (Gemini 3 refuses them).
    penalties: bool
    #: Refuses a step whose first ``functionCall`` has no ``thoughtSignature`` (Gemini 3,
    #: Gemini's generateContent reference): such calls get :data:`PLACEHOLDER_SIGNATURE`.
    signed_calls: bool
    #: Takes images and files inside a ``functionResponse`` (``parts``, Gemini 3).
    function_response_media: bool
    #: The largest ``maxOutputTokens`` (None: not known, not checked).
    max_output_tokens: int | None
    max_temperature: float = 2.0


_GEMINI_3_PRO: Final = ModelRules("level", _PRO_LEVELS, False, True, True, 65536)
_GEMINI_3: Final = ModelRules("level", _FLASH_LEVELS, False, True, True, 65536)

#: Gemini models by name prefix; the longest matching prefix wins (``gemini-2.5-flash-lite``
#: and ``gemini-2.5-flash-preview-09-2025`` are both ``gemini-2.5-flash``).
MODEL_RULES: Final[Mapping[str, ModelRules]] = {
    "gemini-3-pro": _GEMINI_3_PRO,
    "gemini-3.1-pro": _GEMINI_3_PRO,
    "gemini-3": _GEMINI_3,
    "gemini-2.5-pro": ModelRules("budget", _PRO_BUDGETS, True, False, False, 65536),
    "gemini-2.5-flash": ModelRules("budget", _FLASH_BUDGETS, True, False, False, 65536),
    "gemini-2.0-flash": ModelRules("none", {}, True, False, False, 8192),
}
#: A model the table does not know: nothing assumed (configure ``model_info`` to unlock
#: reasoning, or to have Gemini 3's signature rules).
FALLBACK_RULES: Final = ModelRules("none", {}, True, False, False, None)


def _is_efforts(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        key in _EFFORTS and (isinstance(v, str) or is_int(v)) for key, v in value.items()
    )


#: ``model_info`` key -> (whether a value is acceptable, what is expected).
_OVERRIDE_CHECKS: Final[Mapping[str, tuple[Any, str]]] = {
    "reasoning": (lambda v: v in _REASONING_KINDS, "one of 'level', 'budget', 'none'"),
    "efforts": (_is_efforts, "a mapping of reasoning efforts to a thinking level or budget"),
    "penalties": (lambda v: isinstance(v, bool), "a boolean"),
    "signed_calls": (lambda v: isinstance(v, bool), "a boolean"),
    "function_response_media": (lambda v: isinstance(v, bool), "a boolean"),
    "max_output_tokens": (lambda v: is_int(v) and v > 0, "a positive integer"),
    "max_temperature": (
        lambda v: (is_int(v) or isinstance(v, float)) and v >= 0,
        "a non-negative number",
    ),
}


def rules_for(deployment: Endpoint) -> ModelRules:
    """The deployment model's rules: the longest matching prefix in :data:`MODEL_RULES` (else
    :data:`FALLBACK_RULES`) with the deployment's ``model_info`` overrides.

    Raises:
        ConfigError: an override of the wrong type (names the ``model_info`` key).
    """
    model = deployment.model.removeprefix("models/")
    matches = [prefix for prefix in MODEL_RULES if model.startswith(prefix)]
    rules = MODEL_RULES[max(matches, key=len)] if matches else FALLBACK_RULES
    info = deployment.model_info
    if "reasoning" in info and "efforts" not in info and info["reasoning"] in _DEFAULT_EFFORTS:
        # Another reasoning kind brings its own efforts unless the config gives them.
        info = {**info, "efforts": _DEFAULT_EFFORTS[info["reasoning"]]}
    return with_overrides(rules, info, _OVERRIDE_CHECKS)
