"""Stage `refresh_questions`: the change questions, about the docs a KB change added or modified.

They test the refreshed bundle on exactly what the change touched, and nothing trains on them:
- doc-to-query (`tasks.lib.generation.doc_queries`, with the `synthesize_queries` settings):
  the local base generator writes one question per doc, kept only when the refreshed index,
  searched with the champion's encoder, ranks its source doc in the top `round_trip_k`;
- "What is <title>?" -> the doc's description, for docs that have a usable one
  (`tasks.lib.kb.questions`, with the `kb_questions` bounds), else the same question with no
  reference answer: every changed doc is probed at least once, so a few changed docs still
  give the paired test enough questions.
More changed docs than `refresh.max_docs`: a seeded sample of them is questioned.

Outputs in `paths.refresh_questions_dir`:
  questions.jsonl  `paths.change_questions`, canonical QA records (doc_ids = [the doc])
  rejected.jsonl   every dropped generated question with its reason
  deleted.json     `paths.deleted_docs`, the deleted doc ids (no answer may cite them)
  metrics.json     counts
Nothing to refresh (see `kb_changes`): the folder holds only the marker.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import atomic_path, run_stage, write_json, write_jsonl
from tasks.lib.core.precision import Precision
from tasks.lib.core.records import Doc, QARecord, read_docs
from tasks.lib.core.tracking import stage_run
from tasks.lib.generation.doc_queries import (
    filter_questions,
    questions_for_docs,
    sample_docs,
)
from tasks.lib.kb.changes import ChampionRef, champion_to_refresh, read_change_set
from tasks.lib.kb.questions import description_question, eligible_docs, title_question
from tasks.lib.retrieval.encoder import encode_precision, load_encoder
from tasks.lib.retrieval.retriever import Fusion, Retriever, round_trip_ranks
from tasks.lib.serving.bundle import component_folder


def doc_to_query(
    params: Params, champion: ChampionRef, docs: list[Doc], precision: Precision
) -> tuple[list[QARecord], list[dict[str, Any]]]:
    """Generated questions about `docs` that survive the round trip through the new index
    (questions embedded in `precision`)."""
    synth = params.synthesize_queries
    generated, _, _ = questions_for_docs(params, docs, "refresh_questions")
    with component_folder(champion.retriever.model_dump()) as folder:
        encoder = load_encoder(str(folder), Path())
    # Dense search alone decides the round trip: the fusion is never used.
    retriever = Retriever.load(
        params.paths.refresh_index_dir,
        Fusion.from_params(params.retrieval),
        encoder=encoder,
        precision=precision,
    )

    def ranks_of(questions: list[str], source_ids: list[str]) -> list[int | None]:
        return round_trip_ranks(retriever, questions, source_ids, synth.round_trip_k)

    return filter_questions(docs, generated, ranks_of, synth.round_trip_k, forbidden=set())


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths, settings = params.paths, params.refresh
    changes = read_change_set(paths.kb_changes)
    out_dir = paths.refresh_questions_dir
    champion = champion_to_refresh(changes, out_dir, "refresh_questions")
    if champion is None:
        return
    torch.manual_seed(params.synthesize_queries.seed)
    torch.set_num_threads(params.synthesize_queries.threads or os.cpu_count() or 1)
    changed = set(changes.changed)
    docs = [doc for doc in read_docs(paths.retrieval_docs) if doc.id in changed]
    chosen = sample_docs(docs, set(), settings.max_docs, settings.seed)
    precision = encode_precision(params)

    with stage_run("refresh_questions", params) as run:
        # stage_run pointed mlflow at the project's store, where `models:/` URIs resolve.
        generated, rejected = (
            doc_to_query(params, champion, chosen, precision) if chosen else ([], [])
        )
        template = params.kb_questions.question_template
        described = [
            description_question(doc, template)
            for doc in eligible_docs(chosen, params.kb_questions, set())
        ]
        with_description = {record.doc_ids[0] for record in described}
        titled = [title_question(doc, template) for doc in chosen if doc.id not in with_description]
        questions = generated + described + titled
        metrics = {
            "changed_docs": len(docs),
            "docs_questioned": len(chosen),
            "generated_kept": len(generated),
            "description_questions": len(described),
            "title_questions": len(titled),
            "questions": len(questions),
            "deleted_docs": len(changes.deleted),
            "rejected": dict(Counter(row["reason"] for row in rejected)),
        }
        with atomic_path(out_dir) as tmp:
            write_jsonl(tmp / paths.change_questions.relative_to(out_dir), questions)
            write_jsonl(tmp / "rejected.jsonl", rejected)
            write_json(tmp / paths.deleted_docs.relative_to(out_dir), changes.deleted)
            write_json(tmp / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.set_tags({"precision.encode": precision})
    print(
        f"refresh_questions: {len(chosen)} of {len(docs)} added / modified docs questioned: "
        f"{len(generated)} generated questions kept (dropped {metrics['rejected']}; round "
        f"trip embedded in {precision}), "
        f"{len(described)} description and {len(titled)} title questions; "
        f"{len(changes.deleted)} deleted docs listed"
    )


if __name__ == "__main__":
    run_stage(main)
