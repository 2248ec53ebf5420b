"""Virtual API keys: who a request is, and whether its key may make it (docs/design.md §6,
"Keys and ownership").

Theory of operation:

- **Keys.** The master key (``general_settings.master_key``) is the admin: every route, every
  response, key administration. Virtual keys are minted by the admin (:meth:`KeyManager.generate`,
  LiteLLM's ``/key/generate``); the secret (``sk-sg-…``) is shown once and only its SHA-256 is
  stored. A key's public ``key_id`` is the owner of the responses and spend rows of its requests.
  A secret never appears in an error, a log line or a response after the one that minted it.
- **Authentication** (:meth:`KeyManager.authenticate`) takes ``Authorization: Bearer <key>`` or
  the ``api-key`` header (the Azure SDKs), compares the master key in constant time, and looks a
  virtual key up by its hash. Found keys are cached per process for ``cache_ttl`` seconds (1 by
  default), so worker processes and instances sharing a store see a deletion within that (a
  busy key costs one indexed read a second); a deletion made through this manager takes
  effect here at once. Unknown keys are not cached: nothing a caller sends can grow the cache
  past its bound, and a key minted by another worker works at once.
- **Admission** (:meth:`KeyManager.admit`), for a virtual key, in this order: the model is one
  the key may use (403); its spend is under its budget (429 ``budget_exceeded``; the spend is
  cached per key for one second, so a busy key costs one store read a second, not one a
  request); then its requests per minute, tokens per minute and parallel requests (429 with
  ``Retry-After``), which the manager's :class:`~sluicegate.limits.KeyLimiter` counts: the
  minute is a sliding window of the admitted requests, and of the token counts recorded with
  :meth:`Admission.record_tokens`.
- **Where limits are counted.** By default in this process (a
  :class:`~sluicegate.limits.LocalKeyLimiter`): with N worker processes a key may get up to N
  times its rpm, tpm and parallel requests. With the limiter of limits opened on Redis
  (``sluicegate.limits.open_limits``) every process and instance sharing that Redis counts
  against the same windows. Budgets are shared either way: spend is read from the store, at
  most a second late.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from .._gateway import MAX_SAFE_INTEGER, checked_int
from ..config import DURATION_EXPECTED, parse_duration
from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from ..limits import KeyHold, KeyLimiter, Limit, LocalKeyLimiter, Refused
from ..store import KeyRow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..config import Secret
    from ..store import Store

__all__ = [
    "ADMIN",
    "ADMIN_OWNER",
    "Admission",
    "Caller",
    "KeyManager",
    "KeyManagerStatistics",
    "SECRET_PREFIX",
    "hash_key",
]

#: The owner of the admin's responses (a key's owner is its ``key_id``, never this).
ADMIN_OWNER: Final = "admin"
#: How a minted secret begins (``sk-`` so tools that look for OpenAI-style keys recognise it).
SECRET_PREFIX: Final = "sk-sg-"

#: The most found keys a manager caches; the oldest entry goes first.
_CACHE_MAX: Final = 10_000
#: What a ``key_id`` looks like (what :meth:`KeyManager.generate` mints).
_KEY_ID: Final = re.compile(r"key-[0-9a-f]{16}")

# OpenAI's wording (the Responses API reference), without the key: OpenAI echoes part of it, we
# never do.
_MISSING: Final = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an api-key header."
)
_INCORRECT: Final = "Incorrect API key provided."
_EXPIRED: Final = "The API key has expired."


def hash_key(secret: str) -> str:
    """The hex SHA-256 of a secret key: what the store keeps and looks keys up by.

    Unsalted on purpose: a minted secret has 256 random bits, so no dictionary or rainbow table
    reaches it, and an unsalted hash is what lets a key be found by an index search.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class Caller:
    """Who a request is: the admin (master key), or a virtual key."""

    #: The owner of the responses and spend rows of the caller's requests: the key's
    #: ``key_id``, or :data:`ADMIN_OWNER`.
    owner: str
    #: The master key (or an unauthenticated proxy): every route, every response.
    admin: bool
    #: The virtual key, as it was when the request was authenticated; None for the admin.
    key: KeyRow | None


