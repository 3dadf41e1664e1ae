"""Stage `feedback_export`: the accepted feedback on served answers, as QA records for training.

The feedback database (`feedback.database`) is not a file DVC can hash, so the stage always
runs (`always_changed`); its output is byte-for-byte the same for the same feedback, so the
stages after it rerun only when the feedback changed.

Each feedback row gives at most one record (`tasks.lib.serving.feedback.feedback_record`): a
correction with a doc id, or a good answer with its cited doc. Of several on one question (as
`normalize_question` compares them) the latest stands: it was given knowing more. A record whose
doc is no longer in the KB is dropped. The records pass the validate stage's QA suites before
they are written, so `kb_questions` can add them to the train split as they are.

Outputs in `paths.feedback_export_dir`: train.jsonl (`paths.feedback_export`) and metrics.json,
whose `max_feedback_id` is the watermark a successful retrain records for the watcher.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tasks.lib.core.config import load_params
from tasks.lib.core.expectations import qa_checks, run_suites
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json, write_jsonl
from tasks.lib.core.records import QARecord, normalize_question, read_docs
from tasks.lib.core.tracking import stage_run
from tasks.lib.core.validation import ROWS
from tasks.lib.serving.feedback import (
    EXPORT_METRICS_FILE,
    FeedbackRow,
    FeedbackStore,
    feedback_record,
)


def export_records(
    rows: list[FeedbackRow], kb_ids: set[str]
) -> tuple[list[QARecord], dict[str, Any]]:
    """The QA records the feedback teaches, in feedback id order, and what became of each row."""
    uses: Counter[str] = Counter()
    latest: dict[str, tuple[int, QARecord]] = {}  # normalized question -> (feedback id, record)
    for row in rows:
        record, use = feedback_record(row)
        uses[use] += 1
        if record is None:
            continue
        if record.doc_ids[0] not in kb_ids:
            uses["doc_not_in_kb"] += 1
            continue
        key = normalize_question(record.question)
        if not key:
            uses["blank_question"] += 1
            continue
        if key in latest:
            uses["superseded"] += 1
        latest[key] = (row.id, record)
    records = [record for _, record in sorted(latest.values(), key=lambda item: item[0])]
    metrics = {
        "feedback": len(rows),
        "exported": len(records),
        "corrections": uses["correction"],
        "good_answers": uses["good_answer"],
        "bad_without_correction": uses["bad_without_correction"],
        "not_exported": {
            reason: uses[reason]
            for reason in (
                "correction_without_doc",
                "good_without_source",
                "doc_not_in_kb",
                "blank_question",
                "superseded",
            )
        },
        "max_feedback_id": max((row.id for row in rows), default=0),
    }
    return records, metrics


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths = params.paths
    with stage_run("feedback_export", params) as run:
        kb_ids = {doc.id for doc in read_docs(paths.retrieval_docs)}
        store = FeedbackStore.open(params.feedback, params.project_dir)
        try:
            rows = store.feedback_rows()
        finally:
            store.close()
        records, metrics = export_records(rows, kb_ids)
        checks = qa_checks({"train": records}, kb_ids)
        report = run_suites(checks, params.validate_.report_examples, 0.0, None)
        if not report.success:
            problems = "; ".join(e.describe(ROWS[e.suite]) for e in report.failures())
            raise InputError(
                f"feedback_export: the QA records made from {store.where} fail the QA suites: "
                f"{problems}: fix or delete those feedback rows"
            )
        with atomic_path(paths.feedback_export_dir) as out:
            write_jsonl(out / paths.feedback_export.relative_to(paths.feedback_export_dir), records)
            write_json(out / EXPORT_METRICS_FILE, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int)})
    print(
        f"feedback_export: {metrics['exported']} QA records from {metrics['feedback']} feedback "
        f"({metrics['corrections']} corrections, {metrics['good_answers']} good answers; "
        f"{metrics['bad_without_correction']} bad without a correction, not exported) "
        f"-> {paths.feedback_export}"
    )


if __name__ == "__main__":
    run_stage(main)
