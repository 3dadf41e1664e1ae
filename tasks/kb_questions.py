"""Stage `kb_questions`: questions made from the KB itself, for generator training and evaluation,
and the QA splits every later stage reads.

The real answerable train questions number a few dozen, too few to teach a generator to use
passages, and a user's KB may come with no QA set at all. Two ways to get more from the KB
(`kb_questions.source`; `auto` picks description when enough docs have one):
- description: every doc with a human-written short description gives a free pair,
  "What is <title>?" -> "<description>" (the packaged Wikipedia KB);
- generated: the base generator writes a question about a sampled doc and answers it from the
  doc, kept when the answer is a short span of the passage and the question finds its doc
  again (`tasks.lib.kb.generated`).
The questions are split once, seeded, by doc into train, dev and held-out sets; held-out docs
are never used to build training or dev questions, and docs cited by real QA records are left
out of all three so neither evaluation set shares a gold doc with training.

The QA splits (`paths.retrieval_qa_dir`) are dedup's real splits, copied byte for byte, when the
KB has a QA set. Without one (all real splits empty) train stays empty, dev is the KB dev set
and test the KB held-out set, and the KB's own dev and held-out files are left empty, so no
question is evaluated twice. `source.json` there says which kind each split holds.

Feedback on served answers (`paths.feedback_export`, from the feedback_export stage) joins the
train split only, after its other records: a question already in train, or in any split that
is evaluated (QA dev and test, the KB dev and held-out sets), is dropped, so feedback never
leaks into an evaluation. Without feedback (no export file, or nothing left to add) every
output is what it was without this step, byte for byte.

Outputs in `paths.kb_questions_dir`: {train,dev,heldout}.jsonl, rejected.jsonl (generated
triples dropped, with the reason), metrics.json, and the QA splits folder.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tasks.lib.core.config import KbQuestionsParams, Params, PathsParams, load_params
from tasks.lib.core.io import (
    InputError,
    atomic_path,
    jsonl_lines,
    run_stage,
    write_json,
    write_jsonl,
)
from tasks.lib.core.precision import resolve_precision
from tasks.lib.core.records import (
    KB_SPLITS,
    SPLITS,
    Doc,
    QARecord,
    QuestionKind,
    normalize_question,
    read_docs,
    read_qa,
    read_qa_splits,
    write_qa_sources,
)
from tasks.lib.core.tracking import stage_run
from tasks.lib.generation.doc_queries import (
    generate_questions,
    load_base_generator,
    sample_docs,
)
from tasks.lib.generation.generation_cache import GenerationCache
from tasks.lib.kb.generated import answer_questions, generated_triples, split_by_doc
from tasks.lib.kb.questions import description_question, eligible_docs
from tasks.lib.retrieval.encoder import encode_precision
from tasks.lib.retrieval.retriever import Fusion, Retriever, round_trip_ranks


def make_kb_questions(
    docs: list[Doc], params: KbQuestionsParams, excluded: set[str]
) -> dict[str, list[QARecord]]:
    """Seeded, disjoint train / dev / held-out description questions over the eligible docs."""
    pool = sorted(eligible_docs(docs, params, excluded), key=lambda d: d.id)
    wanted = params.n_train + params.n_dev + params.n_heldout
    if len(pool) < wanted:
        raise InputError(
            f"kb_questions: {len(pool)} docs have a usable description, {wanted} requested "
            f"(n_train + n_dev + n_heldout): set kb_questions.source to generated or auto"
        )
    random.Random(params.seed).shuffle(pool)
    heldout = pool[: params.n_heldout]
    dev = pool[params.n_heldout : params.n_heldout + params.n_dev]
    train = pool[params.n_heldout + params.n_dev : wanted]
    return {
        name: [description_question(doc, params.question_template) for doc in split]
        for name, split in zip(KB_SPLITS, (train, dev, heldout), strict=True)
    }


def question_source(docs: list[Doc], params: KbQuestionsParams, excluded: set[str]) -> str:
    """`kb_questions.source`, with `auto` resolved: description when enough docs have one."""
    if params.source != "auto":
        return params.source
    wanted = params.n_train + params.n_dev + params.n_heldout
    return "description" if len(eligible_docs(docs, params, excluded)) >= wanted else "generated"


def generated_kb_questions(
    params: Params, docs: list[Doc], real: dict[str, list[QARecord]], excluded: set[str]
) -> tuple[dict[str, list[QARecord]], list[dict[str, Any]], dict[str, Any]]:
    """Generated triples over a seeded sample of docs, split by doc; the rejected ones; metrics."""
    kbq, synth = params.kb_questions, params.synthesize_queries
    torch.manual_seed(kbq.seed)
    torch.set_num_threads(synth.threads or os.cpu_count() or 1)
    chosen = sample_docs(docs, excluded, kbq.generated_docs, kbq.seed)
    forbidden = {normalize_question(r.question) for split in real.values() for r in split}
    encode = encode_precision(params)
    retriever = Retriever.load(
        params.paths.index_dir,
        Fusion.from_params(params.retrieval),
        base=params.project_dir,
        precision=encode,
    )
    missing = {d.id for d in chosen} - {doc["id"] for doc in retriever.docs}
    if missing:
        raise InputError(
            f"kb_questions: {len(missing)} sampled docs are not in the base index "
            f"{params.paths.index_dir} (e.g. {sorted(missing)[:3]}): rerun the index stage"
        )
    docs_by_id = {d.id: d for d in chosen}
    precision = resolve_precision(params.precision.generate, "generate")

    def ranks_of(texts: list[str], source_ids: list[str]) -> list[int | None]:
        return round_trip_ranks(retriever, texts, source_ids, kbq.round_trip_k, kbq.round_trip_mode)

    with GenerationCache(params.paths.generation_cache) as cache:
        generator = load_base_generator(
            params.paths.generator_base_dir, params.prepare_generator.model, "kb_questions", cache
        )
        questions, asked = generate_questions(generator, chosen, synth, precision)
        print(f"kb_questions: questions: {asked.summary()} (greedy, {precision})")
        generations = [asked]

        def answer(records: list[QARecord]) -> list[str]:
            answers, answered = answer_questions(
                generator, records, docs_by_id, params.generator, synth.batch_size, precision
            )
            print(f"kb_questions: answers: {answered.summary()}")
            generations.append(answered)
            return answers

        kept, rejected = generated_triples(chosen, questions, answer, ranks_of, kbq, forbidden)
    # a cached question or answer counts the time it took when it was generated
    seconds = sum(g.seconds for g in generations)
    splits = split_by_doc(kept, kbq)
    reasons = dict(sorted(Counter(row["reason"] for row in rejected).items()))
    for name, wanted in (("dev", kbq.n_dev), ("heldout", kbq.n_heldout)):
        if wanted and not splits[name]:
            raise InputError(
                f"kb_questions: {len(kept)} of {len(chosen)} generated triples from "
                f"{params.paths.retrieval_docs} survived the filters (rejected: {reasons}), "
                f"none left for the {name} set: raise kb_questions.generated_docs (or lower "
                "n_heldout / n_dev; with a stronger prepare_generator.model more survive)"
            )
    metrics = {
        "docs_sampled": len(chosen),
        "kept": len(kept),
        "rejected": reasons,
        "generation_seconds": round(seconds, 1),
        "encode_precision": encode,
    }
    return splits, rejected, metrics


def qa_splits_for(
    real: dict[str, list[QARecord]], kb: dict[str, list[QARecord]], source: str
) -> tuple[dict[str, list[QARecord]] | None, dict[str, list[QARecord]], dict[str, QuestionKind]]:
    """The QA splits to write (None: copy the real ones as they are), the KB sets to write, and
    each QA split's kind. Without real QA the KB dev and held-out sets become dev and test."""
    if any(real.values()):
        return None, kb, dict.fromkeys(SPLITS, "real")
    kind: QuestionKind = "generated" if source == "generated" else "description"
    qa = {"train": [], "dev": kb["dev"], "test": kb["heldout"]}
    kinds: dict[str, QuestionKind] = {"train": "real", "dev": kind, "test": kind}
    return qa, {"train": kb["train"], "dev": [], "heldout": []}, kinds


