"""The official openai SDK as the judge of our wire shapes: if it cannot parse it, it is wrong."""

from __future__ import annotations

from typing import Any

import pydantic
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent

_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


def sdk_event(data: dict[str, Any]) -> Any:
    """Parse one stream event with the SDK's own types (raises if it does not fit)."""
    return _EVENTS.validate_python(data)


def sdk_response(data: dict[str, Any]) -> SdkResponse:
    return SdkResponse.model_validate(data)
