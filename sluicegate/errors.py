"""The one error hierarchy of sluicegate.

Every error knows the HTTP status it maps to and the OpenAI error envelope it renders as
(``{"error": {"message", "type", "param", "code"}}``, the Responses API reference), so the library
and the proxy report the same failure the same way. Foreign exceptions (httpx, cattrs, sqlite) are
translated into these at exactly one boundary each, with ``raise Ours(...) from exc``.

::

    SluicegateError                      500 server_error           (base; ours unless refined)
    ├── ConfigError                      --  configuration rejected at load, names the path
    ├── ClientError                      4xx invalid_request_error  (the caller's fault)
    │   ├── InvalidRequestError          400  names the offending ``param``
    │   ├── AuthenticationError          401  missing, unknown, expired or deleted API key
    │   ├── PermissionDeniedError        403  the key may not use this model / endpoint
    │   ├── NotFoundError                404  unknown or forged response ID, unknown model
    │   ├── RequestTimeoutError          408  the client took too long to send its body
    │   ├── RequestTooLargeError         413  the request body is over the limit
    │   ├── UnsupportedMediaTypeError    415  a body the gateway cannot read (an unknown
    │   │                                     Content-Encoding)
    │   └── RateLimitError               429  a key's rpm / tpm / parallel limit or budget, or
    │                                         every deployment of a group at its rpm / tpm
    ├── ServiceUnavailableError          503  every deployment of a group cooling down
    ├── UpstreamError                    the provider's fault, or its verdict passed on
    │   ├── UpstreamStatusError          the provider's own status, message, type and code
    │   ├── UpstreamConnectionError      502  connect failure, reset, closed early
    │   ├── UpstreamTimeoutError         504  connect / first byte / idle / total deadline
    │   └── UpstreamProtocolError        502  malformed body or SSE from the provider
    ├── UpstreamEndedError               --  a background response its upstream ended without
    │                                         a terminal event (cancelled there): not a failure
    ├── StoreError                       500  the event store failed; that append was not written
    │   ├── StoreUnavailableError        503  busy/locked, or the store is closed: retry later
    │   └── StoreIntegrityError          500  an append broke the log's rules (a second
    │                                         terminal, an unknown response): a bug
    └── InternalError                    500  a bug of ours
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigError",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "SluicegateError",
    "StoreError",
    "StoreIntegrityError",
    "StoreUnavailableError",
    "UnsupportedMediaTypeError",
    "UpstreamConnectionError",
    "UpstreamEndedError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
]


class SluicegateError(Exception):
    """Base class. Subclasses set the class defaults; instances may refine them."""

    status_code: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type
        # Headers the HTTP face should send with this error (e.g. Retry-After).
        self.headers: dict[str, str] = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error envelope for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code}, "
            f"code={self.code!r}, param={self.param!r})"
        )


class ConfigError(SluicegateError):
    """The configuration was rejected. ``param`` is the path of the bad value."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        text = f"{path}: {message}" if path else message
        super().__init__(text, param=path, code="invalid_config")
        self.path = path


class ClientError(SluicegateError):
    status_code = 400
    type = "invalid_request_error"


class InvalidRequestError(ClientError):
    """A request parameter is missing, of the wrong type, or out of range."""

    status_code = 400


class AuthenticationError(ClientError):
    """No valid API key: missing, unknown, expired or deleted (the message never echoes it)."""

    status_code = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(ClientError):
    """The key is valid but may not do this (a model group it is not allowed, an admin route)."""

    status_code = 403
    type = "permission_error"
    default_code = "permission_denied"


class RequestTimeoutError(ClientError):
    """The client did not send its whole request body in time (a slow or stalled sender)."""

    status_code = 408
    default_code = "request_timeout"


class RequestTooLargeError(ClientError):
    status_code = 413
    default_code = "request_too_large"


class UnsupportedMediaTypeError(ClientError):
    """The body is in a form the gateway cannot read, such as a ``Content-Encoding`` it does
    not know; ``param`` names the header."""

    status_code = 415
    default_code = "unsupported_media_type"


class RateLimitError(ClientError):
    """A key's limit: requests or tokens per minute, parallel requests, or its budget. Carries
    ``Retry-After`` in ``headers`` when waiting helps."""

    status_code = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class NotFoundError(ClientError):
    """Unknown or forged response ID, unknown model, unknown deployment."""

    status_code = 404
    default_code = "not_found"


class ServiceUnavailableError(SluicegateError):
    """No deployment can take the request now (all cooling down after failures); the
    ``Retry-After`` header says when one will try again."""

    status_code = 503
    type = "service_unavailable_error"
    default_code = "no_deployment_available"


class UpstreamError(SluicegateError):
    """The provider failed, or refused, the request."""

    status_code = 502
    type = "server_error"

    #: Whether the connector may try this request again (before anything reached the caller).
    retryable: bool = False
    #: Seconds the provider asked us to wait (``Retry-After``), if it said.
    retry_after: float | None = None


class UpstreamStatusError(UpstreamError):
    """The provider answered with an error status; its message, type and code are passed on."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message,
            status_code=status_code,
            type=type or _default_type(status_code),
            code=code,
            param=param,
            headers=headers,
        )
        self.retry_after = retry_after
        self.retryable = status_code in RETRYABLE_STATUSES or status_code >= 500


class UpstreamConnectionError(UpstreamError):
    status_code = 502
    default_code = "upstream_connection_error"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class UpstreamProtocolError(UpstreamError):
    status_code = 502
    default_code = "upstream_protocol_error"


class UpstreamEndedError(SluicegateError):
    """A native upstream ended a background response without a terminal event on its stream
    (it was cancelled there, e.g. by another client): ``response`` is its final Response as the
    upstream answers a GET, ``status`` its status. It travels to the supervisor as a failure
    does, which records that end instead of a failure (docs/background.md). Not an
    ``UpstreamError``: the deployment did not fail, and nothing is retried."""

    def __init__(self, status: str, response: dict[str, Any]) -> None:
        super().__init__(f"the upstream ended the background response as {status}")
        self.status = status
        self.response = response


class StoreError(SluicegateError):
    """The event store failed; the records of the failed append were not written.

    Backend exceptions (``sqlite3``, later ``psycopg``) become these at one boundary in each
    backend; nothing above the store sees them."""

    status_code = 500
    default_code = "store_error"


class StoreUnavailableError(StoreError):
    """The database is busy or locked, or the store is closed; worth retrying later."""

    status_code = 503
    default_code = "store_unavailable"


class StoreIntegrityError(StoreError):
    """An append broke the log's rules (exactly one ``Accepted`` first, exactly one ``Ended``);
    nothing of that append was written."""

    status_code = 500
    default_code = "store_integrity"


class InternalError(SluicegateError):
    status_code = 500
    default_code = "internal_error"


#: Statuses worth another attempt: request timeout, conflict, rate limit; 5xx too.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def _default_type(status_code: int) -> str:
    if status_code == 401:
        return "authentication_error"
    if status_code == 403:
        return "permission_error"
    if status_code == 429:
        return "rate_limit_error"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"
