"""Virtual API keys: authentication, admission limits, and key administration."""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing

from sluicegate.config import Secret
from sluicegate.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SluicegateError,
)
from sluicegate.limits import KeyLimiter, LocalKeyLimiter, open_limits
from sluicegate.server._keys import (
    ADMIN,
    ADMIN_OWNER,
    SECRET_PREFIX,
    Admission,
    Caller,
    KeyManager,
    hash_key,
)
from sluicegate.store import KeyRow, SQLiteStore, open_sqlite_store
from tests.servers import RedisServer

MASTER = "sk-master-Tq8Zr4Lm2Wd6Hj"
#: Unix seconds of the fake wall clock.
NOW = 1_750_000_000.0
#: A secret that was never minted (for "wrong key" checks).
STRANGER = SECRET_PREFIX + "Qx7Vb2Nc9Mz4Kw1Ly8Rt5Pj3Hg6Fd0"
#: Unix seconds the Redis limiter's scripts read when trio's clock reads 0 (a whole second, so
#: token buckets start where the per-process limiter's window does).
REDIS_EPOCH = 1_750_000_000

#: The key-limit tests run against both limiters: counted in the process, and shared on Redis
#: (the same refusals, messages and Retry-After; the scripts read trio's clock, so
#: ``autojump_clock`` drives both windows).
both_limiters = pytest.mark.parametrize("keys", ["local", "redis"], indirect=True)


@attrs.define
class WallClock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@attrs.define
class FakeSpend:
    """The spend of each key (USD), as the gateway's spend totals would report it."""

    by_owner: dict[str, float] = attrs.Factory(dict)
    calls: int = 0

    async def __call__(self, owner: str) -> float:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        return self.by_owner.get(owner, 0.0)


@pytest.fixture
async def store() -> AsyncIterator[SQLiteStore]:
    # In memory: inline on the trio thread, so autojump_clock stays deterministic.
    async with open_sqlite_store(":memory:") as store:
        yield store


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def spend() -> FakeSpend:
    return FakeSpend()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str | None:
    """The Redis of a test run with ``keys="redis"`` (``both_limiters``); None otherwise, and
    then no Redis is needed."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("keys") != "redis":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
async def keys(
    store: SQLiteStore, wall: WallClock, spend: FakeSpend, redis_url: str | None
) -> AsyncIterator[KeyManager]:
    """A manager counting key limits in the process, or on Redis (``both_limiters``)."""
    if redis_url is None:
        yield manager(store, wall=wall, spend=spend)
        return
    # No deadline on Redis calls: under autojump_clock a deadline would pass while Redis
    # answers. The scripts read trio's clock, so the windows follow the test's sleeps.
    async with open_limits(
        redis_url, timeout=math.inf, clock=lambda: REDIS_EPOCH + trio.current_time()
    ) as limits:
        yield manager(store, wall=wall, spend=spend, limiter=limits.keys)
        # Every decision was Redis's: the test did judge the shared limiter.
        stats = limits.statistics()
        assert (stats.up, stats.fallbacks, stats.queue_drops) == (True, 0, 0)


def manager(
    store: SQLiteStore,
    *,
    wall: WallClock | None = None,
    spend: FakeSpend | None = None,
    master: str | None = MASTER,
    allow_unauthenticated: bool = False,
    limiter: KeyLimiter | None = None,
) -> KeyManager:
    return KeyManager(
        store,
        None if master is None else Secret(master),
        allow_unauthenticated=allow_unauthenticated,
        wall_clock=wall or WallClock(),
        spend=spend or FakeSpend(),
        limiter=limiter or LocalKeyLimiter(),
    )


async def mint(keys: KeyManager, **fields: Any) -> tuple[str, Caller]:
    """A new key's secret and the caller it authenticates as."""
    created = await keys.generate(ADMIN, fields)
    secret: str = created["key"]
    return secret, await keys.authenticate(f"Bearer {secret}", None)


def assert_no_part_of(secret: str, error: SluicegateError) -> None:
    """Regression guard: no 6 characters in a row of the secret's random part, nor its hash,
    show anywhere an error is rendered (OpenAI echoes part of a wrong key; we never do)."""
    rendered = " ".join(
        [str(error), repr(error), orjson.dumps(error.to_dict()).decode(), repr(error.headers)]
    )
    random_part = secret.removeprefix(SECRET_PREFIX)
    for i in range(len(random_part) - 5):
        assert random_part[i : i + 6] not in rendered, (random_part[i : i + 6], rendered)
    assert hash_key(secret) not in rendered


