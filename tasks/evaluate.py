"""Stage `evaluate`: every system on the same test questions, question by question, for the gate.

- `tuned_rag`: the candidate bundle (`--bundle`, default `bundle`'s folder) run end to end
  through its pyfunc `predict`, exactly as the registry will serve it;
- `champion`: the registry's champion bundle, re-scored on these very questions (when there is
  one), so the gate never compares numbers from two different test sets or two KB states;
- both answer through the generation cache (`paths.generation_cache`): an answer to the same
  prompt by the same generator and decoding is not generated again (the candidate's usually
  comes from `evaluate_generation`'s tuned_rag, which builds the same prompts);
- `closed_book` and `base_rag` (the untuned generator, no passages / the same passages): their
  answers from `evaluate_generation`, scored here per question; the retrieval-only baselines
  (`bm25`, `dense_base`, `hybrid_base`, `dense_tuned`) from `compare_retrievers`, as means.
  Baselines judge the retrained bundle only: a refreshed one (`--bundle`) faces the champion.

`--change-questions FILE` (canonical QA records about the docs an index refresh added or
modified; may be empty) adds a second question set, `change_set`, on which the candidate and
the champion are scored too. `--deleted-docs FILE` (a JSON list of doc ids) fails the stage
when the candidate retrieves or cites one of them: no answer may rest on a deleted doc.

Outputs in `--out` (default `paths.evaluate_dir`): metrics.json (`{system: {metric: mean}}` on
the test set, MLflow-safe names, plus `change_set: {n, system: {metric: mean}}` when there is
one), the per-question scores file the gate reads (`tasks.lib.serving.scores`),
predictions.jsonl (the bundles' answers with their sources) and report.md.

    python -m tasks.evaluate [--bundle DIR] [--out DIR] [--change-questions FILE]
                             [--deleted-docs FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictStr

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import (
    InputError,
    atomic_path,
    jsonl_lines,
    jsonl_records,
    read_text,
    run_stage,
    write_json,
)
from tasks.lib.core.plots import bars_figure
from tasks.lib.core.records import Doc, QARecord, qa_split_label, read_docs, read_qa
from tasks.lib.core.report import markdown_table
from tasks.lib.core.skipped import skipped_reason, write_skipped_folder
from tasks.lib.core.tracking import file_digest, metric_key, run_name, stage_run
from tasks.lib.generation.generation_cache import GenerationCache
from tasks.lib.generation.metrics import score_prediction
from tasks.lib.retrieval.metrics import score_rankings
from tasks.lib.serving.bundle import (
    load_bundle,
    load_registered_bundle,
    show_answer_progress,
    use_generation_cache,
)
from tasks.lib.serving.registry import CHAMPION, aliases, registry_client
from tasks.lib.serving.scores import (
    CHANGE_SET,
    TEST_SET,
    SystemScores,
    evaluation_files,
    judged_scores,
    score_rows,
)

CANDIDATE = "tuned_rag"
GENERATION_BASELINES = ("closed_book", "base_rag")
GENERATION_TEST_SET = "real_test"  # evaluate_generation's name for the real test questions
RETRIEVAL_BASELINES = ("bm25", "dense_base", "hybrid_base", "dense_tuned", "hybrid_tuned")


class GenerationPrediction(BaseModel):
    """A row of evaluate_generation's predictions: each system's answer is an extra field."""

    model_config = ConfigDict(extra="allow")

    set: StrictStr
    id: StrictStr
    answers: list[StrictStr]


def question_scores(
    records: Sequence[QARecord],
    outputs: Sequence[Mapping[str, Any]],
    docs: Mapping[str, Doc],
    retrieval_metrics: Sequence[str],
) -> list[dict[str, float]]:
    """Per question, in `records` order: answer metrics (against the gold answers, `supported`
    by the cited passages) when it has answers, and retrieval metrics of the ranking the bundle
    returned. A question written from a doc (doc-to-query) has no reference answer."""
    rows = [
        score_prediction(
            output["answer"],
            record.answers,
            [f"{docs[i].title}. {docs[i].text}" for i in output["sources"] if i in docs],
        )
        if record.answers
        else {}
        for record, output in zip(records, outputs, strict=True)
    ]
    ranked = [list(output["retrieved"]) for output in outputs]
    by_metric = score_rankings(records, ranked, retrieval_metrics)
    # ranx scores questions in sorted id order.
    position = {qid: i for i, qid in enumerate(sorted(r.id for r in records))}
    for row, record in zip(rows, records, strict=True):
        for name in retrieval_metrics:
            row[metric_key(name)] = float(by_metric[name][position[record.id]])
    return rows


def means(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over the questions that have it."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: float(np.mean([row[name] for row in rows if name in row])) for name in names}


def shared_metrics(rows: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """The rows cut to the metrics every question has: what the gate pairs question by question."""
    shared = set.intersection(*(set(row) for row in rows))
    return [{name: value for name, value in row.items() if name in shared} for row in rows]


def baseline_scores(
    predictions: Path, records: Sequence[QARecord]
) -> dict[str, list[dict[str, float]]]:
    """closed_book's and base_rag's answers to `records` (from evaluate_generation's
    predictions of the real test set), scored per question in `records` order.

    `supported` is left out: the predictions name their passages by title only, and the gate
    never holds a baseline to it."""
    by_id = {
        row.id: row
        for _, row in jsonl_records(predictions, GenerationPrediction)
        if row.set == GENERATION_TEST_SET
    }
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise InputError(
            f"{predictions}: no {GENERATION_TEST_SET} answers for {len(missing)} of the "
            f"{len(records)} questions (e.g. {missing[:3]}): rerun evaluate_generation"
        )
    scores: dict[str, list[dict[str, float]]] = {}
    for system in GENERATION_BASELINES:
        answers = [(by_id[r.id].model_extra or {}).get(system) for r in records]
        if any(not isinstance(a, str) for a in answers):
            raise InputError(f"{predictions}: some {GENERATION_TEST_SET} rows lack {system!r}")
        scores[system] = [
            {k: v for k, v in score_prediction(a, r.answers, ()).items() if k != "supported"}
            for a, r in zip(answers, records, strict=True)
        ]
    return scores


def baseline_systems(
    generation: Mapping[str, Any], retrieval: Mapping[str, Any], split: str
) -> dict[str, dict[str, float]]:
    """evaluate_generation's means on the real test set and compare_retrievers' on `split`."""
    systems = {
        system: {
            metric: values["mean"]
            for metric, values in generation[GENERATION_TEST_SET][system].items()
        }
        for system in GENERATION_BASELINES
    }
    for system in RETRIEVAL_BASELINES:
        if system in retrieval.get(split, {}):
            systems[system] = {metric_key(m): v for m, v in retrieval[split][system].items()}
    return systems


def read_change_questions(path: Path) -> list[QARecord]:
    """The change set's questions; an empty file is an empty set (a KB change that only
    deleted docs asks nothing new)."""
    return read_qa(path) if read_text(path).strip() else []


def read_deleted_docs(path: Path) -> set[str]:
    try:
        ids = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON: {err.msg}") from err
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InputError(f"{path}: expected a JSON list of doc ids")
    return set(ids)


def check_no_deleted(
    records: Sequence[QARecord], outputs: Sequence[Mapping[str, Any]], deleted: set[str]
) -> None:
    """No answer may cite, nor its ranking hold, a doc the KB change deleted."""
    for record, output in zip(records, outputs, strict=True):
        found = sorted((set(output["sources"]) | set(output["retrieved"])) & deleted)
        if found:
            raise InputError(
                f"evaluate: question {record.id!r} ({record.question!r}) is answered from "
                f"deleted doc(s) {found}: the bundle's index still holds them; rebuild it "
                "from the current KB"
            )


def champion_bundle(params: Params, model: str, dst: Path) -> tuple[str, Any] | None:
    """(version, loaded pyfunc) of the registry's champion, downloaded under `dst` and checked
    against its registered manifest, or None when there is none yet."""
    client = registry_client(params)
    version = aliases(client, model).get(CHAMPION)
    if version is None:
        return None
    return version, load_registered_bundle(client, model, version, dst)


def system_table(systems: Mapping[str, Mapping[str, float]]) -> str:
    metrics = sorted({m for values in systems.values() for m in values})
    rows = [
        [system, *(f"{100 * values[m]:.1f}" if m in values else "" for m in metrics)]
        for system, values in systems.items()
    ]
    return markdown_table(["system", *metrics], rows)


def report_markdown(
    systems: Mapping[str, Mapping[str, float]],
    split_label: str,
    change: Mapping[str, Mapping[str, float]] | None,
    n_change: int,
) -> str:
    """`split_label` says which questions were scored (`qa_split_label`)."""
    text = f"# evaluate: {split_label}\n\n{system_table(systems)}\n"
    if change is not None:
        body = system_table(change) if change else "(no added or modified docs)"
        text += f"\n## change set: {n_change} questions about added or modified docs\n\n{body}\n"
    return text


def main(
    params_file: Path = Path("params.yaml"),
    bundle: Path | None = None,
    out: Path | None = None,
    change_questions: Path | None = None,
    deleted_docs: Path | None = None,
) -> None:
    params = load_params(params_file)
    paths, settings = params.paths, params.evaluate
    out_dir = out if out is not None else paths.evaluate_dir
    skipped = skipped_reason(bundle) if bundle is not None else None
    if skipped is not None:  # the refresh path had nothing to refresh: nothing to judge
        write_skipped_folder(out_dir, skipped)
        print(f"evaluate: nothing to judge ({skipped})")
        return
    metrics_file, scores_file = evaluation_files(paths, out_dir)
    docs = {doc.id: doc for doc in read_docs(paths.retrieval_docs)}
    question_sets = {TEST_SET: read_qa(paths.retrieval_qa_dir / f"{settings.split}.jsonl")}
    if change_questions is not None:
        question_sets[CHANGE_SET] = read_change_questions(change_questions)
    deleted = read_deleted_docs(deleted_docs) if deleted_docs is not None else set()
    records = question_sets[TEST_SET]
    # The baselines judge a retrained candidate; a refreshed bundle (`--bundle`) is judged
    # against the champion alone, so the refresh path never waits on a training stage.
    judges_retrain = bundle is None
    if judges_retrain:
        generation = json.loads(read_text(paths.generation_metrics))
        retrieval = json.loads(read_text(paths.retriever_comparison_metrics))
        baselines = baseline_scores(paths.generation_predictions, records)
    else:
        baselines = {}

    with (
        stage_run(run_name("evaluate", out), params) as run,
        tempfile.TemporaryDirectory(prefix="ragloop-evaluate.") as downloads,
        GenerationCache(paths.generation_cache) as cache,
    ):
        bundle_dir = bundle if bundle is not None else paths.bundle_dir
        bundles: dict[str, tuple[Any, str | None]] = {CANDIDATE: (load_bundle(bundle_dir), None)}
        on_record: SystemScores | None = None
        if settings.rescore_champion and params.tracking.enabled:
            champion = champion_bundle(params, params.register_.judged, Path(downloads))
            if champion is not None:
                bundles[CHAMPION] = (champion[1], champion[0])
                run.set_tags({"champion_version": champion[0]})
                # The champion answers the test questions as it did when it was judged: its
                # scores on record stand for a re-run, when they are of this very split.
                split_digest = file_digest(paths.retrieval_qa_dir / f"{settings.split}.jsonl")
                client = registry_client(params)
                judged = judged_scores(
                    client, params.register_.judged, champion[0], split_digest, params
                )
                if judged is not None:
                    on_record = judged.aligned_to([r.id for r in records], "champion")
        for loaded, _ in bundles.values():
            use_generation_cache(loaded, cache)
        means_by_set: dict[str, dict[str, dict[str, float]]] = {name: {} for name in question_sets}
        rows: list[dict[str, Any]] = []
        predictions: list[dict[str, Any]] = []
        for name, (model, version) in bundles.items():
            for set_name, set_records in question_sets.items():
                if not set_records:
                    continue
                ids = [r.id for r in set_records]
                if name == CHAMPION and set_name == TEST_SET and on_record is not None:
                    recorded = [
                        {m: float(v[i]) for m, v in on_record.metrics.items()}
                        for i in range(len(ids))
                    ]
                    means_by_set[set_name][name] = means(recorded)
                    rows += score_rows(name, set_name, ids, recorded, version)
                    print(f"evaluate: {name} v{version} on {set_name}: its scores on record")
                    continue
                hits = cache.hits
                show_answer_progress(model, f"evaluate: {name} on {set_name}")
                outputs = model.predict([r.question for r in set_records])
                print(
                    f"evaluate: {name} on {set_name}: {len(outputs)} answers, "
                    f"{cache.hits - hits} from the cache",
                    flush=True,
                )
                if name == CANDIDATE:
                    check_no_deleted(set_records, outputs, deleted)
                scores = question_scores(set_records, outputs, docs, settings.retrieval_metrics)
                means_by_set[set_name][name] = means(scores)
                rows += score_rows(name, set_name, ids, shared_metrics(scores), version)
                predictions += [
                    {"system": name, "set": set_name, "id": r.id, "answers": list(r.answers), **o}
                    for r, o in zip(set_records, outputs, strict=True)
                ]
                shown = ", ".join(f"{k} {v:.3f}" for k, v in means_by_set[set_name][name].items())
                print(f"evaluate: {name} on {set_name}: {shown}")
        for name, scores in baselines.items():
            rows += score_rows(name, TEST_SET, [r.id for r in records], scores)
        systems = means_by_set[TEST_SET]
        if judges_retrain:
            systems |= baseline_systems(generation, retrieval, settings.split)
        report: dict[str, Any] = dict(systems)
        change = means_by_set.get(CHANGE_SET)
        n_change = len(question_sets.get(CHANGE_SET, []))
        if change is not None:
            report[CHANGE_SET] = {"n": n_change, **change}
        run.log_metrics(report)
        run.log_metrics({"generation_cache": {"hits": cache.hits, "misses": cache.misses}})
        split_label = qa_split_label(paths.retrieval_qa_dir, settings.split)
        markdown = report_markdown(systems, split_label, change, n_change)
        with atomic_path(out_dir) as tmp:
            write_json(tmp / metrics_file.relative_to(out_dir), report)
            (tmp / scores_file.relative_to(out_dir)).write_text(jsonl_lines(rows), "utf-8")
            (tmp / "predictions.jsonl").write_text(jsonl_lines(predictions), encoding="utf-8")
            (tmp / "report.md").write_text(markdown, encoding="utf-8")
        run.log_artifact(out_dir / "report.md")
        shown = [
            "answer_f1",
            "exact_match",
            "rouge_l",
            *map(metric_key, settings.retrieval_metrics),
        ]
        figure = bars_figure(systems, shown, split_label)
        run.log_figure(figure, "systems.png")
    print(markdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--bundle", type=Path, help="bundle to judge (default: paths.bundle_dir)")
    parser.add_argument("--out", type=Path, help="output folder (default: paths.evaluate_dir)")
    parser.add_argument(
        "--change-questions", type=Path, help="QA jsonl about added or modified docs"
    )
    parser.add_argument("--deleted-docs", type=Path, help="JSON list of deleted doc ids")
    args = parser.parse_args()
    run_stage(
        lambda: main(args.params, args.bundle, args.out, args.change_questions, args.deleted_docs)
    )
