"""sluicegate's benchmark suite (docs/design.md §8): ``python -m benchmarks`` from the repo root.

What is measured
----------------
One run, one fake upstream (``python -m sluicegate.fake`` in its own process, pinned to its own
CPU), and each library target measured in a child process of its own (``_library.py``: one per
target and repeat), pinned to another CPU: the suite pins itself there and the child inherits
it. So the upstream and the target never compete for a core, ``time.process_time()`` in the
child is that target's client-side CPU alone, and the child's memory is that target's. Every
target is driven the same way: for each (mode, concurrency) a warm-up that is not measured,
then N requests issued by ``concurrency`` worker tasks in one trio nursery. For each case we
record:

- wall time and the child's CPU time (``time.process_time()``, all threads), hence requests/s
  and **CPU ms per request** — the number the targets are about;
- per-request latency (``trio.current_time()`` around each request): p50 and p99;
- for streaming, time to the first event and events/s;
- the upstream's own CPU share (from ``/proc``), to show the fake is not the bottleneck;
- the child's RSS after the case and its peak so far (``VmRSS``, ``VmHWM``): the interpreter,
  what the target imports (the floor's child never loads sluicegate) and what it holds.

Each case runs ``--repeats`` times: every repeat runs each target's cases in a fresh child, the
targets alternating which goes first, and each metric is reported as the median over repeats.

The pool is part of the measurement, so both pools get the same settings, including a short
keep-alive expiry (1 s): httpcore's pool scans every idle connection several times per request,
so its cost depends on how many idle connections it holds, and under steady load that number
only settles once the spare connections have expired. Each warm-up therefore lasts at least two
expiries (2 s; ``--smoke`` skips this), within a child concurrency ascends, and every repeat
starts from an empty pool in a fresh child: a case measures the pool its own load settles to,
not the one the previous case left behind.

Targets
-------
- **floor**: one raw ``httpx.AsyncClient`` on trio with the same pool limits as the gateway's
  (128/128). Non-streaming: POST the JSON body and ``orjson.loads`` the response body. Streaming:
  POST with ``"stream": true``, read ``aiter_lines()`` and ``orjson.loads`` every ``data:`` line.
- **sluicegate**: one gateway (``sluicegate.open_gateway``) per child;
  ``gw.responses(...)``, and ``gw.stream(...)`` consuming every event. It records every response
  in a SQLite file, as a deployed gateway does.
- **litellm** (when the ``compare`` extra is installed): ``litellm.aresponses`` on asyncio in a
  child process per case, pinned like the library's children, driven the same way
  (``_litellm.py``).
- **proxy / direct** (``_proxy.py``): ``sluicegate serve`` in its own process (its CPU and RSS
  read from ``/proc``), loaded by ``wrk`` pinned beside the upstream; the same ``wrk`` against
  the upstream directly gives what the proxy adds, p50 and p99. Time to first event, which wrk
  cannot see, comes from a sequential probe run as one of c concurrent streams (wrk holding the
  other c - 1) at every concurrency, against the proxy and the upstream directly.
- **memory** (``_memory.py``): the proxy's RSS idle, per open slow stream (500 held open), and
  under a consumer reading one event per 10 ms (library and proxy: RSS must stay flat).
- PNG charts (``_charts.py``, the ``bench`` extra): latency, requests/s, memory.

Why the floor is fair
---------------------
The gateway does at least this much work for every request: the same HTTP/1.1 exchange through
the same httpx client and connection pool against the same upstream, plus parsing the JSON the
caller needs. The floor does exactly that and nothing else — no routing, no typed events, no ID
encoding, no accounting — so "sluicegate CPU/request ÷ floor CPU/request" is the price of the
gateway's own work, not of HTTP or JSON. A client that skipped the JSON parsing would be
unfairly cheap (no real caller can use unparsed bytes); one that used a different HTTP stack
would measure that stack, not us.

Targets checked (full run; printed as PASS/MISS, never asserted — the exit status is 0 either
way, and ``--smoke`` only keeps the suite running in CI):

- sluicegate CPU/request ≤ 1.5x the floor's, at every concurrency, streaming and not;
- sluicegate CPU/request at the highest concurrency ≤ 1.1x that at the lowest (encode/httpx#3215
  is the regression this guards against: per-request cost growing with concurrency).
"""
