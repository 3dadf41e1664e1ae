"""Answer metrics and their bootstrap intervals.

EM and token F1 follow SQuAD v1.1 (normalize, best over gold answers); ROUGE-L is Google's
`rouge-score` on the same normalized text, so all three judge the same strings. `supported`
asks whether the predicted answer occurs (normalized, on token boundaries) in the passages the
system was shown, i.e. whether the answer is grounded rather than recalled or invented.
Intervals are paired: every system is resampled with the same question indices, so differences
between systems are judged on the same questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
from rouge_score import rouge_scorer

from tasks.lib.core.answers import answer_in_text, normalize_answer

METRICS = ("exact_match", "answer_f1", "rouge_l", "supported")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    return max(_f1(prediction, a) for a in answers)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, answers: Sequence[str]) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), best over the gold answers."""
    pred = normalize_answer(prediction)
    return max(_rouge().score(normalize_answer(a), pred)["rougeL"].fmeasure for a in answers)


def supported(prediction: str, passages: Sequence[str]) -> float:
    return float(any(answer_in_text(prediction, text) for text in passages))


def score_prediction(
    prediction: str, answers: Sequence[str], passages: Sequence[str]
) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, answers),
        "answer_f1": token_f1(prediction, answers),
        "rouge_l": rouge_l(prediction, answers),
        "supported": supported(prediction, passages),
    }


def paired_bootstrap(
    scores: Mapping[str, Sequence[float]],
    resamples: int,
    confidence: float,
    seed: int,
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, dict[str, float]]:
    """Mean and percentile interval per system, plus `a - b` for each pair in `pairs`.

    `scores` maps a system to its per-question scores, in the same question order for all.
    """
    matrix = {name: np.asarray(values, dtype=float) for name, values in scores.items()}
    sizes = {len(v) for v in matrix.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired bootstrap needs equal lengths, got {sorted(sizes)}")
    n = sizes.pop()
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    series = dict(matrix) | {f"{a} - {b}": matrix[a] - matrix[b] for a, b in pairs}
    tail = (1 - confidence) / 2 * 100
    result = {}
    for name, values in series.items():
        means = values[index].mean(axis=1)
        low, high = np.percentile(means, [tail, 100 - tail])
        result[name] = {"mean": float(values.mean()), "low": float(low), "high": float(high)}
    return result
