"""Stage `kb_questions`: questions made from the KB itself, for generator training and evaluation.

The real answerable train questions number a few dozen, too few to teach a generator to use
passages. Every KB doc with a human-written short description gives a free pair: "What is
<title>?" -> "<description>". The docs are split once, seeded, into train, dev and held-out
sets; held-out docs are never used to build training or dev questions, and docs cited by real
QA records are left out of all three so neither evaluation set shares a gold doc with training.
The outputs are canonical QA records (group = doc id), so the retrieval side can fetch their
passages like any other question's.
"""

from __future__ import annotations

import random
from pathlib import Path

from tasks.lib.core.config import KbQuestionsParams, load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_jsonl
from tasks.lib.core.records import KB_SPLITS, Doc, QARecord, read_docs, read_qa_splits
from tasks.lib.core.tracking import stage_run
from tasks.lib.kb.questions import description_question, eligible_docs


def make_kb_questions(
    docs: list[Doc], params: KbQuestionsParams, excluded: set[str]
) -> dict[str, list[QARecord]]:
    """Seeded, disjoint train / dev / held-out description questions over the eligible docs."""
    pool = sorted(eligible_docs(docs, params, excluded), key=lambda d: d.id)
    wanted = params.n_train + params.n_dev + params.n_heldout
    if len(pool) < wanted:
        raise InputError(
            f"kb_questions: {len(pool)} docs have a usable description, {wanted} requested "
            f"(n_train + n_dev + n_heldout)"
        )
    random.Random(params.seed).shuffle(pool)
    heldout = pool[: params.n_heldout]
    dev = pool[params.n_heldout : params.n_heldout + params.n_dev]
    train = pool[params.n_heldout + params.n_dev : wanted]
    return {
        name: [description_question(doc, params.question_template) for doc in split]
        for name, split in zip(KB_SPLITS, (train, dev, heldout), strict=True)
    }


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    docs = read_docs(params.paths.retrieval_docs)
    real_gold = {
        d
        for records in read_qa_splits(params.paths.retrieval_qa_dir).values()
        for r in records
        for d in r.doc_ids
    }
    splits = make_kb_questions(docs, params.kb_questions, real_gold)
    with atomic_path(params.paths.kb_questions_dir) as out:
        for name, records in splits.items():
            write_jsonl(out / f"{name}.jsonl", records)
    with stage_run("kb_questions", params) as run:
        run.log_metrics({f"{name}_questions": len(records) for name, records in splits.items()})
    for name, records in splits.items():
        in_text = sum(bool(r.answerable) for r in records)
        print(
            f"kb_questions: {name:7s} {len(records):4d} questions "
            f"({in_text} with the description verbatim in the doc)"
        )


if __name__ == "__main__":
    run_stage(main)
