"""The one bootstrap of the project: a percentile interval of a mean over questions.

Questions are resampled with replacement. The resamples depend only on the seed and the number
of questions, so every system scored on the same questions gets the same resamples: intervals
are paired, and the interval of a difference between two systems is this same bootstrap applied
to their per-question differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, resamples: int, confidence: float, seed: int
) -> dict[str, float]:
    """{mean, low, high}: the mean of `values` and its percentile bootstrap interval."""
    values = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def paired_intervals(
    scores: Mapping[str, Sequence[float] | np.ndarray],
    resamples: int,
    confidence: float,
    seed: int,
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, dict[str, float]]:
    """`bootstrap_interval` per system, plus one of `a - b` for each pair in `pairs`.

    `scores` maps a system to its per-question scores, in the same question order for all.
    """
    matrix = {name: np.asarray(values, dtype=float) for name, values in scores.items()}
    sizes = {len(v) for v in matrix.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired bootstrap needs equal lengths, got {sorted(sizes)}")
    series = matrix | {f"{a} - {b}": matrix[a] - matrix[b] for a, b in pairs}
    return {
        name: bootstrap_interval(values, resamples, confidence, seed)
        for name, values in series.items()
    }
