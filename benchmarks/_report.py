"""Medians over repeats, the target checks, and the table / Markdown / JSON outputs."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import orjson

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from pathlib import Path

    from ._runner import Case, CaseRun

__all__ = [
    "AIOHTTP_FLOOR",
    "FLOOR",
    "LITELLM",
    "MAX_CONCURRENCY_GROWTH",
    "MAX_FACE_RATIO",
    "MAX_RATIO",
    "SLUICEGATE",
    "SLUICEGATE_ASYNCIO",
    "SLUICEGATE_STATELESS",
    "Check",
    "Summary",
    "check_targets",
    "face_checks",
    "markdown_table",
    "summarize",
    "text_table",
    "write_results",
]

FLOOR: Final = "floor"
#: The second floor: the same minimum work on aiohttp and asyncio (``_aiohttp.py``).
AIOHTTP_FLOOR: Final = "aiohttp-floor"
SLUICEGATE: Final = "sluicegate"
#: The library's asyncio face: the same gateway as ``sluicegate`` (the trio face), opened and
#: driven under asyncio, the engine a trio guest on asyncio's loop (``_asyncio_face.py``).
SLUICEGATE_ASYNCIO: Final = "sluicegate-asyncio"
#: LiteLLM's library (``_litellm.py``), when the ``compare`` extra is installed.
LITELLM: Final = "litellm"
#: The library in the stateless mode (``store.backend: memory``): routing without durable
#: recording, for the users who want only that.
SLUICEGATE_STATELESS: Final = "stateless"
#: sluicegate's CPU per request may be at most this multiple of the floor's.
MAX_RATIO: Final = 1.5
#: ... and at the highest concurrency at most this multiple of its own at the lowest (noise).
MAX_CONCURRENCY_GROWTH: Final = 1.10
#: The asyncio face's CPU per request may be at most this multiple of the trio face's, in every
#: case; and its margin over LiteLLM's library at least the trio face's ÷ this.
MAX_FACE_RATIO: Final = 1.2


@attrs.frozen(kw_only=True)
class Summary:
    """One case, each metric the median over its repeats."""

    case: Case
    requests: int
    repeats: int
    requests_per_s: float
    cpu_ms_per_request: float
    #: The lowest and highest CPU/request over the repeats: how far to trust a ratio near 1.5.
    cpu_ms_min: float
    cpu_ms_max: float
    latency_p50_ms: float
    latency_p99_ms: float
    first_event_p50_ms: float | None
    events_per_request: float
    events_per_s: float
    upstream_busy: float | None
    #: sluicegate CPU/request ÷ floor CPU/request for the same mode and concurrency.
    cpu_ratio: float | None
    #: The target's process after the case, and its peak so far (None where not measured).
    rss_bytes: float | None = None
    peak_rss_bytes: float | None = None
    #: CPU/request ÷ the aiohttp floor's for the same mode and concurrency (None on the floors'
    #: own rows, or when the aiohttp floor was not measured).
    aiohttp_ratio: float | None = None
    #: The asyncio face's CPU/request ÷ the trio face's (``sluicegate``) for the same mode and
    #: concurrency; None on every other row, or when the trio face was not measured.
    trio_ratio: float | None = None


@attrs.frozen(kw_only=True)
class Check:
    name: str
    passed: bool
    detail: str

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


def _median(values: Iterable[float]) -> float:
    return statistics.median(values)


def _median_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[CaseRun]) -> list[Summary]:
    """Group the runs by case (keeping first-seen order) and take medians."""
    by_case: dict[Case, list[CaseRun]] = {}
    for run in runs:
        by_case.setdefault(run.case, []).append(run)
    floor_cpu = _floor_cpu(by_case, FLOOR)
    aiohttp_cpu = _floor_cpu(by_case, AIOHTTP_FLOOR)
    trio_cpu = _floor_cpu(by_case, SLUICEGATE)
    summaries = []
    for case, group in by_case.items():
        cpu = _median(r.cpu_ms_per_request for r in group)
        floor = floor_cpu.get((case.stream, case.concurrency))
        aiohttp = aiohttp_cpu.get((case.stream, case.concurrency))
        trio = trio_cpu.get((case.stream, case.concurrency))
        first = _median_or_none(r.first_event_p50_s for r in group)
        summaries.append(
            Summary(
                case=case,
                requests=group[0].requests,
                repeats=len(group),
                requests_per_s=_median(r.requests_per_s for r in group),
                cpu_ms_per_request=cpu,
                cpu_ms_min=min(r.cpu_ms_per_request for r in group),
                cpu_ms_max=max(r.cpu_ms_per_request for r in group),
                latency_p50_ms=_median(r.latency_p50_s for r in group) * 1e3,
                latency_p99_ms=_median(r.latency_p99_s for r in group) * 1e3,
                first_event_p50_ms=None if first is None else first * 1e3,
                events_per_request=_median(r.events / r.requests for r in group),
                events_per_s=_median(r.events_per_s for r in group),
                upstream_busy=_median_or_none(r.upstream_busy for r in group),
                cpu_ratio=cpu / floor if case.target != FLOOR and floor else None,
                rss_bytes=_median_or_none(r.rss_bytes for r in group),
                peak_rss_bytes=_median_or_none(r.peak_rss_bytes for r in group),
                aiohttp_ratio=(
                    cpu / aiohttp if case.target not in (FLOOR, AIOHTTP_FLOOR) and aiohttp else None
                ),
                trio_ratio=cpu / trio if case.target == SLUICEGATE_ASYNCIO and trio else None,
            )
        )
    order = {
        FLOOR: 0,
        AIOHTTP_FLOOR: 1,
        SLUICEGATE: 2,
        SLUICEGATE_ASYNCIO: 3,
        SLUICEGATE_STATELESS: 4,
    }
    summaries.sort(key=lambda s: (s.case.stream, s.case.concurrency, order.get(s.case.target, 9)))
    return summaries


def _floor_cpu(by_case: dict[Case, list[CaseRun]], target: str) -> dict[tuple[bool, int], float]:
    """A reference's (a floor's, the trio face's) median CPU/request per (stream, concurrency)."""
    return {
        (case.stream, case.concurrency): _median(r.cpu_ms_per_request for r in group)
        for case, group in by_case.items()
        if case.target == target
    }


