"""Stage `compare_retrievers`: the base and the fine-tuned encoder side by side on held-out QA.

Five systems: BM25, dense with the base encoder, dense with the tuned one, and hybrid (weighted
RRF) over each dense side, each hybrid with the weights `tune_retrieval` chose on dev for that
index. They are scored on the whole split and on its unseen-doc subset: questions none of whose
gold docs was ever a training positive (`paths.retriever_positives`), which is where
a tuned encoder has to generalize rather than recall.

Every system gets a bootstrap interval, and each comparison (tuned - base, tuned hybrid - tuned
dense, ...) a paired one: the same resampled questions for both systems, so the interval is
about the difference, not two overlapping spreads. Outputs in `paths.retriever_comparison_dir`:
  metrics.json   {subset: {system: {metric: mean}}}                (dvc metrics show)
  report.json    the same with intervals, the paired differences and question counts
  report.md      the tables, as printed

    python -m tasks.compare_retrievers [--tuned-index DIR]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.lib.core.config import CompareRetrieversParams, load_params
from tasks.lib.core.io import atomic_path, read_text, run_stage, write_json
from tasks.lib.core.records import QARecord, qa_sets_line, read_qa
from tasks.lib.core.report import interval_cell, markdown_table
from tasks.lib.core.stats import bootstrap_interval
from tasks.lib.core.tracking import stage_run
from tasks.lib.retrieval.encoder import encode_precision
from tasks.lib.retrieval.metrics import per_query_scores, qrels_from, run_from
from tasks.lib.retrieval.retriever import Fusion, Retriever, system_rankings

SYSTEMS = ("bm25", "dense_base", "dense_tuned", "hybrid_base", "hybrid_tuned")
# (system, reference): the paired intervals reported, the first one is the headline
DIFFERENCES = (
    ("dense_tuned", "dense_base"),
    ("hybrid_tuned", "hybrid_base"),
    ("hybrid_tuned", "dense_tuned"),
    ("dense_base", "bm25"),
)


def unseen_doc_subset(records: Sequence[QARecord], positives: set[str]) -> list[QARecord]:
    """Questions none of whose gold docs was a training positive."""
    return [r for r in records if not set(r.doc_ids) & positives]


def compare_rankings(
    base: Retriever, tuned: Retriever, questions: list[str], depth: int
) -> dict[str, list[list[str]]]:
    """Ranked doc ids of the five systems; each retriever's hybrid uses its own fusion."""
    of_base = system_rankings(base, questions, depth, base.fusion, base.fusion)
    of_tuned = system_rankings(tuned, questions, depth, tuned.fusion, tuned.fusion)
    return {
        "bm25": of_base["bm25"],
        "dense_base": of_base["dense"],
        "dense_tuned": of_tuned["dense"],
        "hybrid_base": of_base["hybrid_tuned"],
        "hybrid_tuned": of_tuned["hybrid_tuned"],
    }


def compare_subset(
    records: Sequence[QARecord],
    rankings: dict[str, list[list[str]]],
    params: CompareRetrieversParams,
) -> dict[str, Any]:
    """Per system and metric: mean and interval; per pair in DIFFERENCES: the paired interval.
    `rankings[system][i]` is the ranking for `records[i]`."""
    if not records:
        return {"questions": 0, "systems": {}, "differences": {}}
    qrels = qrels_from(records)
    scores = {  # one score per question, in the same question order for every system
        system: per_query_scores(qrels, run_from(records, ranked), params.metrics)
        for system, ranked in rankings.items()
    }
    bootstrap = (params.bootstrap_resamples, params.confidence, params.seed)
    differences = {
        f"{system} - {reference}": {
            metric: bootstrap_interval(
                scores[system][metric] - scores[reference][metric], *bootstrap
            )
            for metric in params.metrics
        }
        for system, reference in DIFFERENCES
    }
    return {
        "questions": len(records),
        "systems": {
            system: {
                metric: bootstrap_interval(values, *bootstrap)
                for metric, values in by_metric.items()
            }
            for system, by_metric in scores.items()
        },
        "differences": differences,
    }


def markdown(name: str, result: dict[str, Any], metrics: list[str], confidence: float) -> str:
    """One table of systems and one of paired differences."""
    head = f"### {name} ({result['questions']} questions; mean [{confidence:.0%} bootstrap])"
    systems = markdown_table(
        ["system", *metrics],
        [
            [system, *(interval_cell(v) for v in by_metric.values())]
            for system, by_metric in result["systems"].items()
        ],
    )
    differences = markdown_table(
        ["paired difference", *metrics],
        [
            [pair, *(interval_cell(v, "+.3f") for v in by_metric.values())]
            for pair, by_metric in result["differences"].items()
        ],
    )
    return f"{head}\n\n{systems}\n\n{differences}\n"


def main(params_file: Path = Path("params.yaml"), tuned_index: Path | None = None) -> None:
    params = load_params(params_file)
    compare = params.compare_retrievers
    paths = params.paths
    with stage_run("compare_retrievers", params) as run:
        precision = encode_precision(params)
        base = Retriever.load(
            paths.index_dir,
            Fusion.from_file(paths.fusion),
            base=params.project_dir,
            precision=precision,
        )
        tuned = Retriever.load(
            tuned_index or paths.index_tuned_dir,
            Fusion.from_file(paths.fusion_tuned),
            base=params.project_dir,
            precision=precision,
        )
        positives = set(json.loads(read_text(paths.retriever_positives)))
        records = read_qa(paths.retrieval_qa_dir / f"{compare.split}.jsonl")
        depth = max(int(m.split("@")[1]) for m in compare.metrics if "@" in m)
        rankings = compare_rankings(base, tuned, [r.question for r in records], depth)

        unseen = unseen_doc_subset(records, positives)
        subsets = {compare.split: records, f"{compare.split}_unseen_docs": unseen}
        index_of = {r.id: i for i, r in enumerate(records)}
        results = {}
        for name, subset in subsets.items():
            picked = {s: [ranked[index_of[r.id]] for r in subset] for s, ranked in rankings.items()}
            results[name] = compare_subset(subset, picked, compare)
        report = {
            "fusion": {"base": vars(base.fusion), "tuned": vars(tuned.fusion)},
            "encoders": {"base": base.manifest["encoder"], "tuned": tuned.manifest["encoder"]},
            **results,
        }
        metrics = {
            name: {
                system: {metric: round(v["mean"], 4) for metric, v in by_metric.items()}
                for system, by_metric in result["systems"].items()
            }
            for name, result in results.items()
        }
        tables = [qa_sets_line(paths.retrieval_qa_dir, [compare.split]) + "\n"]
        tables += [markdown(n, r, compare.metrics, compare.confidence) for n, r in results.items()]
        with atomic_path(paths.retriever_comparison_dir) as out:
            out.mkdir(parents=True)
            write_json(out / "metrics.json", metrics)
            write_json(out / "report.json", report)
            (out / "report.md").write_text("\n".join(tables), encoding="utf-8")
        run.log_metrics(metrics)
        run.set_tags({"precision.encode": precision})
        run.log_artifact(paths.retriever_comparison_dir / "report.md")
    print("\n".join(tables))
    print(f"compare_retrievers: questions embedded in {precision}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tuned-index", type=Path, help="default: paths.index_tuned_dir")
    args = parser.parse_args()
    run_stage(lambda: main(args.params, args.tuned_index))