def read_feedback(path: Path) -> list[QARecord]:
    """feedback_export's QA records; none when it never ran (no feedback was ever given)."""
    return read_qa(path, allow_empty=True) if path.is_file() else []


def feedback_additions(
    feedback: list[QARecord], train: list[QARecord], evaluated: list[QARecord]
) -> list[QARecord]:
    """The feedback records train gains: not a question train holds already, never one an
    evaluated split holds, the first of several spellings of one question, no id train has."""
    taken = {normalize_question(r.question) for r in [*train, *evaluated]}
    ids = {r.id for r in train}
    added = []
    for record in feedback:
        question = normalize_question(record.question)
        if question in taken or record.id in ids:
            continue
        taken.add(question)
        added.append(record)
    return added


def write_outputs(
    paths: PathsParams,
    qa: dict[str, list[QARecord]] | None,
    kb: dict[str, list[QARecord]],
    kinds: dict[str, QuestionKind],
    rejected: list[dict[str, Any]],
    metrics: dict[str, Any],
    added: Sequence[QARecord] = (),
) -> None:
    """Everything in `paths.kb_questions_dir`, replaced together; `added` (feedback) after the
    QA train split's records."""
    if not paths.retrieval_qa_dir.is_relative_to(paths.kb_questions_dir):
        raise InputError(
            f"paths.retrieval_qa_dir ({paths.retrieval_qa_dir}) must be inside "
            f"paths.kb_questions_dir ({paths.kb_questions_dir}): kb_questions writes it there"
        )
    with atomic_path(paths.kb_questions_dir) as out:
        qa_out = out / paths.retrieval_qa_dir.relative_to(paths.kb_questions_dir)
        qa_out.mkdir(parents=True)
        for name in SPLITS:
            if qa is None:
                shutil.copyfile(paths.dedup_qa_dir / f"{name}.jsonl", qa_out / f"{name}.jsonl")
            else:
                write_jsonl(qa_out / f"{name}.jsonl", qa[name])
        if added:
            train = qa_out / "train.jsonl"
            text = train.read_text(encoding="utf-8")
            separator = "\n" if text and not text.endswith("\n") else ""
            train.write_text(text + separator + jsonl_lines(added), encoding="utf-8")
        write_qa_sources(qa_out, kinds)
        for name, records in kb.items():
            write_jsonl(out / f"{name}.jsonl", records)
        write_jsonl(out / "rejected.jsonl", rejected)
        write_json(out / "metrics.json", metrics)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    kbq = params.kb_questions
    with stage_run("kb_questions", params) as run:
        docs = read_docs(params.paths.retrieval_docs)
        real = read_qa_splits(params.paths.dedup_qa_dir)
        real_gold = {d for records in real.values() for r in records for d in r.doc_ids}
        source = question_source(docs, kbq, real_gold)
        if source == "description":
            kb, rejected, metrics = make_kb_questions(docs, kbq, real_gold), [], {}
        else:
            kb, rejected, metrics = generated_kb_questions(params, docs, real, real_gold)
        qa, kb_written, kinds = qa_splits_for(real, kb, source)
        splits = real if qa is None else qa
        added = feedback_additions(
            read_feedback(params.paths.feedback_export),
            [*splits["train"], *kb["train"]],
            [*splits["dev"], *splits["test"], *kb["dev"], *kb["heldout"]],
        )
        metrics = {"source": source, **metrics} | {
            "questions": {name: len(records) for name, records in kb.items()},
            "written": {name: len(records) for name, records in kb_written.items()},
        }
        if added:  # absent without feedback: the metrics file stays what it was
            metrics["feedback_records"] = len(added)
        write_outputs(params.paths, qa, kb_written, kinds, rejected, metrics, added)
        counts = {f"{name}_questions": len(records) for name, records in kb.items()}
        counts["feedback_records"] = len(added)
        run.log_metrics(counts | {k: v for k, v in metrics.items() if isinstance(v, int | float)})
        if source == "generated":
            run.set_tags({"precision.encode": metrics["encode_precision"]})
    print(f"kb_questions: {source} questions; QA splits {kinds} -> {params.paths.retrieval_qa_dir}")
    if added:
        print(f"kb_questions: train split + {len(added)} feedback records")
    if source == "generated":
        print(
            f"kb_questions: {metrics['kept']} of {metrics['docs_sampled']} docs kept; "
            f"rejected {metrics['rejected']}; round trip embedded in {metrics['encode_precision']}"
        )
    for name, records in kb.items():
        in_text = sum(bool(r.answerable) for r in records)
        print(
            f"kb_questions: {name:7s} {len(records):4d} questions "
            f"({in_text} with the answer verbatim in the doc)"
        )
    for record in [r for records in kb.values() for r in records][:5]:
        print(f"  {record.doc_ids[0]!r}: {record.question} -> {record.answers[0]}")


if __name__ == "__main__":
    run_stage(main)