def check_targets(summaries: Sequence[Summary]) -> list[Check]:
    """The performance targets of docs/design.md §8, judged on the medians."""
    checks = []
    ours = [s for s in summaries if s.case.target == SLUICEGATE]
    for s in ours:
        if s.cpu_ratio is None:
            continue
        checks.append(
            Check(
                name=f"{s.case.mode} c={s.case.concurrency}: CPU/request <= {MAX_RATIO}x floor",
                passed=s.cpu_ratio <= MAX_RATIO,
                detail=f"{s.cpu_ratio:.2f}x ({s.cpu_ms_per_request:.3f} ms vs floor "
                f"{s.cpu_ms_per_request / s.cpu_ratio:.3f} ms)",
            )
        )
    floor_cpu = {
        (s.case.stream, s.case.concurrency): s.cpu_ms_per_request
        for s in summaries
        if s.case.target == FLOOR
    }
    for stream in (False, True):
        mode = [s for s in ours if s.case.stream is stream]
        if len(mode) < 2:
            continue
        low = min(mode, key=lambda s: s.case.concurrency)
        high = max(mode, key=lambda s: s.case.concurrency)
        growth = high.cpu_ms_per_request / low.cpu_ms_per_request
        detail = (
            f"{growth:.2f}x ({high.cpu_ms_per_request:.3f} ms vs {low.cpu_ms_per_request:.3f} ms)"
        )
        floor_low = floor_cpu.get((stream, low.case.concurrency))
        floor_high = floor_cpu.get((stream, high.case.concurrency))
        if floor_low and floor_high:
            # Context, not a target: how much of the growth the HTTP client itself shows.
            detail += f"; the floor grows {floor_high / floor_low:.2f}x"
        checks.append(
            Check(
                name=f"{low.case.mode}: CPU/request at c={high.case.concurrency} <= "
                f"{MAX_CONCURRENCY_GROWTH}x c={low.case.concurrency}",
                passed=growth <= MAX_CONCURRENCY_GROWTH,
                detail=detail,
            )
        )
    return checks + face_checks(summaries)


