"""Stage `tune_retrieval`: choose the hybrid fusion weight and RRF constant on the dev split.

Equal-weight fusion is not a safe default: when BM25 is much weaker than dense retrieval on a
KB, giving it half the vote drags the fused ranking below dense alone. So the weight and the
constant are picked on held-out questions from a small grid, and the choice is recorded in
`fusion.json`, which `Retriever.from_params` then uses for hybrid search.

Both sides are retrieved once (`retrieval.candidates` deep); each grid point only re-fuses.

    python -m tasks.tune_retrieval [--index DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tasks.io import atomic_path, run_stage, write_json
from tasks.params import load_params, resolve
from tasks.records import QARecord, read_qa
from tasks.retrieval_metrics import score_rankings
from tasks.retriever import FUSION_FILE, Fusion, Ranking, Retriever, fuse_rankings
from tasks.tracking import run_name, stage_run

GRID_FILE = "grid.json"


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
            ranked = [
                [doc_ids[row] for row, _ in fuse_rankings(d, s, fusion)]
                for d, s in zip(dense, sparse, strict=True)
            ]
            score = score_rankings(records, ranked, [metric])[metric].mean()
            rows.append({**vars(fusion), metric: float(score)})
    return rows


def choose(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The best row; among equals the first in grid order (params list order)."""
    return max(rows, key=lambda row: row[metric])


def side_scores(
    records: list[QARecord], doc_ids: list[str], rankings: list[Ranking], metric: str
) -> float:
    ranked = [[doc_ids[row] for row, _ in ranking] for ranking in rankings]
    return float(score_rankings(records, ranked, [metric])[metric].mean())


def main(
    params_file: Path = Path("params.yaml"), index: Path | None = None, out: Path | None = None
) -> None:
    params = load_params(params_file)
    tune = params.tune_retrieval
    index_dir = index if index is not None else resolve(params_file, params.paths.index_dir)
    retriever = Retriever.load(
        index_dir, Fusion.from_params(params.retrieval), base=params_file.parent
    )
    records = read_qa(resolve(params_file, params.paths.retrieval_qa_dir) / f"{tune.split}.jsonl")
    questions = [r.question for r in records]
    doc_ids = [doc["id"] for doc in retriever.docs]
    depth = params.retrieval.candidates
    dense, sparse = retriever.dense(questions, depth), retriever.bm25(questions, depth)

    rows = grid_search(
        records, doc_ids, dense, sparse, tune.rrf_k, tune.dense_weight, depth, tune.metric
    )
    best = choose(rows, tune.metric)
    fusion = {key: best[key] for key in ("rrf_k", "dense_weight", "bm25_weight", "candidates")}
    alone = {
        "dense": side_scores(records, doc_ids, dense, tune.metric),
        "bm25": side_scores(records, doc_ids, sparse, tune.metric),
    }
    out_dir = out if out is not None else resolve(params_file, params.paths.tune_retrieval_dir)
    with (
        stage_run(run_name("tune_retrieval", out), params_file) as run,
        atomic_path(out_dir) as tmp,
    ):
        run.log_metrics({"chosen": fusion, tune.metric: best[tune.metric], "alone": alone})
        write_json(
            tmp / FUSION_FILE,
            {
                "fusion": fusion,
                "chosen_on": {
                    "split": tune.split,
                    "questions": len(records),
                    "metric": tune.metric,
                },
                "score": best[tune.metric],
                "alone": alone,
                "index": {"encoder": retriever.manifest["encoder"], "kb": retriever.manifest["kb"]},
            },
        )
        write_json(tmp / GRID_FILE, rows)

    print(f"tune_retrieval: {tune.metric} on {tune.split} ({len(records)} questions)")
    print("  rrf_k \\ dense_weight " + " ".join(f"{w:6.2f}" for w in tune.dense_weight))
    for rrf_k in tune.rrf_k:
        cells = [row[tune.metric] for row in rows if row["rrf_k"] == rrf_k]
        print(f"  {rrf_k:20g} " + " ".join(f"{c:6.3f}" for c in cells))
    print(f"  dense alone {alone['dense']:.3f}, bm25 alone {alone['bm25']:.3f}")
    print(
        f"tune_retrieval: chose rrf_k={fusion['rrf_k']:g}, "
        f"dense_weight={fusion['dense_weight']:g}, bm25_weight={fusion['bm25_weight']:g} "
        f"({tune.metric} {best[tune.metric]:.3f}) -> {out_dir / FUSION_FILE}"
    )
    on_edge = [
        name
        for name, grid in (("dense_weight", tune.dense_weight), ("rrf_k", tune.rrf_k))
        if len(grid) > 1 and best[name] in (min(grid), max(grid))
    ]
    if on_edge:
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
