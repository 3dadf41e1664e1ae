"""Stage `synthesize_queries`: questions written by the local generator for KB docs (doc-to-query).

A few hundred real training questions are too few to adapt an encoder to a KB, and a user's own
KB may come with none. The generator (prepare_generator's SmolLM2 folder) reads a doc and writes
one question about it; the pair (question, doc) is a free training label. A small model often
writes vague questions ("What is the purpose of a laser?" for an optics article), so a question is
kept only when it is round-trip consistent: the base retriever, searching the whole KB, ranks its
source doc in the top `round_trip_k` (the doc-to-query steps are `tasks.lib.generation.doc_queries`,
which `refresh_questions` shares).

Docs are a seeded sample that excludes every gold doc of the dev and test QA splits. Dev gold
docs pick the best checkpoint, and test gold docs are what the final numbers measure: a question
generated from a test gold doc would train the encoder on the very doc a test question asks
for, and the "unseen-doc" test subset would no longer be unseen. Only doc ids are used, never
the evaluation questions, and a generated question identical to an evaluation question is
dropped too.

When `finetune_retriever.use_synthetic` is false nothing would read the questions, so the stage
writes empty outputs at once instead of spending minutes generating after every KB change.

Outputs in `paths.synthetic_queries_dir`:
  queries.jsonl   kept questions as canonical QA records (doc_ids = [source doc], no answers);
                  finetune_retriever reads them as `paths.synthetic_queries`
  rejected.jsonl  every dropped question with its reason (and its source doc's rank)
  metrics.json    counts, kept share, generation seconds per question (a question from the
                  generation cache, `paths.generation_cache`, counts the time it took then)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tasks.lib.core.config import PathsParams, load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json, write_jsonl
from tasks.lib.core.records import QARecord, normalize_question, read_docs, read_qa_splits
from tasks.lib.core.tracking import stage_run
from tasks.lib.generation.doc_queries import (
    filter_questions,
    questions_for_docs,
    sample_docs,
)
from tasks.lib.retrieval.encoder import encode_precision
from tasks.lib.retrieval.retriever import Fusion, Retriever, round_trip_ranks

EVALUATION_SPLITS = ("dev", "test")


def evaluation_gold_docs(qa_splits: dict[str, list[QARecord]]) -> set[str]:
    return {d for split in EVALUATION_SPLITS for r in qa_splits.get(split, []) for d in r.doc_ids}


def write_outputs(
    paths: PathsParams,
    kept: list[QARecord],
    rejected: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> None:
    """The three files, replaced together in `paths.synthetic_queries_dir`."""
    out_dir = paths.synthetic_queries_dir
    with atomic_path(out_dir) as out:
        out.mkdir(parents=True)
        write_jsonl(out / paths.synthetic_queries.relative_to(out_dir), kept)
        write_jsonl(out / "rejected.jsonl", rejected)
        write_json(out / "metrics.json", metrics)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    synth = params.synthesize_queries
    if not params.finetune_retriever.use_synthetic:
        with stage_run("synthesize_queries", params) as run:
            write_outputs(params.paths, [], [], {"kept": 0, "skipped": "use_synthetic is false"})
            run.log_metrics({"kept": 0})
        print("synthesize_queries: skipped (finetune_retriever.use_synthetic is false)")
        return
    with stage_run("synthesize_queries", params) as run:
        torch.manual_seed(synth.seed)
        torch.set_num_threads(synth.threads or os.cpu_count() or 1)
        docs = read_docs(params.paths.retrieval_docs)
        qa_splits = read_qa_splits(params.paths.retrieval_qa_dir)
        excluded = evaluation_gold_docs(qa_splits)
        forbidden = {
            normalize_question(r.question) for s in EVALUATION_SPLITS for r in qa_splits[s]
        }
        chosen = sample_docs(docs, excluded, synth.n_docs, synth.seed)

        generated, generation, generate = questions_for_docs(params, chosen, "synthesize_queries")
        seconds = generation.seconds

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
                f"{len(missing)} sampled docs are not in the base index "
                f"(e.g. {sorted(missing)[:3]}): the index is older than the KB; "
                "rerun the index stage"
            )

        def ranks_of(questions: list[str], source_ids: list[str]) -> list[int | None]:
            return round_trip_ranks(retriever, questions, source_ids, synth.round_trip_k)

        kept, rejected = filter_questions(
            chosen, generated, ranks_of, synth.round_trip_k, forbidden
        )
        reasons: dict[str, int] = {}
        for row in rejected:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        metrics = {
            "docs_sampled": len(chosen),
            "docs_excluded_as_evaluation_gold": len(excluded),
            "kept": len(kept),
            "kept_share": round(len(kept) / len(chosen), 4) if chosen else 0.0,
            "rejected": reasons,
            "generation_seconds": round(seconds, 1),
            "seconds_per_question": round(seconds / len(chosen), 3) if chosen else 0.0,
        }
        write_outputs(params.paths, kept, rejected, metrics)
        run.log_metrics(metrics)
        run.log_metrics(
            {"generation_cache": {"hits": generation.cached, "misses": generation.generated}}
        )
        run.set_tags({"precision.encode": encode, "precision.generate": generate})
    print(
        f"synthesize_queries: {len(chosen)} docs -> {len(kept)} questions kept "
        f"({metrics['kept_share']:.0%}; dropped {reasons}); generation {seconds:.0f} s, "
        f"{metrics['seconds_per_question']:.2f} s a question; round trip embedded in {encode}"
    )
    for record in kept[:3]:
        print(f"  {record.doc_ids[0]!r}: {record.question}")


if __name__ == "__main__":
    run_stage(main)
