"""PNG charts of a benchmark run: latency, throughput and memory.

matplotlib is optional (``pip install -e '.[bench]'``): :func:`write_charts` notes its absence
in one line and writes nothing, so the suite runs the same without it. The figures are drawn on
matplotlib's Agg canvas directly, never through ``pyplot``: no global figure state, no GUI
backend chosen behind our back, nothing left open between charts.

The throughput and latency charts take any number of targets, each point a (target, mode,
concurrency) case: the suite's own :class:`~benchmarks._report.Summary` objects, or anything
else carrying the same figures (another target measured elsewhere, a results file's
``summary`` rows) — see :func:`series_points`. Targets keep their first-seen order and one
colour across every chart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import attrs

from ._memory import MAX_GROWTH_MIB, MIB, MemoryResult, OpenStreams, SlowConsumerRun
from ._report import Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ChartInput",
    "SeriesLike",
    "SeriesPoint",
    "latency_chart",
    "memory_chart",
    "series_points",
    "throughput_chart",
    "write_charts",
]

LATENCY_PNG: Final = "latency.png"
THROUGHPUT_PNG: Final = "throughput.png"
MEMORY_PNG: Final = "memory.png"
_DPI: Final = 110
_MODE_ORDER: Final = {"create": 0, "stream": 1}


@attrs.frozen(kw_only=True)
class SeriesPoint:
    """One case as the charts see it."""

    target: str
    mode: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


class SeriesLike(Protocol):
    """Any object with a case's figures (another target's summary, say)."""

    @property
    def target(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def requests_per_s(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...


#: What the charts accept per case. A mapping has the keys ``target``, ``mode``,
#: ``concurrency``, ``requests_per_s`` and ``p50_ms``/``p99_ms`` (or ``latency_p50_ms``/
#: ``latency_p99_ms``, as in the results file's ``summary`` rows).
ChartInput: TypeAlias = "Summary | SeriesLike | Mapping[str, Any]"


def _pick(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    raise ValueError(f"a chart series point needs {' or '.join(map(repr, keys))}: {mapping!r}")


def _point(item: ChartInput) -> SeriesPoint:
    if isinstance(item, SeriesPoint):
        return item
    if isinstance(item, Summary):
        return SeriesPoint(
            target=item.case.target,
            mode=item.case.mode,
            concurrency=item.case.concurrency,
            requests_per_s=item.requests_per_s,
            p50_ms=item.latency_p50_ms,
            p99_ms=item.latency_p99_ms,
        )
    if isinstance(item, Mapping):
        return SeriesPoint(
            target=str(_pick(item, "target")),
            mode=str(_pick(item, "mode")),
            concurrency=int(_pick(item, "concurrency")),
            requests_per_s=float(_pick(item, "requests_per_s")),
            p50_ms=float(_pick(item, "p50_ms", "latency_p50_ms")),
            p99_ms=float(_pick(item, "p99_ms", "latency_p99_ms")),
        )
    return SeriesPoint(
        target=item.target,
        mode=item.mode,
        concurrency=item.concurrency,
        requests_per_s=item.requests_per_s,
        p50_ms=item.p50_ms,
        p99_ms=item.p99_ms,
    )


def series_points(items: Iterable[ChartInput]) -> list[SeriesPoint]:
    """Normalise summaries, mappings and look-alikes to :class:`SeriesPoint`.

    Raises:
        ValueError: a mapping lacks one of the figures.
    """
    return [_point(item) for item in items]


def _targets(points: Sequence[SeriesPoint]) -> list[str]:
    return list(dict.fromkeys(p.target for p in points))


def _modes(points: Sequence[SeriesPoint]) -> list[str]:
    modes = dict.fromkeys(p.mode for p in points)
    return sorted(modes, key=lambda m: (_MODE_ORDER.get(m, len(_MODE_ORDER)), m))


def _colours(targets: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {t: palette(i % palette.N) for i, t in enumerate(targets)}


def _figure(panels: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * panels + 0.5, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def _legend(
    fig: Figure, targets: Sequence[str], colours: Mapping[str, Any], *, lines: bool
) -> None:
    """One legend for the whole figure, under the panels: a target may be missing from one
    panel, and a legend inside a panel covers bars."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Line2D([], [], color=colours[t], linewidth=3) if lines else Patch(color=colours[t])
        for t in targets
    ]
    labels = list(targets)
    if lines:
        handles += [
            Line2D([], [], color="black", marker="o"),
            Line2D([], [], color="black", marker="^", linestyle="--"),
        ]
        labels += ["p50", "p99"]
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize="small"
    )


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _concurrency_axis(ax: Axes, concurrencies: Sequence[int]) -> None:
    if len(concurrencies) > 1 and min(concurrencies) > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(concurrencies), [str(c) for c in concurrencies])
    ax.minorticks_off()
    ax.set_xlabel("concurrency")


def latency_chart(summaries: Iterable[ChartInput], path: Path) -> Path:
    """p50 (solid) and p99 (dashed) latency per target against concurrency, one panel per mode
    (create and stream side by side), on log scales. Returns ``path``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no points, or a mapping lacks one of the figures.
    """
    points = series_points(summaries)
    if not points:
        raise ValueError("no points to chart")
    targets = _targets(points)
    colours = _colours(targets)
    modes = _modes(points)
    fig, axes = _figure(len(modes))
    for ax, mode in zip(axes, modes, strict=True):
        here = [p for p in points if p.mode == mode]
        for target in targets:
            series = sorted((p for p in here if p.target == target), key=lambda p: p.concurrency)
            if not series:
                continue
            xs = [p.concurrency for p in series]
            colour = colours[target]
            ax.plot(xs, [p.p50_ms for p in series], "o-", color=colour)
            ax.plot(xs, [p.p99_ms for p in series], "^--", color=colour)
        _concurrency_axis(ax, sorted({p.concurrency for p in here}))
        ax.set_yscale("log")
        ax.set_ylabel("latency per request, ms (log)")
        ax.set_title(mode)
        ax.grid(True, which="major", alpha=0.3)
    _legend(fig, targets, colours, lines=True)
    fig.suptitle("Latency per request: p50 (solid) and p99 (dashed)")
    return _save(fig, path)


