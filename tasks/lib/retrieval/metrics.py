"""Retrieval metrics through ranx.

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

    ranx scores in numba-compiled code that is cached on disk and shared by concurrent
    processes; should that code ever score wrongly, the stage must fail, not report the number.
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
