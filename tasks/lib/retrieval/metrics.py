"""Retrieval metrics through ranx, plus a bootstrap interval over queries.

Shared by `tune_retrieval` and `evaluate_retrieval` so both score rankings the same way.
Metric names are ranx's: `recall@10`, `precision@5`, `mrr@10`, `ndcg@10`, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ranx import Qrels, Run, evaluate

from tasks.lib.core.records import QARecord


def qrels_from(records: Sequence[QARecord]) -> Qrels:
    """Each question's gold docs, relevance 1."""
    return Qrels({r.id: dict.fromkeys(r.doc_ids, 1) for r in records})


def run_from(records: Sequence[QARecord], ranked_ids: Sequence[Sequence[str]]) -> Run:
    """A ranx Run whose scores encode our order (n, n-1, ..., 1).

    ranx sorts each query's docs by score; with the raw scores a tie (common in fused RRF
    scores) would be broken by doc id instead of by the ranking we evaluate.
    """
    return Run(
        {
            r.id: {doc_id: float(len(ids) - i) for i, doc_id in enumerate(ids)}
            for r, ids in zip(records, ranked_ids, strict=True)
        }
    )


def per_query_scores(qrels: Qrels, run: Run, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """metric -> one score per question (in sorted question-id order, the same for every run)."""
    scores = evaluate(qrels, run, list(metrics), return_mean=False, make_comparable=True)
    if len(metrics) == 1:  # ranx returns a bare array for a single metric
        scores = {metrics[0]: scores}
    return {name: np.asarray(values, dtype=float) for name, values in scores.items()}


def score_rankings(
    records: Sequence[QARecord], ranked_ids: Sequence[Sequence[str]], metrics: Sequence[str]
) -> dict[str, np.ndarray]:
    """metric -> per-question scores of these rankings, checked against a plain recall count.

    The check exists because one run here returned BM25 nDCG@10 0.09 for rankings that score
    0.675 in every rerun, with no error. The cause was not found (suspect: ranx's numba code
    loaded from an on-disk cache that concurrent processes share); a wrong metric must fail.
    """
    depth = max(len(ids) for ids in ranked_ids) or 1
    check = f"recall@{depth}"
    scores = per_query_scores(qrels_from(records), run_from(records, ranked_ids), [*metrics, check])
    by_id = {
        r.id: len(set(ids) & set(r.doc_ids)) / len(set(r.doc_ids))
        for r, ids in zip(records, ranked_ids, strict=True)
    }
    expected = [by_id[qid] for qid in sorted(by_id)]
    if not np.allclose(scores[check], expected):
        raise RuntimeError(
            f"ranx {check} disagrees with a direct count (mean {scores[check].mean():.4f} vs "
            f"{np.mean(expected):.4f}): its compiled code is suspect; clear numba's cache "
            f"(ranx's __pycache__/*.nbi, *.nbc) and rerun"
        )
    return {name: scores[name] for name in metrics}


def bootstrap_interval(
    values: np.ndarray, samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling questions with replacement.

    The same seed draws the same resamples for every system, so intervals of systems scored on
    the same questions are paired.
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[picks].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(
    scores: dict[str, np.ndarray], samples: int, confidence: float, seed: int
) -> dict[str, dict[str, float]]:
    """metric -> {mean, low, high}."""
    summary = {}
    for name, values in scores.items():
        low, high = bootstrap_interval(values, samples, confidence, seed)
        summary[name] = {"mean": float(values.mean()), "low": low, "high": high}
    return summary