def throughput_chart(summaries: Iterable[ChartInput], path: Path) -> Path:
    """Requests per second per target at each concurrency, grouped bars, one panel per mode.
    Returns ``path``.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: no points, or a mapping lacks one of the figures.
    """
    points = series_points(summaries)
    if not points:
        raise ValueError("no points to chart")
    targets = _targets(points)
    colours = _colours(targets)
    modes = _modes(points)
    fig, axes = _figure(len(modes))
    for ax, mode in zip(axes, modes, strict=True):
        here = [p for p in points if p.mode == mode]
        concurrencies = sorted({p.concurrency for p in here})
        present = [t for t in targets if any(p.target == t for p in here)]
        width = 0.8 / len(present)
        for i, target in enumerate(present):
            by_conc = {p.concurrency: p.requests_per_s for p in here if p.target == target}
            slots = [j for j, c in enumerate(concurrencies) if c in by_conc]
            bars = ax.bar(
                [j - 0.4 + width * (i + 0.5) for j in slots],
                [by_conc[concurrencies[j]] for j in slots],
                width,
                color=colours[target],
            )
            ax.bar_label(bars, fmt="%.0f", fontsize="x-small")
        ax.set_xticks(range(len(concurrencies)), [str(c) for c in concurrencies])
        ax.set_xlabel("concurrency")
        ax.set_ylabel("requests/s")
        ax.set_title(mode)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.08)
    _legend(fig, targets, colours, lines=False)
    fig.suptitle("Throughput")
    return _save(fig, path)


def _not_measured(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def memory_chart(memory_results: Iterable[MemoryResult], path: Path) -> Path:
    """Left: memory per open stream (KiB) per target. Right: each slow consumer's RSS over
    time, relative to its start mark, against the growth bound. Returns ``path``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    results = list(memory_results)
    held = [r for r in results if isinstance(r, OpenStreams)]
    slow = [r for r in results if isinstance(r, SlowConsumerRun)]
    charted: list[OpenStreams | SlowConsumerRun] = [*held, *slow]
    colours = _colours(list(dict.fromkeys(r.target for r in charted)))
    fig, (left, right) = _figure(2)
    title = "memory per open stream"
    if held:
        bars = left.bar(
            range(len(held)),
            [r.per_stream_bytes / 1024 for r in held],
            0.6,
            color=[colours[r.target] for r in held],
        )
        left.bar_label(bars, fmt="%.0f KiB", fontsize="small")
        left.set_xticks(
            range(len(held)),
            [
                f"{r.target}: {r.streams} streams\nidle {r.idle_rss_bytes / MIB:.0f} MiB, "
                f"open {r.open_rss_bytes / MIB:.0f} MiB"
                for r in held
            ],
            fontsize="small",
        )
        left.set_xlim(-0.75, len(held) - 0.25)
        left.margins(y=0.1)
        left.set_ylabel("KiB per stream ((open - idle RSS) / streams)")
        left.set_title(title)
        left.grid(True, axis="y", alpha=0.3)
    else:
        _not_measured(left, title)
    title = "slow consumer: RSS since the start mark"
    if slow:
        for r in slow:
            right.plot(
                [s.at_s for s in r.samples],
                [(s.rss_bytes - r.start_rss_bytes) / MIB for s in r.samples],
                ".-",
                color=colours[r.target],
                label=f"{r.target} ({r.events} events, {r.event_interval_s * 1e3:g} ms each)",
            )
        right.axhline(MAX_GROWTH_MIB, color="grey", linestyle="--", label="growth bound")
        right.axhline(0, color="grey", linewidth=0.5)
        right.set_xlabel("seconds since the first event")
        right.set_ylabel("RSS - RSS at start mark, MiB")
        right.set_title(title)
        right.grid(True, alpha=0.3)
        right.legend(fontsize="small")
    else:
        _not_measured(right, title)
    fig.suptitle("Memory")
    return _save(fig, path)


def write_charts(
    folder: Path,
    summaries: Iterable[Summary],
    memory_results: Iterable[MemoryResult],
    extra_series: Iterable[ChartInput] | None = None,
) -> list[Path]:
    """Write ``latency.png`` and ``throughput.png`` (the summaries and ``extra_series``
    together, when there are any) and ``memory.png`` (when there are open-stream or
    slow-consumer results) into ``folder``; the paths written. Without matplotlib, prints a
    one-line note and returns ``[]``.

    Raises:
        ValueError: an extra series point lacks one of the figures.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("charts skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return []
    points = series_points([*summaries, *(extra_series or ())])
    results = list(memory_results)
    paths = []
    if points:
        paths.append(latency_chart(points, folder / LATENCY_PNG))
        paths.append(throughput_chart(points, folder / THROUGHPUT_PNG))
    if any(isinstance(r, OpenStreams | SlowConsumerRun) for r in results):
        paths.append(memory_chart(results, folder / MEMORY_PNG))
    return paths
