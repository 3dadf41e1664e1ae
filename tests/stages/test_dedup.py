"""Dedup: exact and near duplicates are dropped with their reason; distinct docs survive."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tasks import dedup, ingest, validate
from tasks.lib.core.config import DedupParams, load_params
from tasks.lib.core.records import Doc, QARecord, read_docs, read_qa_splits
from tests.support.projects import make_project, write_jsonl

PARAMS = DedupParams(threshold=0.8, num_perm=128, shingle_size=3, seed=1)
BASE = (
    "The river Arden rises in the northern hills and flows south through three market towns "
    "before it reaches the sea at Harwick, where its estuary shelters a large colony of seals "
    "and a busy fishing harbour that dates from the twelfth century."
)


def doc(doc_id: str, text: str) -> Doc:
    return Doc(id=doc_id, title=doc_id.title(), text=text, source="test")


def test_exact_near_and_distinct() -> None:
    docs = [
        doc("c", BASE.upper().replace(" ", "  ")),  # exact after normalization
        doc("b", BASE.replace("twelfth", "thirteenth")),  # one word changed: near
        doc("a", BASE),
        doc("d", "A glacier is a slow river of ice formed from compacted snow over centuries."),
    ]
    dropped = {d.id: d for d in dedup.find_duplicates(docs, PARAMS)}
    assert set(dropped) == {"b", "c"}
    assert (dropped["c"].reason, dropped["c"].kept_id, dropped["c"].similarity) == (
        "exact",
        "a",
        1.0,
    )
    assert dropped["b"].reason == "near" and dropped["b"].kept_id == "a"
    assert 0.8 <= dropped["b"].similarity < 1.0


def test_similar_but_below_threshold_is_kept() -> None:
    half = " ".join(BASE.split()[:20])
    other = half + " and then the story turns to something else entirely with new words here"
    assert dedup.find_duplicates([doc("a", BASE), doc("b", other)], PARAMS) == []


def test_jaccard_similarity_of_shingles_by_hand() -> None:
    assert dedup.shingles("a b c d", 3) == {"a b c", "b c d"}
    assert dedup.shingles("Tiny text", 3) == {"tiny text"}
    assert dedup.jaccard({"x", "y"}, {"y", "z"}) == 1 / 3


def test_qa_doc_ids_point_at_the_kept_doc() -> None:
    record = QARecord(id="q", question="?", answers=["a"], doc_ids=["b", "a", "z"], group="g")
    (remapped,), rewritten = dedup.remap_qa([record], {"b": "a"})
    assert remapped.doc_ids == ["a", "z"]
    assert rewritten == 1


def test_stage_writes_docs_qa_dropped_and_metrics(tmp_path: Path) -> None:
    params_file = make_project(tmp_path)
    kb = tmp_path / "my_kb/docs.jsonl"
    rows = [json.loads(line) for line in kb.read_text(encoding="utf-8").splitlines()]
    rows += [
        {"id": "zz-copy", "title": "Copy", "text": rows[1]["text"], "source": "dup"},
        {"id": "long", "title": "Long", "text": BASE, "source": "s"},
        {
            "id": "long-edit",
            "title": "Edit",
            "text": BASE.replace("seals", "otters"),
            "source": "s",
        },
    ]
    write_jsonl(kb, rows)
    qa = tmp_path / "my_qa/qa.jsonl"
    write_jsonl(
        qa,
        [json.loads(line) for line in qa.read_text(encoding="utf-8").splitlines()]
        + [{"id": "qz", "question": "?", "answers": ["x"], "doc_ids": ["zz-copy"], "group": "gz"}],
    )
    ingest.main(params_file)
    validate.main(params_file)
    dedup.main(params_file)

    out, paths = tmp_path / "data/dedup", load_params(params_file).paths
    kept = {d.id for d in read_docs(paths.retrieval_docs)}  # the file later stages read
    assert "zz-copy" not in kept and "long-edit" not in kept and "long" in kept
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert {(d["id"], d["reason"], d["kept_id"]) for d in dropped} == {
        ("zz-copy", "exact", rows[1]["id"]),
        ("long-edit", "near", "long"),
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {
        "docs_in": 12,
        "docs_out": 10,
        "quarantined": 0,
        "exact_duplicates": 1,
        "near_duplicates": 1,
        "qa_records_rewritten": 1,
        "qa_records_dropped": 0,
    }
    records = [r for split in read_qa_splits(paths.dedup_qa_dir).values() for r in split]
    assert {r.id: r.doc_ids for r in records}["qz"] == [rows[1]["id"]]


def test_every_copy_above_threshold_is_found() -> None:
    """LSH is a filter: no pair at or above the threshold may slip through it."""
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(5000)]
    originals = [doc(f"a{i:03d}", " ".join(rng.choices(vocab, k=80))) for i in range(60)]
    copies = []
    for i, original in enumerate(originals):
        words = original.text.split()
        for position in rng.sample(range(80), k=2 + i % 2):  # Jaccard ~0.86 or ~0.79
            words[position] = "edited"
        copies.append(doc(f"b{i:03d}", " ".join(words)))
    above = {
        c.id
        for c, o in zip(copies, originals, strict=True)
        if dedup.jaccard(dedup.shingles(c.text, 3), dedup.shingles(o.text, 3)) >= PARAMS.threshold
    }
    dropped = {d.id for d in dedup.find_duplicates(originals + copies, PARAMS)}
    assert 25 <= len(above) < len(copies)  # both sides of the threshold are exercised
    assert dropped == above


def quarantine_project(root: Path, **overrides: object) -> Path:
    """The tiny project plus a 5-character doc and a question citing only it."""
    params_file = make_project(root, **overrides)
    write_jsonl(
        root / "my_kb/stub.jsonl", [{"id": "stub", "title": "Stub", "text": "Stub.", "source": "s"}]
    )
    qa = {
        "id": "q-stub",
        "question": "Stub?",
        "answers": ["Stub"],
        "doc_ids": ["stub"],
        "group": "gs",
    }
    write_jsonl(root / "my_qa/stub.jsonl", [qa])
    return params_file


def test_quarantined_doc_is_listed_then_dropped_with_its_question(tmp_path: Path) -> None:
    params_file = quarantine_project(tmp_path, validate__max_quarantined_share=0.1)  # 1 of 10
    ingest.main(params_file)
    validate.main(params_file)
    dedup.main(params_file)

    paths = load_params(params_file).paths
    listed = [json.loads(line) for line in paths.validate_quarantine.read_text().splitlines()]
    assert listed == [
        {
            "id": "stub",
            "expectation": "doc_min_chars",
            "column": "text",
            "value": "Stub.",
            "rule": {"min_value": 20},
        }
    ]
    summary = json.loads(paths.validate_summary.read_text())
    assert summary["success"] and summary["quarantined"] == 1
    assert summary["quarantined_by_expectation"] == {"doc_min_chars": 1}
    dropped = [
        json.loads(line) for line in (paths.dedup_dir / "dropped.jsonl").read_text().splitlines()
    ]
    assert [(d["id"], d["reason"], d["kept_id"]) for d in dropped] == [
        ("stub", "quarantined:doc_min_chars", None)
    ]
    assert "stub" not in {d.id for d in read_docs(paths.retrieval_docs)}
    records = [r for split in read_qa_splits(paths.dedup_qa_dir).values() for r in split]
    assert "q-stub" not in {r.id for r in records} and len(records) == 7
    metrics = json.loads((paths.dedup_dir / "metrics.json").read_text())
    assert (metrics["docs_in"], metrics["docs_out"], metrics["quarantined"]) == (10, 9, 1)
    assert metrics["qa_records_dropped"] == 1
