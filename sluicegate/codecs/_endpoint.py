"""What a codec knows of the deployment it writes a request for.

Codecs know nothing of the configuration: a request builder takes its deployment as an
:class:`Endpoint`, the few facts that address a provider and choose its rules. The
configuration's ``Deployment`` is one; a test may pass any object of that shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["Credential", "Endpoint"]


class Credential(Protocol):
    """A secret that is shown only where it is sent."""

    def reveal(self) -> str: ...


class Endpoint(Protocol):
    """A provider's model at one address, with the credential to reach it."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def api_base(self) -> str | None: ...
    @property
    def api_version(self) -> str | None: ...
    @property
    def api_key(self) -> Credential | None: ...
    @property
    def extra_headers(self) -> Mapping[str, str]: ...
    #: Per-model facts a bridge reads (its rules table's overrides).
    @property
    def model_info(self) -> Mapping[str, Any]: ...
