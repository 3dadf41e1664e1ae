"""PNG figures for the MLflow UI: recall@k curves and system-by-metric bars.

Built on `matplotlib.figure.Figure` directly (no pyplot): no global state, no display backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


def curve_figure(rows: Sequence[Mapping[str, float]], x: str, title: str, ylabel: str) -> Figure:
    """One line per column of `rows` other than `x` (e.g. recall@k per system over k)."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    xs = [row[x] for row in rows]
    for column in (c for c in rows[0] if c != x):
        axes.plot(xs, [row[column] for row in rows], marker=".", label=column)
    axes.set(title=title, xlabel=x, ylabel=ylabel, ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def bars_figure(
    systems: Mapping[str, Mapping[str, float]], metrics: Sequence[str], title: str
) -> Figure:
    """Grouped bars: one group per metric, one bar per system that reports it."""
    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(systems))
    positions = np.arange(len(metrics))
    for i, (system, values) in enumerate(systems.items()):
        heights = [values.get(metric, np.nan) for metric in metrics]
        axes.bar(positions + i * width, heights, width, label=system)
    axes.set_xticks(positions + width * (len(systems) - 1) / 2, metrics)
    axes.set(title=title, ylim=(0, 1))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", ncols=2)
    return figure
