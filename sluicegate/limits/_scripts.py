"""The Lua scripts the Redis limiters run: each is one atomic step on the server.

Times are microseconds of the Redis server's clock (``TIME``), so instances with skewed clocks
agree on every window; a caller may pass its own clock instead (``ARGV[1]``, tests). Scripts
return integers only (Lua numbers become integer replies; microseconds since 1970 fit in a
double exactly). Keys the scripts write get a ``PEXPIRE`` past the last moment their contents
matter, so Redis memory stays bounded by the live windows and holds.

The key layout, under the configured prefix::

    key:<key_id>:requests         zset  request id -> admitted at (µs)      rpm's sliding log
    key:<key_id>:tokens           hash  second -> tokens recorded in it    tpm's buckets
    key:<key_id>:holds            zset  hold id -> expires at (µs)         parallel requests
    deployment:<id>:requests      hash  second -> requests started in it   the router's windows
    deployment:<id>:tokens        hash  second -> tokens used in it
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMIT", "SETTLE", "SYNC", "WINDOW_US"]

#: The sliding window (60 s) in microseconds.
WINDOW_US: Final = 60_000_000

# Shared by the scripts below. Fields are whole seconds written with %d: Lua's own
# number-to-string conversion would round a large number to 14 digits.
_CLOCK: Final = """
local WINDOW = 60000000
local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# Settle what an instance queued for one key: tokens recorded `age` µs ago, holds released.
_SETTLE: Final = """
local function settle(tokens_key, holds_key, now, i)
  local entries = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, entries do
    local second = math.floor((now - tonumber(ARGV[i])) / 1000000)
    -- A bucket counts until its second is a window old: older tokens matter no more.
    if second * 1000000 + WINDOW > now then
      redis.call('HINCRBY', tokens_key, string.format('%d', second), ARGV[i + 1])
      redis.call('PEXPIRE', tokens_key, 61000)
    end
    i = i + 2
  end
  local released = tonumber(ARGV[i])
  i = i + 1
  if released > 0 then
    redis.call('ZREM', holds_key, unpack(ARGV, i, i + released - 1))
  end
  return i + released
end
"""

#: Admit one request of a key, or say which limit refuses it and for how long.
#: KEYS: requests, tokens, holds. ARGV: now (or ''), rpm, tpm, parallel (0: no limit), the
#: request's id (its hold's too), hold lifetime (µs), then the key's queued settlements:
#: a count of (age µs, tokens) pairs, the pairs, a count of released hold ids, the ids.
#: Returns {0, 0} admitted (and counted); {1 rpm | 2 tpm | 3 parallel, retry after µs}.
ADMIT: Final = (
    _CLOCK
    + _SETTLE
    + """
local now = clock(ARGV[1])
settle(KEYS[2], KEYS[3], now, 7)
local rpm, tpm, parallel = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
  local count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then
    -- The window drops below the limit when this request leaves it.
    local leaving = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
    return {1, tonumber(leaving[2]) + WINDOW - now}
  end
end
if tpm > 0 then
  local fields = redis.call('HGETALL', KEYS[2])
  local live, stale, total = {}, {}, 0
  for j = 1, #fields, 2 do
    local second, tokens = tonumber(fields[j]), tonumber(fields[j + 1])
    if second * 1000000 + WINDOW <= now then
      stale[#stale + 1] = fields[j]
    else
      live[#live + 1] = {second, tokens}
      total = total + tokens
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[2], unpack(stale)) end
  if total >= tpm then
    table.sort(live, function(a, b) return a[1] < b[1] end)
    for _, bucket in ipairs(live) do
      total = total - bucket[2]
      if total < tpm then return {2, bucket[1] * 1000000 + WINDOW - now} end
    end
  end
end
if parallel > 0 then
  -- A crashed instance never releases its holds: they end at their expiry.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= parallel then return {3, 1000000} end
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if parallel > 0 then
  local lifetime = tonumber(ARGV[6])
  redis.call('ZADD', KEYS[3], now + lifetime, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], math.ceil(lifetime / 1000) + 1000)
end
return {0, 0}
"""
)

#: Settle what an instance queued for several keys (the service task's flush).
#: KEYS: tokens and holds of each key, in pairs. ARGV: now (or ''), then each pair's
#: settlements as in ADMIT.
SETTLE: Final = (
    _CLOCK
    + _SETTLE
    + """
local now = clock(ARGV[1])
local i = 2
for k = 1, #KEYS, 2 do
  i = settle(KEYS[k], KEYS[k + 1], now, i)
end
return 0
"""
)

#: Add an instance's new counts to deployment windows and read the windows back.
#: KEYS: windows (hashes second -> amount). ARGV: now (or ''), then each key's new amount.
#: Returns {now µs, {age, amount, age, amount, ...} for each key}, ages in whole seconds
#: (0: the current second), the seconds of the last minute only.
SYNC: Final = (
    _CLOCK
    + """
local now = clock(ARGV[1])
local second = math.floor(now / 1000000)
local field = string.format('%d', second)
local out = {now}
for k = 1, #KEYS do
  local amount = tonumber(ARGV[k + 1])
  if amount > 0 then
    redis.call('HINCRBY', KEYS[k], field, amount)
    redis.call('PEXPIRE', KEYS[k], 61000)
  end
  local fields = redis.call('HGETALL', KEYS[k])
  local window, stale = {}, {}
  for j = 1, #fields, 2 do
    local age = second - tonumber(fields[j])
    if age >= 60 then
      stale[#stale + 1] = fields[j]
    elseif age >= 0 then
      window[#window + 1] = age
      window[#window + 1] = tonumber(fields[j + 1])
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[k], unpack(stale)) end
  out[k + 1] = window
end
return out
"""
)
