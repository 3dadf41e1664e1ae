"""Generation evaluation: closed-book, base generator + RAG and tuned generator + RAG.

Two evaluation sets, scored separately because their answer styles differ: (a) the test
questions of `paths.retrieval_qa_dir` (all of them, and the answerable ones: answer in the gold
passage; generated held-out triples for a KB without a QA set), and (b) held-out KB questions
whose docs were never used in training (empty, and skipped, when they are already the test
split). Each question is asked with its own task (`generator_task`). Every system sees the same
prompt format as training (`tasks.lib.generation.generator`), greedy decoding in
`precision.generate`, the same top-k passages. Answers go through the generation cache
(`paths.generation_cache`): after a retraining of the generator alone, the closed-book and
base + RAG answers come from it, and `evaluate` finds the tuned ones there.
`evaluate_generation` is the reusable core (the `evaluate` stage can call it); `main` is the
standalone stage.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.lib.core.answers import answer_in_text
from tasks.lib.core.config import EvaluateGenerationParams, GeneratorParams, load_params
from tasks.lib.core.io import atomic_path, jsonl_lines, run_stage, write_json
from tasks.lib.core.precision import Precision, resolve_precision
from tasks.lib.core.records import qa_split_label, read_docs, read_qa
from tasks.lib.core.report import interval_cell, markdown_table
from tasks.lib.core.stats import paired_intervals
from tasks.lib.core.tracking import stage_run
from tasks.lib.generation.data import generation_items, read_contexts
from tasks.lib.generation.generation_cache import CachedGenerator, GenerationCache
from tasks.lib.generation.generator import Decoding, GenerationItem, item_prompt
from tasks.lib.generation.loader import load_generator
from tasks.lib.generation.metrics import METRICS, score_prediction
from tasks.lib.kb.questions import generator_task


@dataclass(frozen=True)
class GeneratorSystem:
    """A generator folder and whether it is shown the retrieved passages."""

    name: str
    model_dir: Path
    rag: bool


def predict(
    systems: Sequence[GeneratorSystem],
    eval_sets: Mapping[str, Sequence[GenerationItem]],
    generator: GeneratorParams,
    batch_size: int,
    precision: Precision,
    cache: GenerationCache,
) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, float]]]:
    """Predictions[set][system] and seconds per question (a cached answer counts the time it
    took when it was generated); each model is loaded once."""
    predictions: dict[str, dict[str, list[str]]] = {name: {} for name in eval_sets}
    seconds: dict[str, dict[str, float]] = {name: {} for name in eval_sets}
    decoding = Decoding(generator.max_new_tokens, precision)
    for system in systems:
        model, tokenizer = load_generator(system.model_dir)
        answerer = CachedGenerator(model.eval(), tokenizer, cache)
        for set_name, items in eval_sets.items():
            prompts = [
                item_prompt(
                    item,
                    tokenizer,
                    generator.instructions,
                    generator.passage_tokens,
                    generator.top_k,
                    rag=system.rag,
                )
                for item in items
            ]
            answerer.progress = f"evaluate_generation: {system.name} on {set_name}"
            answers, stats = answerer.answers(prompts, batch_size, decoding)
            predictions[set_name][system.name] = answers
            seconds[set_name][system.name] = stats.seconds / max(1, len(items))
            print(
                f"evaluate_generation: {system.name} on {set_name}: {stats.summary()}; "
                f"{seconds[set_name][system.name]:.2f} s/question",
                flush=True,
            )
        del model, answerer
    return predictions, seconds


def score_set(
    items: Sequence[GenerationItem],
    predictions: Mapping[str, Sequence[str]],
    top_k: int,
    params: EvaluateGenerationParams,
) -> dict[str, Any]:
    """Bootstrap mean and interval per system and metric, and for each system minus the one
    before it (tuned_rag - base_rag, base_rag - closed_book). `supported` judges every system
    against the top-k passages the RAG systems saw (for closed-book: chance agreement)."""
    names = list(predictions)
    passages = [[f"{p.title}. {p.text}" for p in item.passages[:top_k]] for item in items]
    per_item = {
        name: [
            score_prediction(pred, item.answers, texts)
            for pred, item, texts in zip(predictions[name], items, passages, strict=True)
        ]
        for name in names
    }
    pairs = [(names[i], names[i - 1]) for i in range(1, len(names))]
    result: dict[str, Any] = {
        "n": len(items),
        "answer_in_passages": sum(
            any(answer_in_text(a, " ".join(texts)) for a in item.answers)
            for item, texts in zip(items, passages, strict=True)
        )
        / max(1, len(items)),
    }
    for metric in METRICS:
        scores = {name: [row[metric] for row in per_item[name]] for name in names}
        intervals = paired_intervals(
            scores, params.bootstrap_resamples, params.confidence, params.seed, pairs
        )
        for system, interval in intervals.items():
            result.setdefault(system, {})[metric] = interval
    return result


def evaluate_generation(
    systems: Sequence[GeneratorSystem],
    eval_sets: Mapping[str, Sequence[GenerationItem]],
    generator: GeneratorParams,
    params: EvaluateGenerationParams,
    precision: Precision,
    cache: GenerationCache,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics per evaluation set (plus its answerable subset when it has one) and one
    prediction row per (set, question) with every system's answer."""
    predictions, seconds = predict(
        systems, eval_sets, generator, params.batch_size, precision, cache
    )
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for set_name, items in eval_sets.items():
        by_system = predictions[set_name]
        metrics[set_name] = score_set(items, by_system, generator.top_k, params)
        metrics[set_name]["seconds_per_question"] = seconds[set_name]
        flags = [item.answerable for item in items]
        if any(flags) and not all(flags):
            keep = [i for i, flag in enumerate(flags) if flag]
            subset = {name: [preds[i] for i in keep] for name, preds in by_system.items()}
            metrics[f"{set_name}_answerable"] = score_set(
                [items[i] for i in keep], subset, generator.top_k, params
            )
        for i, item in enumerate(items):
            rows.append(
                {
                    "set": set_name,
                    "id": item.id,
                    "question": item.question,
                    "answers": list(item.answers),
                    "passages": [p.title for p in item.passages[: generator.top_k]],
                    **{name: by_system[name][i] for name in by_system},
                }
            )
    return metrics, rows


