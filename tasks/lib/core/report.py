"""Markdown for the stages' reports: one table layout and one way to print an interval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table, one line per row, without a trailing newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def interval_cell(interval: Mapping[str, float], spec: str = ".3f", scale: float = 1) -> str:
    """`mean [low, high]`, each `scale`d and formatted with `spec` (e.g. "+.3f" for a
    difference; scale 100 and ".1f" for percent)."""
    mean, low, high = (scale * interval[key] for key in ("mean", "low", "high"))
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"
