"""Stage `ingest`: turn a knowledge-base source and a QA source into the canonical JSONL files.

A folder KB may come without questions (an empty or absent QA folder): the splits are then
written empty, and the pipeline evaluates on questions generated from the KB.

The sources are read by `tasks.lib.kb.sources`, with the updates folder's added, replaced and
deleted docs applied; this stage marks which questions are answerable from their gold passages
and splits them by group into train / dev / test. The paths of the source folders it did not read
(hidden, ignored, other suffixes, links out of the folder) are printed and listed with the reason
in `paths.ingest_skipped`: a doc missing from the KB is explained there. It also notes the
fingerprint of the source it read, which `register` records for the KB watcher when the
pipeline succeeds (`tasks.lib.kb.source_state`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from tasks.lib.core.answers import answer_in_text
from tasks.lib.core.config import IngestParams, Params, SplitParams, load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_jsonl
from tasks.lib.core.records import SPLITS, Doc, QARecord
from tasks.lib.core.tracking import stage_run
from tasks.lib.kb.folder import SkippedByFolder, skip_metrics, skip_summary
from tasks.lib.kb.source_state import record_ingested_fingerprint, source_fingerprint
from tasks.lib.kb.sources import CONVERT_DOCS, CONVERT_QA, KbEdits, load_sources


def mark_answerable(records: list[QARecord], docs: list[Doc]) -> list[QARecord]:
    """`answerable`: an answer occurs verbatim (normalized) in one of the gold passages."""
    text_by_id = {doc.id: doc.text for doc in docs}
    return [
        r.model_copy(
            update={
                "answerable": any(
                    answer_in_text(a, text_by_id.get(d, "")) for a in r.answers for d in r.doc_ids
                )
            }
        )
        for r in records
    ]


def split_by_group(records: list[QARecord], split: SplitParams) -> dict[str, list[QARecord]]:
    """Seeded split of the sorted group ids: deterministic, and no group lands in two splits."""
    groups = sorted({r.group for r in records})
    random.Random(split.seed).shuffle(groups)
    n_train, n_dev = round(len(groups) * split.train), round(len(groups) * split.dev)
    split_of = {g: "train" for g in groups[:n_train]}
    split_of |= {g: "dev" for g in groups[n_train : n_train + n_dev]}
    split_of |= {g: "test" for g in groups[n_train + n_dev :]}
    by_split: dict[str, list[QARecord]] = defaultdict(list)
    for record in records:
        by_split[split_of[record.group]].append(record)
    return {name: by_split[name] for name in SPLITS}


def check_evaluation_splits(splits: dict[str, list[QARecord]], params: IngestParams) -> None:
    """With a QA set, dev and test must hold questions: later stages tune and score on them.
    Without one every split is empty, and generated questions take their place."""
    if not any(splits.values()):
        return
    groups = len({r.group for records in splits.values() for r in records})
    source = params.qa_folder if params.source == "folder" else "the packaged QA set"
    for name in ("dev", "test"):
        if not splits[name]:
            raise InputError(
                f"ingest: the {name} split is empty: {source} has {groups} QA groups, and "
                f"ingest.split (train {params.split.train}, dev {params.split.dev}, test the "
                f"rest) leaves none for {name}: add QA records in more groups, or change "
                "ingest.split"
            )


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    with stage_run("ingest", params) as run:
        # Taken before reading: a file edited meanwhile then still differs from it.
        fingerprint = source_fingerprint(params.ingest)
        docs, records, edits, skipped = load_sources(params.ingest)
        splits = split_by_group(mark_answerable(records, docs), params.ingest.split)
        check_evaluation_splits(splits, params.ingest)
        write_outputs(params, docs, splits, edits, skipped)
        record_ingested_fingerprint(params.project_dir, fingerprint)
        run.log_artifact(params.paths.ingest_skipped)
        run.log_metrics(
            {"docs": len(docs)}
            | edits.metrics()
            | skip_metrics([item for items in skipped.values() for item in items])
            | {f"{name}_questions": len(split) for name, split in splits.items()}
            | {
                f"{name}_answerable": sum(bool(r.answerable) for r in split)
                for name, split in splits.items()
            }
        )


def write_outputs(
    params: Params,
    docs: list[Doc],
    splits: dict[str, list[QARecord]],
    edits: KbEdits,
    skipped: SkippedByFolder,
) -> None:
    """Write the canonical files and the skipped paths in place atomically; print the counts."""

    with atomic_path(params.paths.kb_docs) as docs_path:
        write_jsonl(docs_path, docs)
    with atomic_path(params.paths.qa_dir) as qa_dir:
        for name, split_records in splits.items():
            write_jsonl(qa_dir / f"{name}.jsonl", split_records)
    with atomic_path(params.paths.ingest_skipped) as skipped_path:
        rows = [{"folder": key} | asdict(item) for key, items in skipped.items() for item in items]
        write_jsonl(skipped_path, rows)

    print(f"ingest: {len(docs)} docs")
    print_skipped(params, skipped)
    if edits != KbEdits():
        print(
            f"ingest: updates folder: {edits.added} docs added, {edits.replaced} replaced, "
            f"{edits.deleted} deleted; {edits.qa_unlinked} QA records lost a deleted gold doc, "
            f"{edits.qa_dropped} of them dropped (no gold doc left)"
        )
    if not any(splits.values()):
        print(
            "ingest: no QA records: the train, dev and test splits are empty; the pipeline "
            "will evaluate on generated questions (for real ones, add .jsonl files of QA records "
            f"to {params.ingest.qa_folder})"
        )
    for name, split_records in splits.items():
        answerable = sum(bool(r.answerable) for r in split_records)
        groups = len({r.group for r in split_records})
        size = len(split_records)
        print(f"ingest: {name:5s} {size:4d} questions ({answerable} answerable), {groups} groups")


def print_skipped(params: Params, skipped: SkippedByFolder) -> None:
    """One line per folder and reason, naming the paths; the report holds them all."""
    for key, items in skipped.items():
        folder = getattr(params.ingest, key)
        for line in skip_summary(items, CONVERT_QA if key == "qa_folder" else CONVERT_DOCS):
            print(f"ingest: {folder}: {line}")
    if any(skipped.values()):
        print(f"ingest: every skipped path, with why, is in {params.paths.ingest_skipped}")


if __name__ == "__main__":
    run_stage(main)
