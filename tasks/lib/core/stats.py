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
    if not len(values):
        raise ValueError("a bootstrap interval needs at least one question")
    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def _same_questions(scores: Mapping[str, Sequence[float] | np.ndarray]) -> dict[str, np.ndarray]:
    matrix = {name: np.asarray(values, dtype=float) for name, values in scores.items()}
    sizes = {len(v) for v in matrix.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired bootstrap needs equal lengths, got {sorted(sizes)}")
    return matrix


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, float]:
    """{mean, low, high, n} of `a - b` over the same questions (in the same order).

    Resampling the per-question differences keeps what the two systems share: a question both
    get right or both miss adds nothing, so a paired interval is far narrower than the two
    systems' own intervals suggest.
    """
    pair = _same_questions({"a": a, "b": b})
    interval = bootstrap_interval(pair["a"] - pair["b"], resamples, confidence, seed)
    return interval | {"n": len(pair["a"])}


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
    matrix = _same_questions(scores)
    series = matrix | {f"{a} - {b}": matrix[a] - matrix[b] for a, b in pairs}
    return {
        name: bootstrap_interval(values, resamples, confidence, seed)
        for name, values in series.items()
    }