#: The admin caller.
ADMIN: Final = Caller(owner=ADMIN_OWNER, admin=True, key=None)


@attrs.frozen(kw_only=True)
class KeyManagerStatistics:
    #: Keys found in the store and cached.
    cached_keys: int
    #: Keys with rate-limit state in this process.
    tracked_keys: int
    #: This process's admitted requests of virtual keys not released yet.
    in_flight: int


@attrs.define(eq=False)
class Admission:
    """An admitted request's hold on its key's limits (a no-op for the admin).

    Call :meth:`record_tokens` when its usage is known and :meth:`release` when it ends (in a
    ``finally``; a second release does nothing).
    """

    _hold: KeyHold | None
    _released: bool = False

    def record_tokens(self, n: int) -> None:
        """Count ``n`` tokens against the key's tokens per minute, from now; before or after
        :meth:`release`.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError("a token count must not be negative")
        if self._hold is not None and n:
            self._hold.record_tokens(n)

    def release(self) -> None:
        """The request ended: it no longer counts against the key's parallel requests."""
        if self._hold is not None and not self._released:
            self._released = True
            self._hold.release()


#: The admin's admission: nothing to count.
_UNLIMITED: Final = Admission(None)


@attrs.define(eq=False)
class KeyManager:
    """Authenticates callers, admits their requests, and administers virtual keys.

    Args:
        store: where the keys are (hashed).
        master_key: the admin's key; None: no admin key.
        allow_unauthenticated: without a master key, every caller is the admin (local
            development; any key sent is ignored). With a master key it changes nothing.
        spend: a key's total spend so far in USD, by ``key_id`` (the server sums
            ``Gateway.spend_totals(group_by="owner", owner=key_id)``).
        wall_clock: unix seconds, for ``created_at`` and expiry.
        cache_ttl: seconds (``trio.current_time()``) a found key is trusted without reading the
            store again: the longest another process's deletion takes to reach this one.
        spend_ttl: seconds a key's spend is trusted without asking ``spend`` again.
        limiter: counts the keys' rpm, tpm and parallel requests; by default in this process
            only (with N worker processes a key may get up to N times its limits), or shared
            by every instance on one Redis (``sluicegate.limits.open_limits(url).keys``).
    """

    _store: Store
    _master_key: Secret | None
    _allow_unauthenticated: bool = attrs.field(kw_only=True)
    _spend: Callable[[str], Awaitable[float]] = attrs.field(kw_only=True)
    _wall_clock: Callable[[], float] = attrs.field(default=time.time, kw_only=True)
    _cache_ttl: float = attrs.field(default=1.0, kw_only=True)
    _spend_ttl: float = attrs.field(default=1.0, kw_only=True)
    _limiter: KeyLimiter = attrs.field(factory=LocalKeyLimiter, kw_only=True)
    #: key_hash -> (trio time of the read, row); insertion order is age.
    _cache: dict[str, tuple[float, KeyRow]] = attrs.field(factory=dict, init=False)
    #: key_id -> (trio time of the read, spend).
    _spent: dict[str, tuple[float, float]] = attrs.field(factory=dict, init=False)

    def statistics(self) -> KeyManagerStatistics:
        limits = self._limiter.statistics()
        return KeyManagerStatistics(
            cached_keys=len(self._cache),
            tracked_keys=limits.tracked_keys,
            in_flight=limits.in_flight,
        )

    # -- authentication

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Caller:
        """Who sends a request, from its ``Authorization`` and ``api-key`` header values (a
        bearer token wins over ``api-key``).

        Returns:
            :data:`ADMIN` for the master key (or anyone, with ``allow_unauthenticated`` and no
            master key); a key's :class:`Caller` for a live virtual key.

        Raises:
            AuthenticationError: no key (code ``missing_api_key``); an unknown or deleted key
                (``invalid_api_key``); an expired key (``expired_api_key``). The message never
                holds the key or any part of it.
        """
        if self._master_key is None and self._allow_unauthenticated:
            await trio.lowlevel.checkpoint()
            return ADMIN
        secret = _presented_key(authorization, api_key)
        if secret is None:
            await trio.lowlevel.checkpoint()
            raise AuthenticationError(_MISSING, code="missing_api_key")
        # Bytes: compare_digest refuses str with non-ASCII characters, which a caller may send.
        if self._master_key is not None and hmac.compare_digest(
            secret.encode(), self._master_key.reveal().encode()
        ):
            await trio.lowlevel.checkpoint()
            return ADMIN
        row = await self._lookup(hash_key(secret))
        # A deleted key reads as unknown: whether it ever existed is not the caller's to learn.
        if row is None or row.deleted_at is not None:
            raise AuthenticationError(_INCORRECT)
        if row.expires_at is not None and row.expires_at <= self._wall_clock():
            raise AuthenticationError(_EXPIRED, code="expired_api_key")
        return Caller(owner=row.key_id, admin=False, key=row)

    async def _lookup(self, key_hash: str) -> KeyRow | None:
        now = trio.current_time()
        cached = self._cache.get(key_hash)
        if cached is not None and now < cached[0] + self._cache_ttl:
            await trio.lowlevel.checkpoint()
            return cached[1]
        row = await self._store.find_key(key_hash)
        self._cache.pop(key_hash, None)
        if row is not None:
            if len(self._cache) >= _CACHE_MAX:
                del self._cache[next(iter(self._cache))]
            # The time before the read: a row is never trusted for longer than the TTL.
            self._cache[key_hash] = (now, row)
        return row

    # -- admission

    async def admit(self, caller: Caller, model: str) -> Admission:
        """Admit one request of ``caller`` for the model group ``model``, or refuse it.

        For a virtual key, in order: the model, the budget, requests per minute, tokens per
        minute, parallel requests. An admitted request counts against the key's rpm at once and
        against its parallel requests until :meth:`Admission.release`. The admin is never
        limited.

        Raises:
            PermissionDeniedError: (param ``model``) the key may not use ``model``.
            RateLimitError: code ``budget_exceeded`` (with ``x-should-retry: false``: waiting
                does not help); or code ``rate_limit_exceeded`` with a ``Retry-After`` header
                (whole seconds, at least 1) for the rpm, tpm and parallel limits.
        """
        key = caller.key
        if caller.admin or key is None:
            await trio.lowlevel.checkpoint()
            return _UNLIMITED
        name = key.alias or key.key_id
        if key.models is not None and model not in key.models:
            await trio.lowlevel.checkpoint()
            allowed = ", ".join(f"'{m}'" for m in key.models) or "none"
            raise PermissionDeniedError(
                f"The API key '{name}' may not use model '{model}'. Its models are: {allowed}.",
                param="model",
            )
        if key.max_budget is not None:
            spend = await self._current_spend(key.key_id)
            if spend >= key.max_budget:
                raise RateLimitError(
                    f"Budget has been exceeded for the API key '{name}': its spend is "
                    f"{spend:.6g} USD, its budget {key.max_budget:.6g} USD.",
                    code="budget_exceeded",
                    headers={"x-should-retry": "false"},
                )
        limit = key.max_parallel_requests
        decision = await self._limiter.acquire(key.key_id, rpm=key.rpm, tpm=key.tpm, parallel=limit)
        match decision:
            case Refused(limit=Limit.RPM, retry_after=seconds):
                raise _rate_limited(
                    f"Rate limit reached for the API key '{name}': {key.rpm} requests per minute.",
                    retry_after=seconds,
                )
            case Refused(limit=Limit.TPM, retry_after=seconds):
                raise _rate_limited(
                    f"Rate limit reached for the API key '{name}': {key.tpm} tokens per minute.",
                    retry_after=seconds,
                )
            case Refused(retry_after=seconds):  # Limit.PARALLEL
                raise _rate_limited(
                    f"Rate limit reached for the API key '{name}': {limit} parallel requests.",
                    retry_after=seconds,
                )
            case _:
                return Admission(decision)

    async def _current_spend(self, key_id: str) -> float:
        now = trio.current_time()
        cached = self._spent.get(key_id)
        if cached is not None and now < cached[0] + self._spend_ttl:
            await trio.lowlevel.checkpoint()
            return cached[1]
        spend = await self._spend(key_id)
        self._spent[key_id] = (now, spend)
        return spend

    # -- administration (LiteLLM's /key/generate, /key/info, /key/delete)

    async def generate(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """Mint a virtual key (admin only). ``body`` is LiteLLM's ``/key/generate`` body:
        ``key_alias``, ``models`` (empty or absent: every model), ``rpm_limit``, ``tpm_limit``,
        ``max_parallel_requests`` (integers from 1 to ``MAX_SAFE_INTEGER``), ``max_budget`` (USD,
        from 0 to ``MAX_SAFE_INTEGER``), ``duration`` (seconds or ``"30d"``, ``"12h"``,
        ``"15m"``, ``"90s"``, at most 1000 years; absent: never expires), ``metadata``; every
        field may be null.

        Returns:
            LiteLLM's shape: ``key`` (the secret; shown this once), ``key_id``, ``key_alias``,
            ``models``, ``rpm_limit``, ``tpm_limit``, ``max_parallel_requests``, ``max_budget``,
            ``expires`` and ``created_at`` (ISO 8601, UTC; ``expires`` null if never),
            ``metadata``.

        Raises:
            PermissionDeniedError: the caller is not the admin.
            InvalidRequestError: an unknown field, or a field of the wrong type or range (its
                ``param`` names the field).
        """
        await _admin_only(caller)
        _known_fields(body, _GENERATE_FIELDS)
        alias = _optional_str(body, "key_alias")
        models = _optional_strings(body, "models")
        rpm = _optional_int(body, "rpm_limit")
        tpm = _optional_int(body, "tpm_limit")
        parallel = _optional_int(body, "max_parallel_requests")
        budget = _optional_number(body, "max_budget")
        duration = _optional_duration(body, "duration")
        metadata = _optional_object(body, "metadata")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        created_at = self._wall_clock()
        row = KeyRow(
            key_id="key-" + secrets.token_hex(8),
            key_hash=hash_key(secret),
            alias=alias,
            # An empty list means every model, as in LiteLLM.
            models=tuple(models) if models else None,
            rpm=rpm,
            tpm=tpm,
            max_parallel_requests=parallel,
            max_budget=budget,
            expires_at=None if duration is None else created_at + duration,
            created_at=created_at,
            metadata=metadata or {},
        )
        # Described before it is stored: nothing stored can then fail to be answered.
        created = {"key": secret, **_describe(row)}
        await self._store.put_key(row)
        return created

    async def info(self, caller: Caller, key: str | None) -> dict[str, Any]:
        """A key's settings and spend, without its secret. A virtual key may read its own
        (``key`` None, its secret or its ``key_id``); the admin any key, by secret or
        ``key_id``.

        Returns:
            The fields of :meth:`generate` but ``key``, and ``spend`` (USD).

        Raises:
            NotFoundError: the key is unknown or deleted, or not the caller's (the same 404:
                whether another key exists is not for a key to learn).
            InvalidRequestError: the admin named no key.
        """
        if caller.admin:
            if key is None:
                await trio.lowlevel.checkpoint()
                raise InvalidRequestError(
                    "Missing required parameter: 'key'.",
                    param="key",
                    code="missing_required_parameter",
                )
            row = await self._find(key)
        else:
            own = caller.key
            if own is None or not (
                key is None or key == own.key_id or hmac.compare_digest(hash_key(key), own.key_hash)
            ):
                await trio.lowlevel.checkpoint()
                raise _key_not_found(key)
            # Read again: the caller's row may be up to a cache TTL old.
            row = await self._store.get_key(own.key_id)
        if row is None or row.deleted_at is not None:
            raise _key_not_found(key)
        return {**_describe(row), "spend": await self._spend(row.key_id)}

    async def delete(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        """Delete keys (admin only), named by secret (``keys``) and/or ``key_ids``. They are
        refused at once by this manager, and by others sharing the store within their cache
        TTL. All are looked up before any is deleted.

        Returns:
            ``{"deleted_keys": [key_id, ...]}``.

        Raises:
            PermissionDeniedError: the caller is not the admin.
            InvalidRequestError: an unknown field, a wrong type, or neither list given.
            NotFoundError: a key is unknown or already deleted (``param`` gives its position;
                the message never holds a secret); nothing was deleted.
        """
        await _admin_only(caller)
        _known_fields(body, _DELETE_FIELDS)
        by_secret = _optional_strings(body, "keys") or []
        by_id = _optional_strings(body, "key_ids") or []
        if not by_secret and not by_id:
            raise InvalidRequestError(
                "Missing required parameter: 'keys' or 'key_ids'.",
                param="keys",
                code="missing_required_parameter",
            )
        targets: dict[str, None] = {}  # key IDs, in order, once each
        for i, secret in enumerate(by_secret):
            row = await self._store.find_key(hash_key(secret))
            if row is None or row.deleted_at is not None:
                raise NotFoundError(f"No API key found for 'keys[{i}]'.", param=f"keys[{i}]")
            targets[row.key_id] = None
        for i, key_id in enumerate(by_id):
            row = await self._store.get_key(key_id)
            if row is None or row.deleted_at is not None:
                raise NotFoundError(f"No API key found with id '{key_id}'.", param=f"key_ids[{i}]")
            targets[row.key_id] = None
        at = self._wall_clock()
        deleted = []
        for key_id in targets:
            # False only if a concurrent delete was first; it is gone either way.
            if await self._store.delete_key(key_id, at=at):
                deleted.append(key_id)
            self._forget(key_id)
        return {"deleted_keys": deleted}

    async def _find(self, key: str) -> KeyRow | None:
        """A key by ``key_id`` or by secret."""
        if _KEY_ID.fullmatch(key):
            return await self._store.get_key(key)
        return await self._store.find_key(hash_key(key))

    def _forget(self, key_id: str) -> None:
        """Drop what this manager holds of a key, so it is refused at once."""
        for key_hash in [h for h, (_, row) in self._cache.items() if row.key_id == key_id]:
            del self._cache[key_hash]
        self._spent.pop(key_id, None)
        self._limiter.forget(key_id)


def _presented_key(authorization: str | None, api_key: str | None) -> str | None:
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if api_key is not None and api_key.strip():
        return api_key.strip()
    return None


async def _admin_only(caller: Caller) -> None:
    await trio.lowlevel.checkpoint()
    if not caller.admin:
        raise PermissionDeniedError("Only the admin (the master key) may manage API keys.")


def _rate_limited(message: str, *, retry_after: float) -> RateLimitError:
    # Rounded to microseconds before the ceiling: float sums of clock readings must not turn
    # an exact 50 s into 51.
    seconds = max(1, math.ceil(round(retry_after, 6)))
    return RateLimitError(
        f"{message} Please try again in {seconds}s.", headers={"Retry-After": str(seconds)}
    )


def _key_not_found(key: str | None) -> NotFoundError:
    # A key_id may be named; a secret never is.
    if key is not None and _KEY_ID.fullmatch(key):
        return NotFoundError(f"No API key found with id '{key}'.", param="key")
    return NotFoundError("No API key found for the given key.", param="key")


#: What a date can hold, for times :func:`_iso` cannot write.
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC).isoformat()
_LATEST: Final = datetime.max.replace(tzinfo=UTC).isoformat()


def _iso(at: float | None) -> str | None:
    # Defensive: a row that :meth:`KeyManager.generate` did not check (an older version's,
    # another tool's) may hold any number; answering it must not fail.
    if at is None or math.isnan(at):
        return None
    try:
        return datetime.fromtimestamp(at, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return _LATEST if at > 0 else _EARLIEST


def _describe(row: KeyRow) -> dict[str, Any]:
    return {
        "key_id": row.key_id,
        "key_alias": row.alias,
        "models": list(row.models or ()),
        "rpm_limit": row.rpm,
        "tpm_limit": row.tpm,
        "max_parallel_requests": row.max_parallel_requests,
        "max_budget": row.max_budget,
        "expires": _iso(row.expires_at),
        "created_at": _iso(row.created_at),
        "metadata": dict(row.metadata),
    }


# --- strict validation of the admin bodies (messages as in sluicegate._gateway._params)

_GENERATE_FIELDS: Final = frozenset(
    {
        "key_alias",
        "models",
        "rpm_limit",
        "tpm_limit",
        "max_parallel_requests",
        "max_budget",
        "duration",
        "metadata",
    }
)
_DELETE_FIELDS: Final = frozenset({"keys", "key_ids"})

_JSON_NAMES: Final = (
    (bool, "a boolean"),
    (str, "a string"),
    (int, "an integer"),
    (float, "a number"),
    (list, "an array"),
    (dict, "an object"),
    (type(None), "null"),
)


def _invalid_type(name: str, value: Any, expected: str) -> InvalidRequestError:
    got = next((label for kind, label in _JSON_NAMES if isinstance(value, kind)), "a value")
    return InvalidRequestError(
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.",
        param=name,
        code="invalid_type",
    )


def _invalid_value(name: str, expected: str, value: Any) -> InvalidRequestError:
    # A huge int is described by its size: repr() refuses integers past 4300 digits.
    huge = isinstance(value, int) and not -(10**30) < value < 10**30
    shown = f"an integer of {value.bit_length()} bits" if huge else repr(value)
    return InvalidRequestError(
        f"Invalid '{name}': expected {expected}, but got {shown} instead.",
        param=name,
        code="invalid_value",
    )


def _known_fields(body: Mapping[str, Any], known: frozenset[str]) -> None:
    if not isinstance(body, Mapping):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_type")
    for name in body:
        if name not in known:
            raise InvalidRequestError(
                f"Unknown parameter: '{name}'.", param=str(name), code="unknown_parameter"
            )


def _optional_str(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid_type(name, value, "a string")
    return value


def _optional_strings(body: Mapping[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid_type(name, value, "an array of strings")
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            raise _invalid_type(f"{name}[{i}]", entry, "a string")
    return value


def _optional_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    # The store's rule for integers (bool is an int in Python, but not in JSON).
    return None if value is None else checked_int(name, value, low=1)


def _optional_number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(name, value, "a number")
    # Compared as given (float() of a huge int overflows); NaN fails every comparison.
    if not 0 <= value <= MAX_SAFE_INTEGER:
        raise _invalid_value(name, f"a number from 0 to {MAX_SAFE_INTEGER}", value)
    return float(value)


#: The longest ``duration`` of a key: its expiry stays far inside what a date holds (9999).
_MAX_DURATION: Final = 1000 * 365 * 86400.0


def _optional_duration(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except TypeError:
        raise _invalid_type(name, value, DURATION_EXPECTED) from None
    except (ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise _invalid_value(name, DURATION_EXPECTED, value) from None
    if seconds > _MAX_DURATION:
        raise _invalid_value(name, "a duration of at most 1000 years ('365000d')", value)
    return seconds


def _optional_object(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid_type(name, value, "an object")
    try:
        orjson.dumps(value)  # a library caller may pass what JSON cannot hold
    except orjson.JSONEncodeError as exc:
        raise InvalidRequestError(
            f"Invalid '{name}': expected a JSON object, but it holds a value JSON cannot encode.",
            param=name,
            code="invalid_value",
        ) from exc
    return value
