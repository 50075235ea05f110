"""The report's charts as PNG bytes, drawn with matplotlib's object API on the Agg canvas: no GUI backend,
no global pyplot state (a report can be built inside a server or a test run)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

DPI = 100
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    # no Software / date metadata: the same inputs give the same bytes
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
               ylabel: str) -> bytes:
    """One line per named (x, y) series: the loss curve (training loss, held-out loss)."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for (name, (xs, ys)), color in zip(series.items(), COLORS):
        ax.plot(xs, ys, label=name, color=color, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    values = [y for _, ys in series.values() for y in ys]
    if values and min(values) > 0 and max(values) / min(values) >= 10:
        # a loss falls by orders of magnitude: on a linear scale its late steps would lie flat on the axis
        ax.set_yscale("log")
        ax.set_title(f"{title} (log scale)")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        decades = math.log10(max(values) / min(values))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if decades < 2 else NullFormatter())
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def hbar_chart(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str, xmax: float | None = None,
               fmt: str = "{:.2f}") -> bytes:
    """Horizontal bars, first label on top, each bar labelled with its value (accuracy per answer type)."""
    fig = Figure(figsize=(7, 0.9 + 0.42 * len(labels)))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))[::-1]
    bars = ax.barh(ys, values, color=COLORS[0])
    ax.set_yticks(ys, labels)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
    ax.set(title=title, xlabel=xlabel)
    ax.set_xlim(0, (xmax or max(values, default=1) or 1) * 1.12)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, ymax: float | None = None,
              fmt: str = "{:.3f}") -> bytes:
    """Vertical bars, each labelled with its value (caption metrics, ScienceQA's categories)."""
    fig = Figure(figsize=(max(4.5, 0.8 * len(labels) + 1.5), 3.6))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(labels)), values, color=COLORS[0])
    ax.set_xticks(range(len(labels)), labels)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2, fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.set_ylim(0, (ymax or max(values, default=1) or 1) * 1.12)
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def grouped_bar_chart(groups: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str,
                      ymax: float | None = None) -> bytes:
    """One cluster per group, one coloured bar per series in it (POPE: measures x settings)."""
    fig = Figure(figsize=(max(5.0, 1.2 * len(groups) + 2), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for k, ((name, values), color) in enumerate(zip(series.items(), COLORS * 4)):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=name, color=color)
    ax.set_xticks(range(len(groups)), groups)
    ax.set(title=title, ylabel=ylabel)
    top = max((max(v, default=0) for v in series.values()), default=1)
    ax.set_ylim(0, (ymax or top or 1) * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(series))
    return _png(fig)
