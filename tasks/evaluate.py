"""Stage `evaluate`: every system on the same test questions, in one table the gate reads.

- `tuned_rag`: the candidate bundle (`bundle`'s folder) run end to end through its pyfunc
  `predict`, exactly as the registry will serve it;
- `champion`: the registry's champion bundle, re-scored on these very questions (when there is
  one), so the gate never compares numbers from two different test sets or two KB states;
- `closed_book` and `base_rag` (the untuned generator, no passages / the same passages) from
  `evaluate_generation`, and the retrieval-only baselines (`bm25`, `dense_base`,
  `hybrid_base`, `dense_tuned`) from `compare_retrievers`.

Outputs in `paths.evaluate_dir`: metrics.json (`{system: {metric: mean}}`, MLflow-safe names),
predictions.jsonl (the bundles' answers with their sources) and report.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import atomic_path, jsonl_lines, read_text, run_stage, write_json
from tasks.lib.core.plots import bars_figure
from tasks.lib.core.records import Doc, QARecord, read_docs, read_qa
from tasks.lib.core.report import markdown_table
from tasks.lib.core.tracking import metric_key, stage_run
from tasks.lib.generation.metrics import score_prediction
from tasks.lib.retrieval.metrics import score_rankings
from tasks.lib.serving.registry import CHAMPION, aliases, registry_client

CANDIDATE = "tuned_rag"
RETRIEVAL_BASELINES = ("bm25", "dense_base", "hybrid_base", "dense_tuned", "hybrid_tuned")


def score_outputs(
    records: Sequence[QARecord],
    outputs: Sequence[Mapping[str, Any]],
    docs: Mapping[str, Doc],
    retrieval_metrics: Sequence[str],
) -> dict[str, float]:
    """Mean answer metrics (against the gold answers, `supported` by the cited passages) and
    retrieval metrics of the ranking the bundle returned."""
    answer_rows = [
        score_prediction(
            output["answer"],
            record.answers,
            [f"{docs[i].title}. {docs[i].text}" for i in output["sources"] if i in docs],
        )
        for record, output in zip(records, outputs, strict=True)
    ]
    means = {name: float(np.mean([row[name] for row in answer_rows])) for name in answer_rows[0]}
    ranked = [list(output["retrieved"]) for output in outputs]
    for name, scores in score_rankings(records, ranked, retrieval_metrics).items():
        if name in retrieval_metrics:
            means[metric_key(name)] = float(scores.mean())
    return means


def baseline_systems(
    generation: Mapping[str, Any], retrieval: Mapping[str, Any], split: str
) -> dict[str, dict[str, float]]:
    """evaluate_generation's means on the real test set and compare_retrievers' on `split`."""
    systems = {
        system: {
            metric: values["mean"] for metric, values in generation["real_test"][system].items()
        }
        for system in ("closed_book", "base_rag")
    }
    for system in RETRIEVAL_BASELINES:
        if system in retrieval.get(split, {}):
            systems[system] = {metric_key(m): v for m, v in retrieval[split][system].items()}
    return systems


def champion_bundle(params: Params, model: str) -> tuple[str, Any] | None:
    """(version, loaded pyfunc) of the registry's champion, or None when there is none yet."""
    version = aliases(registry_client(params), model).get(CHAMPION)
    if version is None:
        return None
    return version, mlflow.pyfunc.load_model(f"models:/{model}@{CHAMPION}")


def report_markdown(systems: Mapping[str, Mapping[str, float]], n: int, split: str) -> str:
    metrics = sorted({m for values in systems.values() for m in values})
    rows = [
        [system, *(f"{100 * values[m]:.1f}" if m in values else "" for m in metrics)]
        for system, values in systems.items()
    ]
    table = markdown_table(["system", *metrics], rows)
    return f"# evaluate: {n} real {split} questions\n\n{table}\n"


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths, settings = params.paths, params.evaluate
    docs = {doc.id: doc for doc in read_docs(paths.retrieval_docs)}
    records = read_qa(paths.retrieval_qa_dir / f"{settings.split}.jsonl")
    questions = [r.question for r in records]

    generation = json.loads(read_text(paths.generation_metrics))
    retrieval = json.loads(read_text(paths.retriever_comparison_metrics))
    with stage_run("evaluate", params) as run:
        bundles: dict[str, Any] = {CANDIDATE: mlflow.pyfunc.load_model(str(paths.bundle_dir))}
        champion = None
        if settings.rescore_champion and params.tracking.enabled:
            champion = champion_bundle(params, params.register_.judged)
            if champion is not None:
                bundles[CHAMPION] = champion[1]
        systems: dict[str, dict[str, float]] = {}
        predictions: list[dict[str, Any]] = []
        for name, bundle in bundles.items():
            outputs = bundle.predict(questions)
            systems[name] = score_outputs(records, outputs, docs, settings.retrieval_metrics)
            predictions += [
                {"system": name, "id": r.id, "answers": list(r.answers), **o}
                for r, o in zip(records, outputs, strict=True)
            ]
            print(
                f"evaluate: {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in systems[name].items())
            )
        systems |= baseline_systems(generation, retrieval, settings.split)
        run.log_metrics(systems)
        if champion is not None:
            run.set_tags({"champion_version": champion[0]})
        out_dir = paths.evaluate_dir
        with atomic_path(out_dir) as tmp:
            write_json(tmp / "metrics.json", systems)
            (tmp / "predictions.jsonl").write_text(jsonl_lines(predictions), encoding="utf-8")
            (tmp / "report.md").write_text(
                report_markdown(systems, len(records), settings.split), encoding="utf-8"
            )
        run.log_artifact(out_dir / "report.md")
        shown = [
            "answer_f1",
            "exact_match",
            "rouge_l",
            *map(metric_key, settings.retrieval_metrics),
        ]
        figure = bars_figure(systems, shown, f"{len(records)} real {settings.split} questions")
        run.log_figure(figure, "systems.png")
    print(report_markdown(systems, len(records), settings.split))


if __name__ == "__main__":
    run_stage(main)
