"""Stage `generator_training_set`: everything `finetune_generator` learns from, as text.

Training mix: the real answerable train questions (all of them with
`finetune_generator.real_answerable_only` false) plus the KB's own questions (stage
`kb_questions`: "What is <title>?" -> description, task `describe`, or generated short-answer
triples, task `qa`: `generator_task` reads it off the record), each with the title and text of its
top-k retrieved passages; with `gold_passage: insert`, a gold doc the retriever missed takes the
last slot. Dev mirrors evaluation (passages as retrieved, never a planted gold doc) and keeps to
answers a model could read off its passages: the loss on unguessable numbers is noise.

Outputs in `paths.generator_training_set`: train.jsonl and dev.jsonl, one item a line in a
fixed order. The training stage reads nothing else of the KB, so a KB change that leaves the
questions' passages alone (a doc no question retrieves) leaves these bytes, and the generator,
alone.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage
from tasks.lib.core.records import QARecord, read_docs, read_qa
from tasks.lib.core.tracking import stage_run
from tasks.lib.generation.data import (
    TRAINING_SPLITS,
    generation_items,
    read_contexts,
    write_items,
)
from tasks.lib.generation.generator import GenerationItem
from tasks.lib.kb.questions import generator_task


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths, top_k, tune = params.paths, params.generator.top_k, params.finetune_generator
    kb_dir = paths.kb_questions_dir
    docs = {doc.id: doc for doc in read_docs(paths.retrieval_docs)}
    contexts = read_contexts(paths.retrieved_contexts)

    def real(split: str, answerable_only: bool) -> list[QARecord]:
        records = read_qa(paths.retrieval_qa_dir / f"{split}.jsonl", allow_empty=True)
        return [r for r in records if r.answerable or not answerable_only]

    def items(records: list[QARecord], gold_passage: str) -> list[GenerationItem]:
        return generation_items(records, generator_task, contexts, docs, top_k, gold_passage)

    train = items(real("train", tune.real_answerable_only), tune.gold_passage)
    train += items(read_qa(kb_dir / "train.jsonl", allow_empty=True), tune.gold_passage)
    dev = items(real("dev", answerable_only=True), "retrieved")
    dev += items(read_qa(kb_dir / "dev.jsonl", allow_empty=True), "retrieved")
    if not train or not dev:
        raise InputError(
            f"generator_training_set: {len(train)} train and {len(dev)} dev examples; training "
            "needs at least one of each (answerable real questions or kb_questions n_train/n_dev)"
        )

    splits = dict(zip(TRAINING_SPLITS, (train, dev), strict=True))
    with (
        stage_run("generator_training_set", params) as run,
        atomic_path(paths.generator_training_set) as out,
    ):
        for name, split in splits.items():
            write_items(out / f"{name}.jsonl", split)
        counts = {name: dict(Counter(i.task for i in split)) for name, split in splits.items()}
        run.log_metrics(counts)
    print(f"generator_training_set: items by task {counts} -> {paths.generator_training_set}")


if __name__ == "__main__":
    run_stage(main)
