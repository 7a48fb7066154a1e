"""Charts for benchmark and evaluation reports, drawn with matplotlib.

Each function returns a `matplotlib.figure.Figure` (or draws into the ``ax`` it is given), so a
caller can restyle it, add to it or lay several out together, and saves it the usual way:

    >>> bar_chart({"unet step": {"torch": {"unedited": (6.1, 6.8), "edited": (6.2, 6.9)}}}, unit="ms").savefig("b.png")
    >>> line_chart({"erased": [(0.5, 0.4), (1, 0.1)]}, x_label="eta", y_label="rate").savefig("l.png")

Figures are built with matplotlib's object-oriented API (`Figure`, not `pyplot`): no global
figure registry to leak from and no GUI backend, so charts can be drawn from any thread of a
server. Styles apply as usual: ``with matplotlib.style.context("ggplot"): bar_chart(...)``.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter


def bar_chart(panels: dict[str, dict[str, dict[str, tuple[float, float | None]]]], title: str = "",
              unit: str = "", panel_size: tuple[float, float] = (4.0, 3.0)) -> Figure:
    """Grouped bars, one panel per key of ``panels``: panel -> group -> series -> (value, whisker).
    The whisker (e.g. p90 over a p50 bar) may be None. Each panel has its own scale; the bars
    are labelled with their values."""
    series = list(dict.fromkeys(s for groups in panels.values() for g in groups.values() for s in g))
    fig = Figure(figsize=(panel_size[0] * max(1, len(panels)), panel_size[1]), layout="constrained")
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    width = 0.8 / max(1, len(series))
    for ax, (panel, groups) in zip(axes, panels.items()):
        x = np.arange(len(groups))
        for i, name in enumerate(series):
            values = [groups[g].get(name, (np.nan, None)) for g in groups]
            heights = [v for v, _ in values]
            whiskers = [np.nan if w is None else max(0.0, w - v) for v, w in values]
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name, color=f"C{i}",
                          yerr=[np.zeros(len(values)), whiskers], capsize=3, error_kw={"elinewidth": 1})
            ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
                                       for v in heights], padding=2, fontsize=7)
        ax.set_xticks(x, list(groups))
        ax.set_title(f"{panel} ({unit})" if unit else panel, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    if series:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(series), fontsize=8)
    return fig


def line_chart(series: dict[str, list[tuple[float, float]]], title: str = "", x_label: str = "", y_label: str = "",
               y_range: tuple[float, float] | None = None, x_range: tuple[float, float] | None = None,
               reference: dict[str, float] | None = None, point_labels: dict[str, list[str]] | None = None,
               percent: bool = False, connect: bool = True, ax: Axes | None = None,
               size: tuple[float, float] = (5.2, 3.4)) -> Figure:
    """Lines with point markers: series name -> [(x, y), ...], on shared linear axes.

    ``reference``: a dashed horizontal line per series name, in its colour (e.g. the base model's level).
    ``point_labels``: text beside each point of a series (in the order given).
    ``x_range``, ``y_range``: fixed axes (default: the data's; one x tick per x value when not fixed).
    ``percent``: tick labels of [0, 1] values as percentages (on both axes when ``x_range`` is given).
    ``ax``: draw into this axes (e.g. one panel of a larger figure) instead of a new figure of ``size``."""
    if ax is None:
        ax = Figure(figsize=size, layout="constrained").subplots()
    for i, (name, points) in enumerate(series.items()):
        xs, ys = [x for x, _ in points], [y for _, y in points]
        ax.plot(xs, ys, "o-" if connect else "o", color=f"C{i}", label=name, markersize=5)
        if reference and name in reference:
            ax.axhline(reference[name], color=f"C{i}", linestyle="--", linewidth=1)
        for label, x, y in zip((point_labels or {}).get(name, []), xs, ys):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
    if y_range:
        ax.set_ylim(*y_range)
    if x_range:
        ax.set_xlim(*x_range)
    else:
        ax.set_xticks(sorted({x for points in series.values() for x, _ in points}))
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if x_range:
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return ax.figure


def figure_bytes(fig: Figure, format: str = "png", dpi: int = 100) -> bytes:
    """The figure encoded as ``format`` (png, svg, ...): for embedding in a report or a response."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, dpi=dpi)
    return buffer.getvalue()
