"""sluicegate: a trio-native gateway for the OpenAI Responses API.

``async with sluicegate.open_gateway(config) as gw:`` then ``await gw.responses(...)`` or
``async with gw.stream(...) as events``. See the README for configuration.
"""

from __future__ import annotations

from ._gateway import BreakerState as BreakerState
from ._gateway import DeploymentStatistics as DeploymentStatistics
from ._gateway import Gateway as Gateway
from ._gateway import GatewayStatistics as GatewayStatistics
from ._gateway import ResponseStream as ResponseStream
from ._gateway import aresponses as aresponses
from ._gateway import open_gateway as open_gateway
from ._gateway import responses as responses
from ._types import ContentPartEvent as ContentPartEvent
from ._types import DeltaEvent as DeltaEvent
from ._types import ErrorEvent as ErrorEvent
from ._types import InputTokensDetails as InputTokensDetails
from ._types import ItemEvent as ItemEvent
from ._types import OutputItemEvent as OutputItemEvent
from ._types import OutputTokensDetails as OutputTokensDetails
from ._types import Response as Response
from ._types import ResponseEvent as ResponseEvent
from ._types import ResponseStatus as ResponseStatus
from ._types import StreamEvent as StreamEvent
from ._types import UnknownEvent as UnknownEvent
from ._types import Usage as Usage
from .config import GatewayConfig as GatewayConfig
from .config import load_config as load_config
from .errors import ConfigError as ConfigError
from .errors import InvalidRequestError as InvalidRequestError
from .errors import NotFoundError as NotFoundError
from .errors import RateLimitError as RateLimitError
from .errors import ServiceUnavailableError as ServiceUnavailableError
from .errors import SluicegateError as SluicegateError
from .errors import UpstreamError as UpstreamError
from .store import SpendLog as SpendLog
from .store import SpendTotal as SpendTotal

__all__ = [
    "BreakerState",
    "ConfigError",
    "ContentPartEvent",
    "DeltaEvent",
    "DeploymentStatistics",
    "ErrorEvent",
    "Gateway",
    "GatewayConfig",
    "GatewayStatistics",
    "InputTokensDetails",
    "InvalidRequestError",
    "ItemEvent",
    "NotFoundError",
    "OutputItemEvent",
    "OutputTokensDetails",
    "RateLimitError",
    "Response",
    "ResponseEvent",
    "ResponseStatus",
    "ResponseStream",
    "ServiceUnavailableError",
    "SluicegateError",
    "SpendLog",
    "SpendTotal",
    "StreamEvent",
    "UnknownEvent",
    "UpstreamError",
    "Usage",
    "aresponses",
    "load_config",
    "open_gateway",
    "responses",
]
