"""Stage `tune_retrieval`: choose the hybrid fusion weight and RRF constant on the dev split.

Equal-weight fusion is not a safe default: when BM25 is much weaker than dense retrieval on a
KB, giving it half the vote drags the fused ranking below dense alone. So the weight and the
constant are picked on held-out questions from a small grid, and the choice is recorded in
`fusion.json` in `--out` (`paths.fusion`; `paths.fusion_tuned` for the tuned index), which
`Retriever.from_params` (`Retriever.tuned`) then uses for hybrid search.

The best of many grid points scored on a small dev split wins partly by chance: it can beat
dense alone on dev and lose to it on test. So with `require_gain` the best fusion is kept only
when its paired bootstrap interval of the gain over dense alone (same questions) lies above
zero; otherwise the choice is dense alone (dense_weight 1, which `hybrid` search then follows
exactly).

Both sides are retrieved once (`retrieval.candidates` deep); each grid point only re-fuses.

    python -m tasks.tune_retrieval [--index DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib.core.config import TuneRetrievalParams, load_params
from tasks.lib.core.io import atomic_path, run_stage, write_json
from tasks.lib.core.records import QARecord, read_qa
from tasks.lib.core.report import interval_cell
from tasks.lib.core.stats import bootstrap_interval
from tasks.lib.core.tracking import run_name, stage_run
from tasks.lib.retrieval.encoder import encode_precision
from tasks.lib.retrieval.metrics import score_rankings
from tasks.lib.retrieval.retriever import FUSION_FILE, Fusion, Ranking, Retriever, fuse_rankings

GRID_FILE = "grid.json"


def ranking_scores(
    records: list[QARecord], doc_ids: list[str], rankings: list[Ranking], metric: str
) -> np.ndarray:
    """Per-question `metric` of rankings of index rows (in question-id order)."""
    ranked = [[doc_ids[row] for row, _ in ranking] for ranking in rankings]
    return score_rankings(records, ranked, [metric])[metric]


def fuse_all(dense: list[Ranking], sparse: list[Ranking], fusion: Fusion) -> list[Ranking]:
    return [fuse_rankings(d, s, fusion) for d, s in zip(dense, sparse, strict=True)]


def grid_search(
    records: list[QARecord],
    doc_ids: list[str],
    dense: list[Ranking],
    sparse: list[Ranking],
    rrf_ks: list[float],
    dense_weights: list[float],
    candidates: int,
    metric: str,
) -> list[dict[str, Any]]:
    """One row per (rrf_k, dense_weight) with its mean `metric`; bm25_weight = 1 - dense_weight."""
    rows = []
    for rrf_k in rrf_ks:
        for weight in dense_weights:
            fusion = Fusion(rrf_k, weight, round(1 - weight, 6), candidates)
            score = ranking_scores(records, doc_ids, fuse_all(dense, sparse, fusion), metric)
            rows.append({**vars(fusion), metric: float(score.mean())})
    return rows


def choose(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The best row; among equals the first in grid order (params list order)."""
    return max(rows, key=lambda row: row[metric])


def keeps_fusion(fusion: Fusion, gain: dict[str, float], tune: TuneRetrievalParams) -> bool:
    """Fusion stays when it is dense alone anyway, not required to prove itself, or proven."""
    return fusion.bm25_weight == 0 or not tune.require_gain or gain["low"] > 0


@dataclass(frozen=True)
class Selection:
    rows: list[dict[str, Any]]  # the grid, one row per (rrf_k, dense_weight)
    best: Fusion  # the grid's best
    gain: dict[str, float]  # best's gain over dense alone: mean, low, high
    kept: bool  # best is the choice; else dense alone
    chosen: Fusion
    score: float  # the choice's mean metric
    alone: dict[str, float]  # each side's mean metric


def select_fusion(
    records: list[QARecord],
    doc_ids: list[str],
    dense: list[Ranking],
    sparse: list[Ranking],
    tune: TuneRetrievalParams,
    depth: int,
) -> Selection:
    """Grid-search the fusion, then keep the best only if it beats dense alone beyond noise."""
    rows = grid_search(
        records, doc_ids, dense, sparse, tune.rrf_k, tune.dense_weight, depth, tune.metric
    )
    top = choose(rows, tune.metric)
    best = Fusion(top["rrf_k"], top["dense_weight"], top["bm25_weight"], depth)
    dense_scores = ranking_scores(records, doc_ids, dense, tune.metric)
    fused_scores = ranking_scores(records, doc_ids, fuse_all(dense, sparse, best), tune.metric)
    gain = bootstrap_interval(  # paired: fused - dense, question by question
        fused_scores - dense_scores, tune.bootstrap_resamples, tune.confidence, tune.seed
    )
    kept = keeps_fusion(best, gain, tune)
    return Selection(
        rows=rows,
        best=best,
        gain=gain,
        kept=kept,
        chosen=best if kept else Fusion(best.rrf_k, 1.0, 0.0, depth),
        score=float((fused_scores if kept else dense_scores).mean()),
        alone={
            "dense": float(dense_scores.mean()),
            "bm25": float(ranking_scores(records, doc_ids, sparse, tune.metric).mean()),
        },
    )