def system_summary(metrics: Mapping[str, Any], set_name: str = "real_test") -> dict[str, Any]:
    """`{system: {metric: mean}}` on one set: the flat shape the promotion gate reads."""
    result = metrics[set_name]
    return {
        system: {metric: values["mean"] for metric, values in result[system].items()}
        for system in result
        if isinstance(result[system], dict)
        and " - " not in system
        and system != "seconds_per_question"
    }


def samples_markdown(
    rows: Sequence[dict[str, Any]],
    eval_sets: Mapping[str, Sequence[GenerationItem]],
    systems: Sequence[str],
    per_set: int,
    seed: int,
) -> str:
    """A few seeded sample predictions per set, with the shortened passages the RAG systems saw."""
    items = {
        (row["set"], row["id"]): item
        for row in rows
        for item in eval_sets[row["set"]]
        if item.id == row["id"]
    }
    lines = ["# Sample generator predictions", ""]
    for set_name in eval_sets:
        set_rows = [row for row in rows if row["set"] == set_name]
        lines += [f"## {set_name}", ""]
        for row in random.Random(seed).sample(set_rows, min(per_set, len(set_rows))):
            lines += [f"**Q:** {row['question']}  ", f"**Gold:** {' | '.join(row['answers'])}  "]
            for system in systems:
                lines.append(f"**{system}:** {row[system]}  ")
            for rank, passage in enumerate(
                items[(set_name, row["id"])].passages[: len(row["passages"])], start=1
            ):
                words = passage.text.split()
                lines.append(
                    f"> [{rank}] *{passage.title}*: {' '.join(words[:40])}"
                    f"{' ...' if len(words) > 40 else ''}  "
                )
            lines.append("")
    return "\n".join(lines)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths, generator = params.paths, params.generator
    docs = {doc.id: doc for doc in read_docs(paths.retrieval_docs)}
    contexts = read_contexts(paths.retrieved_contexts)
    question_files = {
        "real_test": paths.retrieval_qa_dir / "test.jsonl",
        "kb_heldout": paths.kb_questions_dir / "heldout.jsonl",
    }
    question_sets = {name: read_qa(path, allow_empty=True) for name, path in question_files.items()}
    eval_sets = {  # an empty set (kb_heldout when it is the test split) is skipped
        name: generation_items(records, generator_task, contexts, docs, generator.top_k)
        for name, records in question_sets.items()
        if records
    }
    sets_line = (
        f"Question sets: {qa_split_label(paths.retrieval_qa_dir, 'test')}; "
        f"kb_heldout: held-out KB questions ({len(question_sets['kb_heldout'])})"
    )
    base = paths.generator_base_dir
    tuned = paths.generator_model
    systems = [
        GeneratorSystem("closed_book", base, rag=False),
        GeneratorSystem("base_rag", base, rag=True),
        GeneratorSystem("tuned_rag", tuned, rag=True),
    ]
    with stage_run("evaluate_generation", params) as run:
        precision = resolve_precision(params.precision.generate, "generate")
        print(f"evaluate_generation: greedy generation in {precision}", flush=True)
        with GenerationCache(paths.generation_cache) as cache:
            metrics, rows = evaluate_generation(
                systems, eval_sets, generator, params.evaluate_generation, precision, cache
            )
        names = [s.name for s in systems]
        with atomic_path(paths.generation_eval_dir) as out:
            write_json(out / "metrics.json", metrics)
            (out / "predictions.jsonl").write_text(jsonl_lines(rows), encoding="utf-8")
            (out / "samples.md").write_text(
                sets_line
                + "\n\n"
                + samples_markdown(
                    rows,
                    eval_sets,
                    names,
                    params.evaluate_generation.samples,
                    params.evaluate_generation.seed,
                ),
                encoding="utf-8",
            )
        run.log_metrics(metrics)
        run.log_metrics({"generation_cache": {"hits": cache.hits, "misses": cache.misses}})
        run.log_artifact(paths.generation_eval_dir / "samples.md")
    print(sets_line)
    print(metrics_table(metrics, names))


def metrics_table(metrics: Mapping[str, Any], systems: Sequence[str]) -> str:
    """Markdown table: mean [low, high] in percent, per set, system and metric."""
    rows = [
        [f"{set_name} (n={result['n']})", system]
        + [interval_cell(result[system][m], ".1f", scale=100) for m in METRICS]
        for set_name, result in metrics.items()
        for system in [*systems, *(k for k in result if " - " in k)]
    ]
    return markdown_table(["set", "system", *METRICS], rows)


if __name__ == "__main__":
    run_stage(main)