def face_checks(summaries: Sequence[Summary]) -> list[Check]:
    """The asyncio face against the trio face, per case: its CPU/request at most
    :data:`MAX_FACE_RATIO` times the trio face's; and, where LiteLLM's library was measured,
    LiteLLM's CPU/request ÷ the asyncio face's beside ÷ the trio face's, the asyncio face's
    margin at least the trio face's ÷ :data:`MAX_FACE_RATIO`. (With all three measured in a
    case, the second holds exactly when the first does: it is there to read the margin over
    LiteLLM directly.)"""
    cpu = {
        (s.case.target, s.case.stream, s.case.concurrency): s.cpu_ms_per_request for s in summaries
    }
    checks = []
    for s in summaries:
        if s.case.target != SLUICEGATE_ASYNCIO or s.trio_ratio is None:
            continue
        case = f"{s.case.mode} c={s.case.concurrency}"
        key = (s.case.stream, s.case.concurrency)
        trio = cpu[(SLUICEGATE, *key)]
        face = s.cpu_ms_per_request
        checks.append(
            Check(
                name=f"{case}: asyncio face CPU/request <= {MAX_FACE_RATIO}x trio face",
                passed=s.trio_ratio <= MAX_FACE_RATIO,
                detail=f"{s.trio_ratio:.2f}x ({face:.3f} ms vs trio face {trio:.3f} ms)",
            )
        )
        litellm = cpu.get((LITELLM, *key))
        if litellm is None:
            continue
        ours, theirs = litellm / face, litellm / trio
        checks.append(
            Check(
                name=f"{case}: LiteLLM CPU/request / asyncio face's >= the trio face's / "
                f"{MAX_FACE_RATIO}",
                passed=ours >= theirs / MAX_FACE_RATIO,
                detail=f"LiteLLM / asyncio face {ours:.2f}x, LiteLLM / trio face {theirs:.2f}x "
                f"({ours / theirs:.2f} of it; LiteLLM {litellm:.3f} ms)",
            )
        )
    return checks


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _spread(s: Summary) -> str:
    """Half the range of CPU/request over the repeats, relative to the median."""
    if s.repeats < 2:
        return "-"
    return f"±{(s.cpu_ms_max - s.cpu_ms_min) / 2 / s.cpu_ms_per_request * 100:.0f}%"


_COLUMNS: Final[list[tuple[str, Callable[[Summary], str]]]] = [
    ("mode", lambda s: s.case.mode),
    ("conc", lambda s: str(s.case.concurrency)),
    ("target", lambda s: s.case.target),
    ("requests", lambda s: f"{s.requests}x{s.repeats}"),
    ("req/s", lambda s: f"{s.requests_per_s:.0f}"),
    ("CPU ms/req", lambda s: f"{s.cpu_ms_per_request:.3f}"),
    ("spread", _spread),
    ("x floor", lambda s: _fmt(s.cpu_ratio, ".2f")),
    ("x aiohttp", lambda s: _fmt(s.aiohttp_ratio, ".2f")),
    ("p50 ms", lambda s: f"{s.latency_p50_ms:.2f}"),
    ("p99 ms", lambda s: f"{s.latency_p99_ms:.2f}"),
    ("TTFE p50 ms", lambda s: _fmt(s.first_event_p50_ms, ".2f")),
    ("events/req", lambda s: f"{s.events_per_request:.0f}" if s.case.stream else "-"),
    ("events/s", lambda s: f"{s.events_per_s:.0f}" if s.case.stream else "-"),
    (
        "upstream busy",
        lambda s: _fmt(None if s.upstream_busy is None else s.upstream_busy * 100, ".0f") + "%",
    ),
    ("RSS MiB", lambda s: _fmt(None if s.rss_bytes is None else s.rss_bytes / 2**20, ".1f")),
]
_LEFT: Final = frozenset({"mode", "target"})
_Row = TypeVar("_Row")


