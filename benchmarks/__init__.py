"""sluicegate's benchmark suite (docs/design.md §8): ``python -m benchmarks`` from the repo root.

What is measured
----------------
One run, one fake upstream (``python -m sluicegate.fake --write-per-event`` in its own process,
pinned to its own CPU: it writes each SSE event as a chunk in a write of its own, as a real
provider does, and the output names that shape next to the figures), and each library target
measured in a child process of its own (``_library.py``: one per target and repeat), pinned to
another CPU: the suite pins itself there and the child inherits it. So the upstream and the
target never compete for a core, ``time.process_time()`` in the child is that target's
client-side CPU alone, and the child's memory is that target's. Every target is driven the same
way: for each (mode, concurrency) a warm-up that is not measured, then N requests issued by
``concurrency`` worker tasks in one trio nursery (asyncio tasks in one task group for the asyncio
targets, the aiohttp floor and the library's asyncio face: ``_asyncio_driver.py``). For each
case we record:

- wall time and the child's CPU time (``time.process_time()``, all threads), hence requests/s
  and **CPU ms per request** — the number the targets are about;
- per-request latency (``trio.current_time()`` around each request; ``time.perf_counter()`` on
  asyncio): p50 and p99;
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
- **aiohttp floor**: the same minimum work on ``aiohttp`` and asyncio, the same pool size, in a
  child of its own that never imports trio, httpx or sluicegate (``_aiohttp.py``); sluicegate's
  CPU per request is reported against it too (``x aiohttp``). aiohttp is in the ``dev`` extra;
  without it these rows are skipped with a note.
- **sluicegate**: one gateway (``sluicegate.open_gateway``) per child;
  ``gw.responses(...)``, and ``gw.stream(...)`` consuming every event. It records every response
  in a SQLite file, as a deployed gateway does. This is the library's trio face.
- **sluicegate-asyncio** (the library's asyncio face, ``_asyncio_face.py``): the very same
  gateway (``_targets.open_sluicegate``: the same SQLite file store, pool and model) and the same
  calls, opened and driven under asyncio (``asyncio.run``) in a child that never runs trio's own
  loop: the engine is a trio guest on asyncio's loop. Driven exactly as the aiohttp floor is
  (``_asyncio_driver.py``), at the same concurrencies. Its CPU per request ÷ the trio face's
  (in the checks, the summary and the results' ``cpu_ratio_vs_trio_face``) is what running the
  engine as asyncio's guest costs.
- **litellm** (when the ``compare`` extra is installed): ``litellm.aresponses`` on asyncio in a
  child process per case, pinned like the library's children, driven the same way
  (``_litellm.py``).
- **proxy / direct** (``_proxy.py``): ``sluicegate serve`` in its own process (its CPU and RSS
  read from ``/proc``), loaded by ``wrk`` pinned beside the upstream; the same ``wrk`` against
  the upstream directly gives what the proxy adds, p50 and p99. Time to first event, which wrk
  cannot see, comes from a sequential probe run as one of c concurrent streams (wrk holding the
  other c - 1) at every concurrency, against the proxy and the upstream directly.
  Each proxy's requests per CPU-second (its requests/s per core) and, with LiteLLM's proxy
  measured, the ratio between them.
- **memory** (``_memory.py``): the proxy's RSS idle; per open slow stream (500 held open) for the
  proxy, the library's trio face (``library``), its asyncio face (``library-asyncio``: the same
  streams held through ``gw.stream`` under asyncio) and the aiohttp floor (the last three each in
  a child of its own, a fresh heap); and under a consumer reading one event per 10 ms (library
  and proxy: RSS must stay flat).
- **CPU per streamed event** (``_events.py``): the library reading one response of ~1k, 4k and
  16k events at concurrency 1, CPU µs per event per length (flat: linear in the events).
- **recording alone** (``_store.py``): the store's CPU per response, per concurrency; and the
  same responses recorded on PostgreSQL (a private cluster with ``fsync`` on, started by
  ``_postgres.py`` and pinned to the other CPU, or ``SLUICEGATE_BENCH_DATABASE_URL``): its
  responses/s against SQLite's, the gateway's and the database server's CPU per response.
- **one instance against two** (``_instances.py``): ``sluicegate serve --workers 1`` and
  ``--workers 2`` on one PostgreSQL database, each worker an instance of its own, driven by one
  wrk: requests/s, their ratio, and CPU per request summed over the workers (nothing pinned:
  the instances, wrk, the upstream and PostgreSQL share the machine's cores).
- PNG charts (``_charts.py``, the ``bench`` extra): latency, requests/s, memory.
- A summary last (``_headline.py``): the upstream's shape, the library against both floors, its
  asyncio face against its trio face (CPU per request per case, memory per open stream),
  LiteLLM's library against both faces, memory per open stream, CPU per streamed event,
  recording per response, the proxies per CPU-second.

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
  is the regression this guards against: per-request cost growing with concurrency);
- the asyncio face's CPU/request ≤ 1.2x the trio face's, in every case (create and stream, each
  concurrency);
- with LiteLLM's library measured: LiteLLM's CPU/request ÷ the asyncio face's, reported beside
  LiteLLM's ÷ the trio face's, at least the latter ÷ 1.2 in every case (the asyncio face cheaper
  than LiteLLM by the trio face's margin, up to the same 20%; with all three measured this holds
  exactly when the previous target does, and reads the margin directly).
"""