def main(
    params_file: Path = Path("params.yaml"), index: Path | None = None, out: Path | None = None
) -> None:
    params = load_params(params_file)
    tune = params.tune_retrieval
    index_dir = index if index is not None else params.paths.index_dir
    with stage_run(run_name("tune_retrieval", out), params) as run:
        precision = encode_precision(params)
        retriever = Retriever.load(
            index_dir,
            Fusion.from_params(params.retrieval),
            base=params.project_dir,
            precision=precision,
        )
        records = read_qa(params.paths.retrieval_qa_dir / f"{tune.split}.jsonl")
        questions = [r.question for r in records]
        doc_ids = [doc["id"] for doc in retriever.docs]
        depth = params.retrieval.candidates
        dense, sparse = retriever.dense(questions, depth), retriever.bm25(questions, depth)

        picked = select_fusion(records, doc_ids, dense, sparse, tune, depth)
        rows, best_fusion, gain, kept = picked.rows, picked.best, picked.gain, picked.kept
        fusion, score, alone = vars(picked.chosen), picked.score, picked.alone
        out_dir = out if out is not None else params.paths.tune_retrieval_dir
        with atomic_path(out_dir) as tmp:
            run.log_metrics(
                {"chosen": fusion, tune.metric: score, "alone": alone, "best_gain": gain}
            )
            run.set_tags({"precision.encode": precision})
            write_json(
                tmp / FUSION_FILE,
                {
                    "fusion": fusion,
                    "chosen_on": {
                        "split": tune.split,
                        "questions": len(records),
                        "metric": tune.metric,
                    },
                    "score": score,
                    "alone": alone,
                    "best_in_grid": {"fusion": vars(best_fusion), "gain_over_dense": gain},
                    "kept_fusion": kept,
                    "index": {
                        "encoder": retriever.manifest["encoder"],
                        "kb": retriever.manifest["kb"],
                    },
                },
            )
            write_json(tmp / GRID_FILE, rows)

    print(
        f"tune_retrieval: {tune.metric} on {tune.split} ({len(records)} questions, "
        f"embedded in {precision})"
    )
    print("  rrf_k \\ dense_weight " + " ".join(f"{w:6.2f}" for w in tune.dense_weight))
    for rrf_k in tune.rrf_k:
        cells = [row[tune.metric] for row in rows if row["rrf_k"] == rrf_k]
        print(f"  {rrf_k:20g} " + " ".join(f"{c:6.3f}" for c in cells))
    print(f"  dense alone {alone['dense']:.3f}, bm25 alone {alone['bm25']:.3f}")
    interval = interval_cell(gain, "+.3f")
    print(
        f"  best fusion (rrf_k={best_fusion.rrf_k:g}, dense_weight={best_fusion.dense_weight:g})"
        f" minus dense alone: {interval} ({tune.confidence:.0%} paired bootstrap)"
        + ("" if kept else ": within noise, dense alone is chosen")
    )
    print(
        f"tune_retrieval: chose rrf_k={fusion['rrf_k']:g}, "
        f"dense_weight={fusion['dense_weight']:g}, bm25_weight={fusion['bm25_weight']:g} "
        f"({tune.metric} {score:.3f}) -> {out_dir / FUSION_FILE}"
    )
    on_edge = [
        name
        for name, grid in (("dense_weight", tune.dense_weight), ("rrf_k", tune.rrf_k))
        if len(grid) > 1 and vars(best_fusion)[name] in (min(grid), max(grid))
    ]
    if on_edge and kept:
        print(f"tune_retrieval: note: {', '.join(on_edge)} chosen at the grid's edge")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--index", type=Path, help="index folder (default: paths.index_dir)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: paths.tune_retrieval_dir)"
    )
    args = parser.parse_args()
    run_stage(lambda: main(args.params, args.index, args.out))
