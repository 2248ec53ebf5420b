"""Rate limits shared by every gateway instance on one Redis, or counted per process.

``async with open_limits(redis_url) as limits:`` then ``KeyManager(..., limiter=limits.keys)``
and ``limits.share_deployments(router)``.

Theory of operation:

- **Two kinds of limits.** A virtual key's requests per minute, tokens per minute and parallel
  requests (:class:`KeyLimiter`, asked once per request, may wait on the network), and each
  deployment's rpm/tpm, which the router reads synchronously on every pick and so must never
  wait (:class:`~sluicegate.actors._health.Health`).
- **Key limits on Redis: one round trip.** :class:`RedisKeyLimiter` admits with one
  ``EVALSHA`` that checks the three limits and counts the request atomically, on the Redis
  server's clock (``TIME``), so instances with skewed clocks agree. The windows are sliding,
  as the per-process limiter's are, so a key is refused the same way and with the same
  ``Retry-After`` whichever limiter counts it. Not GCRA: it smooths a rate and lets nearly
  twice the limit through in some 60-second span (a full burst, then one request per 60/N s);
  not a two-bucket sliding counter: it estimates, and may admit more than N in a minute.
  Requests per minute are a sorted-set log of admission times (exact; at most rpm members per
  key); tokens per minute are per-second buckets in a hash (at most 60 fields; a token counts
  from the start of its second, so it leaves the window up to a second early); parallel
  requests are a sorted set of hold ids scored by their expiry (``hold_lifetime``, an hour by
  default), so a crashed instance's holds end on their own. Every key written gets a
  ``PEXPIRE`` past the moment its contents stop mattering: memory is bounded by live windows.
- **Release and tokens stay sync.** They queue (bounded, :data:`QUEUE_MAX`) and a service task
  writes each batch in one script call; a full queue drops (counted, undone by expiry). A key's
  own queued work rides along with its next admission, so an instance sees its own releases.
- **Deployment windows by periodic sync.** Every ``sync_interval`` (0.2 s) one script call adds
  this instance's new requests and tokens per deployment to per-second buckets and reads back
  the cluster's last minute; a Health then counts against that plus what it added since. The
  view lags the cluster by at most two sync intervals and two round trips (``_deployments.py``).
- **Fail open.** A Redis error or a call slower than ``timeout`` (0.25 s) never fails a
  request: the key limits fall back to a :class:`LocalKeyLimiter` (per-instance counts, from
  an empty window), with one warning line; a service task pings Redis with a bounded backoff
  and switches back when it answers, with one info line. Redis's windows are then authoritative
  again: what was admitted locally meanwhile is not in them, so the limits converge within a
  minute. ``Limits.statistics()`` says whether Redis is up and counts the fallback decisions.
- **Deployment and key identity** across instances: a key by its ``key_id``, a deployment by
  its configured ``id``, under a shared ``prefix``. One Redis (or a primary with replicas), not
  Redis Cluster: a script touches keys of several slots.

Without a URL nothing of Redis is imported; with one, the ``coredis`` package
(``pip install 'sluicegate[redis]'``) is, by ``_link.py`` only.
"""

from __future__ import annotations

from ._interface import Backend as Backend
from ._interface import DeploymentSource as DeploymentSource
from ._interface import KeyHold as KeyHold
from ._interface import KeyLimiter as KeyLimiter
from ._interface import KeyLimiterStatistics as KeyLimiterStatistics
from ._interface import Limit as Limit
from ._interface import LimitsStatistics as LimitsStatistics
from ._interface import Refused as Refused
from ._interface import SharedWindows as SharedWindows
from ._local import LocalKeyLimiter as LocalKeyLimiter
from ._open import Limits as Limits
from ._open import open_limits as open_limits
from ._redis import QUEUE_MAX as QUEUE_MAX
from ._redis import RedisKeyLimiter as RedisKeyLimiter

__all__ = [
    "Backend",
    "DeploymentSource",
    "KeyHold",
    "KeyLimiter",
    "KeyLimiterStatistics",
    "Limit",
    "Limits",
    "LimitsStatistics",
    "LocalKeyLimiter",
    "QUEUE_MAX",
    "RedisKeyLimiter",
    "Refused",
    "SharedWindows",
    "open_limits",
]
