"""Stage `evaluate_retrieval`: BM25, dense, equal-weight hybrid and tuned hybrid, side by side.

For each split in params: every metric (ranx) as a mean over questions with a bootstrap
interval, and the recall@k curve. Outputs in `paths.retrieval_eval_dir`:
  metrics.json          {split: {system: {metric: mean}}}       (dvc metrics show)
  report.json           the same with intervals and question counts
  report.md             the tables, as printed
  recall_at_k_<split>.csv  k, one recall column per system       (dvc plots show)

    python -m tasks.evaluate_retrieval [--index DIR] [--fusion FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tasks.lib.core.config import EvaluateRetrievalParams, load_params
from tasks.lib.core.io import atomic_path, run_stage, write_json
from tasks.lib.core.plots import curve_figure
from tasks.lib.core.records import QARecord, qa_sets_line, read_qa
from tasks.lib.core.report import interval_cell, markdown_table
from tasks.lib.core.stats import bootstrap_interval
from tasks.lib.core.tracking import run_name, stage_run
from tasks.lib.retrieval.encoder import encode_precision
from tasks.lib.retrieval.metrics import score_rankings
from tasks.lib.retrieval.retriever import Fusion, Retriever, system_rankings

SYSTEMS = ("bm25", "dense", "hybrid_equal", "hybrid_tuned")


def evaluate_split(
    records: list[QARecord], rankings: dict[str, list[list[str]]], params: EvaluateRetrievalParams
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Per system: metric -> {mean, low, high}; and the recall@k curve rows (k = 1..depth)."""
    curve_metrics = [f"recall@{k}" for k in range(1, params.curve_depth + 1)]
    summary: dict[str, Any] = {}
    curve = [{"k": k} for k in range(1, params.curve_depth + 1)]
    for system, ranked in rankings.items():
        scores = score_rankings(records, ranked, params.metrics)
        summary[system] = {
            metric: bootstrap_interval(
                values, params.bootstrap_resamples, params.confidence, params.seed
            )
            for metric, values in scores.items()
        }
        recall = score_rankings(records, ranked, curve_metrics)
        for row, name in zip(curve, curve_metrics, strict=True):
            row[system] = round(float(recall[name].mean()), 4)
    return summary, curve


def split_table(
    split: str, n: int, summary: dict[str, Any], metrics: list[str], confidence: float
) -> str:
    head = f"{split} ({n} questions; mean [{confidence:.0%} bootstrap interval])\n\n"
    rows = [[metric, *(interval_cell(s[metric]) for s in summary.values())] for metric in metrics]
    return head + markdown_table(["metric", *summary], rows) + "\n"


def write_curve(path: Path, curve: list[dict[str, float]]) -> None:
    columns = list(curve[0])
    rows = [",".join(columns)] + [",".join(str(row[c]) for c in columns) for row in curve]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def main(
    params_file: Path = Path("params.yaml"),
    index: Path | None = None,
    fusion_file: Path | None = None,
    out: Path | None = None,
) -> None:
    params = load_params(params_file)
    evaluation = params.evaluate_retrieval
    tuned_file = fusion_file or params.paths.fusion
    tuned = Fusion.from_file(tuned_file)
    equal = Fusion(evaluation.equal_rrf_k, 0.5, 0.5, params.retrieval.candidates)
    index_dir = index if index is not None else params.paths.index_dir
    with stage_run(run_name("evaluate_retrieval", out), params) as run:
        precision = encode_precision(params)
        retriever = Retriever.load(index_dir, tuned, base=params.project_dir, precision=precision)
        indexed = {doc["id"] for doc in retriever.docs}
        depth = max(
            evaluation.curve_depth, *(int(m.split("@")[1]) for m in evaluation.metrics if "@" in m)
        )

        metrics: dict[str, Any] = {}
        report: dict[str, Any] = {"fusion": {"equal": vars(equal), "tuned": vars(tuned)}}
        tables, curves = [qa_sets_line(params.paths.retrieval_qa_dir, evaluation.splits) + "\n"], {}
        for split in evaluation.splits:
            records = read_qa(params.paths.retrieval_qa_dir / f"{split}.jsonl")
            rankings = system_rankings(
                retriever, [r.question for r in records], depth, equal, tuned
            )
            summary, curves[split] = evaluate_split(records, rankings, evaluation)
            missing = sum(not set(r.doc_ids) & indexed for r in records)
            metrics[split] = {
                s: {m: round(v["mean"], 4) for m, v in ms.items()} for s, ms in summary.items()
            }
            report[split] = {
                "questions": len(records),
                "gold_not_indexed": missing,
                "systems": summary,
            }
            tables.append(
                split_table(split, len(records), summary, evaluation.metrics, evaluation.confidence)
            )
            if missing:
                print(
                    f"evaluate_retrieval: warning: {missing} {split} questions"
                    " have no gold doc in the index"
                )

        out_dir = out if out is not None else params.paths.retrieval_eval_dir
        run.log_metrics(metrics)
        run.set_tags({"precision.encode": precision})
        write_evaluation(out_dir, metrics, report, tables, curves)
        run.log_artifact(out_dir)
        for split, curve in curves.items():
            title = f"Recall@k, {split} split"
            run.log_figure(curve_figure(curve, "k", title, "recall"), f"recall_at_k_{split}.png")
    print(
        f"evaluate_retrieval: tuned fusion rrf_k={tuned.rrf_k:g} dense={tuned.dense_weight:g} "
        f"bm25={tuned.bm25_weight:g}; equal: rrf_k={equal.rrf_k:g}, 0.5/0.5; "
        f"{tuned.candidates} candidates a side; questions embedded in {precision}"
    )
    print("\n".join(tables))
    print(f"evaluate_retrieval: wrote {out_dir}")


def write_evaluation(
    out_dir: Path,
    metrics: dict[str, Any],
    report: dict[str, Any],
    tables: list[str],
    curves: dict[str, Any],
) -> None:
    with atomic_path(out_dir) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text("\n".join(tables), encoding="utf-8")
        for split, curve in curves.items():
            write_curve(tmp / f"recall_at_k_{split}.csv", curve)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--index", type=Path, help="index folder (default: paths.index_dir)")
    parser.add_argument("--fusion", type=Path, help="tuned fusion (default: paths.fusion)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: paths.retrieval_eval_dir)"
    )
    args = parser.parse_args()
    run_stage(lambda: main(args.params, args.index, args.fusion, args.out))