async def refused(keys: KeyManager, secret: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        await keys.authenticate(f"Bearer {secret}", None)
    assert caught.value.status_code == 401
    assert caught.value.type == "authentication_error"
    assert_no_part_of(secret, caught.value)
    return caught.value


# --- authentication


def test_hash_key_is_the_hex_sha256_of_the_secret() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key(MASTER) == hashlib.sha256(MASTER.encode()).hexdigest()


async def test_the_master_key_is_the_admin_by_bearer_or_api_key_header(
    keys: KeyManager,
) -> None:
    for authorization, api_key in ((f"Bearer {MASTER}", None), (None, MASTER)):
        caller = await keys.authenticate(authorization, api_key)
        assert caller == Caller(owner=ADMIN_OWNER, admin=True, key=None)
        assert caller.owner == "admin"


async def test_a_virtual_key_works_by_bearer_and_by_api_key_header(keys: KeyManager) -> None:
    created = await keys.generate(ADMIN, {"key_alias": "ci", "rpm_limit": 5})
    secret = created["key"]
    for authorization, api_key in (
        (f"Bearer {secret}", None),
        (f"bearer   {secret} ", None),  # the scheme is case-insensitive
        (None, secret),  # the Azure SDKs' header
        (f"Bearer {secret}", "wrong"),  # the bearer token wins
        ("Basic dXNlcjpwYXNz", secret),  # another scheme is no key
    ):
        caller = await keys.authenticate(authorization, api_key)
        assert caller.owner == created["key_id"]
        assert caller.admin is False
        assert caller.key is not None
        assert (caller.key.key_id, caller.key.alias, caller.key.rpm) == (
            created["key_id"],
            "ci",
            5,
        )


@pytest.mark.parametrize(
    ("authorization", "api_key"),
    [(None, None), ("Bearer ", None), ("Bearer", "  "), ("Basic dXNlcjpwYXNz", None)],
)
async def test_no_key_is_401(
    keys: KeyManager, authorization: str | None, api_key: str | None
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        await keys.authenticate(authorization, api_key)
    assert caught.value.status_code == 401
    assert caught.value.code == "missing_api_key"
    assert caught.value.message.startswith("You didn't provide an API key.")


async def test_a_wrong_key_is_401_without_any_part_of_it(keys: KeyManager) -> None:
    secret, _ = await mint(keys)
    near_miss = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (STRANGER, near_miss, MASTER + "x", MASTER[:-1]):
        error = await refused(keys, wrong)
        assert (error.message, error.code) == ("Incorrect API key provided.", "invalid_api_key")
    with pytest.raises(AuthenticationError) as caught:
        await keys.authenticate(None, STRANGER)
    assert_no_part_of(STRANGER, caught.value)


async def test_an_expired_key_is_401(keys: KeyManager, wall: WallClock) -> None:
    secret, caller = await mint(keys, duration="1h")
    assert caller.key is not None
    assert caller.key.expires_at == NOW + 3600
    wall.now = NOW + 3599.5
    assert (await keys.authenticate(f"Bearer {secret}", None)).owner == caller.owner
    wall.now = NOW + 3600
    error = await refused(keys, secret)
    assert (error.message, error.code) == ("The API key has expired.", "expired_api_key")


async def test_a_deleted_key_is_refused_at_once_by_the_manager_that_deleted_it(
    keys: KeyManager, autojump_clock: trio.testing.MockClock
) -> None:
    secret, caller = await mint(keys)
    start = trio.current_time()
    assert keys.statistics().cached_keys == 1
    await keys.delete(ADMIN, {"key_ids": [caller.owner]})
    error = await refused(keys, secret)
    assert error.message == "Incorrect API key provided."
    assert trio.current_time() == start


async def test_a_key_deleted_through_another_manager_is_refused_after_the_cache_ttl(
    store: SQLiteStore, keys: KeyManager, autojump_clock: trio.testing.MockClock
) -> None:
    other = manager(store)
    secret, caller = await mint(keys)  # cached by `keys` now
    start = trio.current_time()
    await other.delete(ADMIN, {"keys": [secret]})
    await refused(other, secret)
    # `keys` trusts its cached row for 1 s (a deletion elsewhere takes that long to show)...
    await trio.sleep(0.9)
    assert (await keys.authenticate(f"Bearer {secret}", None)).owner == caller.owner
    # ...and reads the store again once it is up.
    await trio.sleep(0.1)
    assert trio.current_time() == start + 1.0
    await refused(keys, secret)


async def test_unknown_keys_are_not_cached_so_a_new_key_works_at_once(
    store: SQLiteStore, keys: KeyManager, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    await refused(keys, STRANGER)
    assert keys.statistics().cached_keys == 0
    # Minted meanwhile by another worker process sharing the store.
    await store.put_key(
        KeyRow(key_id="key-0123456789abcdef", key_hash=hash_key(STRANGER), created_at=NOW)
    )
    caller = await keys.authenticate(None, STRANGER)
    assert caller.owner == "key-0123456789abcdef"
    assert trio.current_time() == start


async def test_allow_unauthenticated_without_a_master_key_makes_everyone_the_admin(
    store: SQLiteStore,
) -> None:
    open_door = manager(store, master=None, allow_unauthenticated=True)
    for authorization, api_key in ((None, None), (f"Bearer {STRANGER}", None), (None, "x")):
        assert await open_door.authenticate(authorization, api_key) == ADMIN
    # With a master key it changes nothing: no key is still no key.
    guarded = manager(store, allow_unauthenticated=True)
    with pytest.raises(AuthenticationError):
        await guarded.authenticate(None, None)
    assert await guarded.authenticate(None, MASTER) == ADMIN


async def test_without_a_master_key_only_virtual_keys_authenticate(store: SQLiteStore) -> None:
    no_admin = manager(store, master=None)
    await store.put_key(
        KeyRow(key_id="key-0123456789abcdef", key_hash=hash_key(STRANGER), created_at=NOW)
    )
    assert (await no_admin.authenticate(f"Bearer {STRANGER}", None)).admin is False
    with pytest.raises(AuthenticationError):
        await no_admin.authenticate(None, None)
    await refused(no_admin, MASTER)


# --- admission


@both_limiters
async def test_the_admin_is_never_limited(keys: KeyManager) -> None:
    admissions = [await keys.admit(ADMIN, "any-model") for _ in range(100)]
    for admission in admissions:
        admission.record_tokens(10**9)
    assert keys.statistics().in_flight == 0
    for admission in admissions:
        admission.release()


@both_limiters
async def test_a_model_the_key_may_not_use_is_403(keys: KeyManager) -> None:
    secret, caller = await mint(keys, key_alias="ci-bot", models=["gpt-a", "gpt-b"])
    (await keys.admit(caller, "gpt-a")).release()
    with pytest.raises(PermissionDeniedError) as caught:
        await keys.admit(caller, "gpt-c")
    error = caught.value
    assert (error.status_code, error.param, error.type) == (403, "model", "permission_error")
    assert "'gpt-c'" in error.message
    assert "'ci-bot'" in error.message
    assert_no_part_of(secret, error)
    # Without an alias, the key is named by its public ID.
    _, anonymous = await mint(keys, models=["gpt-a"])
    with pytest.raises(PermissionDeniedError, match=f"'{anonymous.owner}' may not use"):
        await keys.admit(anonymous, "gpt-b")
    # No models (or an empty list, as in LiteLLM): every model.
    _, everything = await mint(keys, models=[])
    (await keys.admit(everything, "gpt-z")).release()


def retry_after(error: RateLimitError) -> str:
    assert (error.status_code, error.code) == (429, "rate_limit_exceeded")
    return error.headers["Retry-After"]


@both_limiters
async def test_rpm_is_a_sliding_minute_of_admitted_requests(
    keys: KeyManager, autojump_clock: trio.testing.MockClock
) -> None:
    _, caller = await mint(keys, rpm_limit=2)
    start = trio.current_time()
    (await keys.admit(caller, "gpt-a")).release()
    await trio.sleep(10)
    (await keys.admit(caller, "gpt-a")).release()
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "50"  # the first request leaves the window at +60
    assert "2 requests per minute" in caught.value.message
    await trio.sleep(47.5)
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "3"  # 2.5 s, rounded up
    await trio.sleep(2.25)
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "1"  # 0.25 s: at least a second
    await trio.sleep(0.25)
    assert trio.current_time() == start + 60
    # The refused requests took no place in the window: the first one left, one fits.
    (await keys.admit(caller, "gpt-a")).release()
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "10"  # the second one leaves at +70


@both_limiters
async def test_tpm_counts_recorded_tokens_over_a_sliding_minute(
    keys: KeyManager, autojump_clock: trio.testing.MockClock
) -> None:
    _, caller = await mint(keys, tpm_limit=100)
    first = await keys.admit(caller, "gpt-a")
    first.record_tokens(60)
    first.release()
    await trio.sleep(20)
    second = await keys.admit(caller, "gpt-a")  # 60 < 100
    second.release()
    second.record_tokens(40)  # after release, still counted: 100 tokens in the minute
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "40"  # the first 60 leave at +60, 40 < 100 then
    assert "100 tokens per minute" in caught.value.message
    await trio.sleep(40)
    third = await keys.admit(caller, "gpt-a")
    third.record_tokens(0)
    with pytest.raises(ValueError, match="negative"):
        third.record_tokens(-1)
    third.record_tokens(100)  # 140 in the window; below the limit only when both leave
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "60"


@both_limiters
async def test_parallel_requests_are_limited_until_released(
    keys: KeyManager, autojump_clock: trio.testing.MockClock
) -> None:
    _, caller = await mint(keys, max_parallel_requests=2)
    first = await keys.admit(caller, "gpt-a")
    await keys.admit(caller, "gpt-a")
    assert keys.statistics().in_flight == 2
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert retry_after(caught.value) == "1"
    assert "2 parallel requests" in caught.value.message
    first.release()
    first.release()  # a second release frees nothing more
    assert keys.statistics().in_flight == 1
    await keys.admit(caller, "gpt-a")
    with pytest.raises(RateLimitError):
        await keys.admit(caller, "gpt-a")


async def test_a_key_over_its_budget_is_429_and_spend_is_read_once_a_second(
    keys: KeyManager, spend: FakeSpend, autojump_clock: trio.testing.MockClock
) -> None:
    secret, caller = await mint(keys, key_alias="ci", max_budget=1.0)
    spend.by_owner[caller.owner] = 0.5
    (await keys.admit(caller, "gpt-a")).release()
    assert spend.calls == 1
    spend.by_owner[caller.owner] = 1.0
    await trio.sleep(0.5)
    (await keys.admit(caller, "gpt-a")).release()  # the spend read 0.5 s ago still holds
    assert spend.calls == 1
    await trio.sleep(0.5)
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    error = caught.value
    assert (error.status_code, error.code) == (429, "budget_exceeded")
    # Waiting does not help: the SDKs must not retry, and no Retry-After is promised.
    assert error.headers == {"x-should-retry": "false"}
    assert "'ci'" in error.message
    assert_no_part_of(secret, error)
    assert spend.calls == 2


@both_limiters
async def test_admission_checks_model_then_budget_rpm_tpm_and_parallel(
    keys: KeyManager, spend: FakeSpend, autojump_clock: trio.testing.MockClock
) -> None:
    _, caller = await mint(
        keys,
        models=["gpt-a"],
        max_budget=1.0,
        rpm_limit=1,
        tpm_limit=1,
        max_parallel_requests=1,
    )
    held = await keys.admit(caller, "gpt-a")  # uses up rpm and parallel
    spend.by_owner[caller.owner] = 5.0
    await trio.sleep(1)
    # Every limit is hit; the model goes first.
    with pytest.raises(PermissionDeniedError):
        await keys.admit(caller, "gpt-b")
    with pytest.raises(RateLimitError) as caught:
        await keys.admit(caller, "gpt-a")
    assert caught.value.code == "budget_exceeded"
    spend.by_owner[caller.owner] = 0.0
    await trio.sleep(1)
    with pytest.raises(RateLimitError, match="requests per minute"):
        await keys.admit(caller, "gpt-a")
    await trio.sleep(58)  # the request left the window; the tokens come now
    held.record_tokens(5)
    with pytest.raises(RateLimitError, match="tokens per minute"):
        await keys.admit(caller, "gpt-a")
    await trio.sleep(60)
    with pytest.raises(RateLimitError, match="parallel requests"):
        await keys.admit(caller, "gpt-a")
    held.release()
    (await keys.admit(caller, "gpt-a")).release()


@both_limiters
async def test_a_deleted_keys_admissions_release_cleanly(keys: KeyManager) -> None:
    _, caller = await mint(keys, max_parallel_requests=1)
    admission = await keys.admit(caller, "gpt-a")
    assert isinstance(admission, Admission)
    await keys.delete(ADMIN, {"key_ids": [caller.owner]})
    admission.record_tokens(3)
    admission.release()
    assert keys.statistics().in_flight == 0


# --- administration


async def test_generate_returns_litellm_shape_and_stores_only_the_hash(
    keys: KeyManager, store: SQLiteStore
) -> None:
    created = await keys.generate(
        ADMIN,
        {
            "key_alias": "ci-bot",
            "models": ["gpt-a", "gpt-b"],
            "rpm_limit": 60,
            "tpm_limit": 10_000,
            "max_parallel_requests": 4,
            "max_budget": 12.5,
            "duration": "30d",
            "metadata": {"team": "blue"},
        },
    )
    secret = created.pop("key")
    assert re.fullmatch(r"sk-sg-[A-Za-z0-9_-]{43}", secret)
    assert re.fullmatch(r"key-[0-9a-f]{16}", created["key_id"])
    assert created == {
        "key_id": created["key_id"],
        "key_alias": "ci-bot",
        "models": ["gpt-a", "gpt-b"],
        "rpm_limit": 60,
        "tpm_limit": 10_000,
        "max_parallel_requests": 4,
        "max_budget": 12.5,
        "expires": datetime.fromtimestamp(NOW + 30 * 86400, UTC).isoformat(),
        "created_at": datetime.fromtimestamp(NOW, UTC).isoformat(),
        "metadata": {"team": "blue"},
    }
    assert created["expires"] == "2025-07-15T15:06:40+00:00"
    row = await store.get_key(created["key_id"])
    assert row == KeyRow(
        key_id=created["key_id"],
        key_hash=hashlib.sha256(secret.encode()).hexdigest(),
        alias="ci-bot",
        models=("gpt-a", "gpt-b"),
        rpm=60,
        tpm=10_000,
        max_parallel_requests=4,
        max_budget=12.5,
        expires_at=NOW + 30 * 86400,
        created_at=NOW,
        metadata={"team": "blue"},
    )


def _stored(path: Path) -> tuple[list[tuple[Any, ...]], bytes]:
    """The rows of the keys table, and every byte of the database's files."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT * FROM keys").fetchall()
    finally:
        db.close()
    data = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    return rows, data


async def test_the_secret_is_nowhere_in_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    async with open_sqlite_store(path, threads=False) as store:
        created = await manager(store).generate(ADMIN, {"key_alias": "ci"})
    secret = created["key"]
    rows, data = _stored(path)
    assert len(rows) == 1
    assert hash_key(secret) in rows[0]
    assert secret.removeprefix(SECRET_PREFIX).encode() not in data
    assert hash_key(secret).encode() in data  # the scan does see the keys table


async def test_generate_defaults_to_an_unlimited_key_that_never_expires(
    keys: KeyManager,
) -> None:
    first = await keys.generate(ADMIN, {})
    second = await keys.generate(ADMIN, {"models": None, "metadata": None})
    assert first["key"] != second["key"]
    assert first["key_id"] != second["key_id"]
    for created in (first, second):
        assert {k: v for k, v in created.items() if k not in ("key", "key_id")} == {
            "key_alias": None,
            "models": [],
            "rpm_limit": None,
            "tpm_limit": None,
            "max_parallel_requests": None,
            "max_budget": None,
            "expires": None,
            "created_at": datetime.fromtimestamp(NOW, UTC).isoformat(),
            "metadata": {},
        }


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [(90, 90), (1.5, 1.5), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("45", 45)],
)
async def test_generate_durations(keys: KeyManager, duration: object, seconds: float) -> None:
    _, caller = await mint(keys, duration=duration)
    assert caller.key is not None
    assert caller.key.expires_at == NOW + seconds


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"team_id": "t"}, "team_id", "unknown_parameter"),
        ({"key": "sk-mine"}, "key", "unknown_parameter"),
        ({"key_alias": 5}, "key_alias", "invalid_type"),
        ({"models": "gpt-a"}, "models", "invalid_type"),
        ({"models": ["gpt-a", 3]}, "models[1]", "invalid_type"),
        ({"rpm_limit": "5"}, "rpm_limit", "invalid_type"),
        ({"rpm_limit": True}, "rpm_limit", "invalid_type"),
        ({"tpm_limit": 0}, "tpm_limit", "invalid_value"),
        ({"max_parallel_requests": 1.5}, "max_parallel_requests", "invalid_type"),
        ({"max_budget": -1}, "max_budget", "invalid_value"),
        ({"max_budget": "10"}, "max_budget", "invalid_type"),
        ({"duration": "soon"}, "duration", "invalid_value"),
        ({"duration": "-5m"}, "duration", "invalid_value"),
        ({"duration": 0}, "duration", "invalid_value"),
        ({"duration": [1]}, "duration", "invalid_type"),
        ({"metadata": ["a"]}, "metadata", "invalid_type"),
        ({"metadata": {"x": object()}}, "metadata", "invalid_value"),
    ],
)
async def test_generate_validation_errors_name_the_field(
    keys: KeyManager, body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await keys.generate(ADMIN, body)
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, param, code)
    assert f"'{param}'" in error.message


#: Every numeric field of /key/generate past its range, in JSON or as a library caller can
#: pass it: overflowing, infinite, NaN, negative, a bool.
_OUT_OF_RANGE = [
    *[("duration", v) for v in ("999999999999d", 1e300, 1e20, "inf", "nan", -1, 10**400)],
    *[("duration", v) for v in (float("inf"), float("nan"), True, "365001d")],
    *[
        (name, v)
        for name in ("rpm_limit", "tpm_limit", "max_parallel_requests")
        for v in (2**64 - 1, 2**53, 10**400, -1, True, 1e300, float("nan"))
    ],
    *[("max_budget", v) for v in (1e300, float("inf"), float("nan"), -1, True, 2**53 + 1)],
    ("max_budget", 10**400),
]


@pytest.mark.parametrize(
    ("param", "value"),
    _OUT_OF_RANGE,
    ids=[
        f"{p}={v!r}" if len(repr(v)) < 30 else f"{p}=<{len(repr(v))} digits>"
        for p, v in _OUT_OF_RANGE
    ],
)
async def test_generate_refuses_absurd_numbers_with_a_400_and_stores_nothing(
    tmp_path: Path, param: str, value: object
) -> None:
    """Regression: ``duration: "999999999999d"`` (or 1e300) stored the key and then failed to
    describe it (a 500 after an orphan key whose secret nobody saw); an integer past 64 bits
    broke the store's writer."""
    path = tmp_path / "keys.db"
    async with open_sqlite_store(path, threads=False) as store:
        with pytest.raises(InvalidRequestError) as caught:
            await manager(store).generate(ADMIN, {param: value})
    error = caught.value
    assert (error.status_code, error.param) == (400, param)
    assert f"'{param}'" in error.message
    assert len(error.message) < 300  # a huge number is described, not printed
    rows, _ = _stored(path)
    assert rows == []


async def test_generate_takes_numbers_up_to_the_bounds(keys: KeyManager) -> None:
    top = 2**53 - 1
    created = await keys.generate(
        ADMIN,
        {
            "rpm_limit": top,
            "tpm_limit": top,
            "max_parallel_requests": top,
            "max_budget": top,
            "duration": "365000d",
        },
    )
    assert [created[k] for k in ("rpm_limit", "tpm_limit", "max_parallel_requests")] == [top] * 3
    assert created["max_budget"] == float(top)
    assert created["expires"] == datetime.fromtimestamp(NOW + 365000 * 86400, UTC).isoformat()
    assert (await keys.info(ADMIN, created["key_id"]))["expires"] == created["expires"]


@pytest.mark.parametrize(
    ("expires_at", "expires"),
    [
        (8.64e16, "9999-12-31T23:59:59.999999+00:00"),
        (1e300, "9999-12-31T23:59:59.999999+00:00"),
        (float("inf"), "9999-12-31T23:59:59.999999+00:00"),
        (-1e300, "0001-01-01T00:00:00+00:00"),
        (float("-inf"), "0001-01-01T00:00:00+00:00"),
        (float("nan"), None),  # SQLite keeps NaN as NULL
    ],
)
async def test_key_info_never_fails_on_a_stored_row_with_absurd_times(
    keys: KeyManager, store: SQLiteStore, expires_at: float, expires: str | None
) -> None:
    """Regression: /key/info on a row whose expiry is past what a date holds (as
    ``duration: "999999999999d"`` used to store) was a 500."""
    row = KeyRow(
        key_id="key-00000000000000ab",
        key_hash=hash_key(SECRET_PREFIX + "absurd"),
        max_budget=float("inf"),
        expires_at=expires_at,
        created_at=1e300,
    )
    await store.put_key(row)
    info = await keys.info(ADMIN, row.key_id)
    assert info["expires"] == expires
    assert info["created_at"] == "9999-12-31T23:59:59.999999+00:00"
    orjson.dumps(info)  # what the proxy sends


async def test_only_the_admin_may_generate_or_delete_keys(keys: KeyManager) -> None:
    secret, caller = await mint(keys)
    with pytest.raises(PermissionDeniedError) as caught:
        await keys.generate(caller, {})
    assert caught.value.status_code == 403
    with pytest.raises(PermissionDeniedError):
        await keys.delete(caller, {"keys": [secret]})
    # The key is still there: the refused delete did nothing.
    assert (await keys.authenticate(None, secret)).owner == caller.owner


async def test_a_key_reads_its_own_info_and_the_admin_any(
    keys: KeyManager, spend: FakeSpend
) -> None:
    secret_a, a = await mint(keys, key_alias="a", rpm_limit=7, metadata={"team": "blue"})
    secret_b, b = await mint(keys, key_alias="b")
    spend.by_owner[a.owner] = 0.25
    expected = {
        "key_id": a.owner,
        "key_alias": "a",
        "models": [],
        "rpm_limit": 7,
        "tpm_limit": None,
        "max_parallel_requests": None,
        "max_budget": None,
        "expires": None,
        "created_at": datetime.fromtimestamp(NOW, UTC).isoformat(),
        "metadata": {"team": "blue"},
        "spend": 0.25,
    }
    for key in (None, secret_a, a.owner):
        assert await keys.info(a, key) == expected
    for key in (secret_a, a.owner):
        assert await keys.info(ADMIN, key) == expected
    # Another key's info is a 404, whether named by secret or by ID.
    for key in (secret_b, b.owner):
        with pytest.raises(NotFoundError) as caught:
            await keys.info(a, key)
        assert caught.value.status_code == 404
        assert_no_part_of(secret_b, caught.value)
    assert (await keys.info(ADMIN, secret_b))["key_alias"] == "b"
    with pytest.raises(InvalidRequestError) as missing:
        await keys.info(ADMIN, None)
    assert missing.value.param == "key"
    with pytest.raises(NotFoundError) as unknown:
        await keys.info(ADMIN, STRANGER)
    assert_no_part_of(STRANGER, unknown.value)
    await keys.delete(ADMIN, {"keys": [secret_b]})
    with pytest.raises(NotFoundError, match=b.owner):
        await keys.info(ADMIN, b.owner)


async def test_delete_by_secret_and_by_id(keys: KeyManager) -> None:
    secret_a, a = await mint(keys)
    secret_b, b = await mint(keys)
    secret_c, c = await mint(keys)
    result = await keys.delete(ADMIN, {"keys": [secret_a], "key_ids": [b.owner, a.owner]})
    assert result == {"deleted_keys": [a.owner, b.owner]}
    await refused(keys, secret_a)
    await refused(keys, secret_b)
    assert (await keys.authenticate(None, secret_c)).owner == c.owner
    # Unknown or already deleted: a 404 naming the position, never the secret.
    with pytest.raises(NotFoundError) as caught:
        await keys.delete(ADMIN, {"keys": [secret_c, secret_a]})
    assert (caught.value.status_code, caught.value.param) == (404, "keys[1]")
    assert_no_part_of(secret_a, caught.value)
    with pytest.raises(NotFoundError) as caught:
        await keys.delete(ADMIN, {"key_ids": [c.owner, "key-ffffffffffffffff"]})
    assert caught.value.param == "key_ids[1]"
    assert "key-ffffffffffffffff" in caught.value.message
    # Every key is looked up before any is deleted: c survived both.
    assert (await keys.authenticate(None, secret_c)).owner == c.owner


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "keys", "missing_required_parameter"),
        ({"keys": [], "key_ids": []}, "keys", "missing_required_parameter"),
        ({"keys": "sk-sg-x"}, "keys", "invalid_type"),
        ({"key_ids": [1]}, "key_ids[0]", "invalid_type"),
        ({"key_aliases": ["a"]}, "key_aliases", "unknown_parameter"),
    ],
)
async def test_delete_validation_errors_name_the_field(
    keys: KeyManager, body: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await keys.delete(ADMIN, body)
    assert (caught.value.status_code, caught.value.param, caught.value.code) == (400, param, code)