def render_table(
    columns: Sequence[tuple[str, Callable[[_Row], str]]],
    items: Sequence[_Row],
    *,
    group: Callable[[_Row], object],
    markdown: bool = False,
) -> str:
    """Items as an aligned text table (a blank line between groups; ``mode`` and ``target``
    left-aligned, numbers right-aligned), or as Markdown. Every table of the suite uses this."""
    header = [name for name, _ in columns]
    rows = [[render(item) for _, render in columns] for item in items]
    if markdown:
        align = ["---" if name in _LEFT else "---:" for name in header]
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            c.ljust(w) if name in _LEFT else c.rjust(w)
            for c, w, name in zip(cells, widths, header, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    previous: object = None
    for item, row in zip(items, rows, strict=True):
        key = group(item)
        if previous is not None and key != previous:
            out.append("")
        previous = key
        out.append(line(row))
    return "\n".join(out)


def _by_case(s: Summary) -> object:
    return (s.case.stream, s.case.concurrency)


def text_table(summaries: Sequence[Summary]) -> str:
    return render_table(_COLUMNS, summaries, group=_by_case)


def markdown_table(summaries: Sequence[Summary]) -> str:
    return render_table(_COLUMNS, summaries, group=_by_case, markdown=True)


def _summary_json(s: Summary) -> dict[str, Any]:
    return {
        "target": s.case.target,
        "mode": s.case.mode,
        "concurrency": s.case.concurrency,
        "requests": s.requests,
        "repeats": s.repeats,
        "requests_per_s": s.requests_per_s,
        "cpu_ms_per_request": s.cpu_ms_per_request,
        "cpu_ms_per_request_min": s.cpu_ms_min,
        "cpu_ms_per_request_max": s.cpu_ms_max,
        "cpu_ratio_vs_floor": s.cpu_ratio,
        "cpu_ratio_vs_aiohttp_floor": s.aiohttp_ratio,
        "cpu_ratio_vs_trio_face": s.trio_ratio,
        "latency_p50_ms": s.latency_p50_ms,
        "latency_p99_ms": s.latency_p99_ms,
        "first_event_p50_ms": s.first_event_p50_ms,
        "events_per_request": s.events_per_request,
        "events_per_s": s.events_per_s if s.case.stream else None,
        "upstream_busy": s.upstream_busy,
        "rss_bytes": s.rss_bytes,
        "peak_rss_bytes": s.peak_rss_bytes,
    }


def write_results(
    directory: Path,
    stem: str,
    latest: str,
    *,
    meta: dict[str, Any],
    runs: Sequence[CaseRun],
    summaries: Sequence[Summary],
    checks: Sequence[Check],
) -> list[Path]:
    """``<stem>.json``, ``<latest>.json`` and ``<latest>.md`` in ``directory``; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": meta,
        "summary": [_summary_json(s) for s in summaries],
        "checks": [
            {"name": c.name, "verdict": c.verdict, "passed": c.passed, "detail": c.detail}
            for c in checks
        ],
        "runs": [r.to_json() for r in runs],
    }
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    paths = [directory / f"{stem}.json", directory / f"{latest}.json", directory / f"{latest}.md"]
    paths[0].write_bytes(data)
    paths[1].write_bytes(data)
    lines = [
        f"# sluicegate benchmarks — {meta['started']}",
        "",
        f"`{meta['command']}` · {meta['cpus']} · medians of {meta['repeats']} repeat(s)",
        "",
    ]
    if meta.get("upstream_shape"):
        lines += [str(meta["upstream_shape"]), ""]
    if summaries:
        lines += [markdown_table(summaries), ""]
    if checks:
        lines += ["## Targets", ""]
        lines += [f"- **{c.verdict}** {c.name}: {c.detail}" for c in checks]
        lines.append("")
    if meta.get("smoke"):
        lines += ["_Smoke run: too few requests for the numbers to mean anything._", ""]
    paths[2].write_text("\n".join(lines), encoding="utf-8")
    return paths
