"""Stage `kb_questions`: the KB's own questions, and the QA splits every later stage reads.

With a real QA set the splits are dedup's, byte for byte; without one the KB's dev and held-out
sets become the dev and test splits, and are written nowhere else. Generated mode runs for real
with the tiny random generator, which writes nothing usable: the stage must then fail clearly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import kb_questions
from tasks.lib.core.config import load_params
from tasks.lib.core.io import InputError, write_jsonl
from tasks.lib.core.records import SPLITS, Doc, QARecord, qa_split_label, read_qa, read_qa_splits
from tasks.lib.kb.generated import filter_triples, split_by_doc
from tasks.lib.kb.questions import generator_task
from tests.support.retrieval import build_tiny_index, repo_params, tiny_docs, tiny_qa


def described_docs() -> list[Doc]:
    """The tiny KB with a short description per doc (the words after " is ")."""
    return [d.model_copy(update={"description": d.text.split(" is ")[-1]}) for d in tiny_docs()]


def make_kb_project(
    root: Path,
    encoder: Path,
    generator: Path,
    docs: list[Doc],
    qa: dict[str, list[dict[str, Any]]],
    **kb: Any,
) -> Path:
    """A project: the docs, dedup's QA splits, the tiny base index and generator."""
    write_jsonl(root / "kb.jsonl", docs)
    for split in SPLITS:
        write_jsonl(root / "dedup/qa" / f"{split}.jsonl", qa.get(split, []))
    build_tiny_index(encoder, root / "index")
    params = repo_params()
    params["paths"] |= {
        "retrieval_docs": "kb.jsonl",
        "dedup_dir": "dedup",
        "dedup_qa_dir": "dedup/qa",
        "kb_questions_dir": "kbq",
        "retrieval_qa_dir": "kbq/qa",
        "index_dir": "index",
        "generator_base_dir": str(generator),
    }
    params["tracking"]["enabled"] = False
    params["kb_questions"] |= {"n_train": 4, "n_dev": 2, "n_heldout": 4, "max_words": 20, **kb}
    params["synthesize_queries"] |= {"max_new_tokens": 8, "threads": 1}
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params_file


def test_real_qa_is_copied_byte_for_byte_and_described_docs_give_description_questions(
    tmp_path: Path, tiny_encoders: tuple[Path, Path], tiny_generator_dir: Path
) -> None:
    params_file = make_kb_project(
        tmp_path, tiny_encoders[0], tiny_generator_dir, described_docs(), tiny_qa()
    )
    kb_questions.main(params_file)
    paths = load_params(params_file).paths
    for split in SPLITS:
        copied = (paths.retrieval_qa_dir / f"{split}.jsonl").read_bytes()
        assert copied == (paths.dedup_qa_dir / f"{split}.jsonl").read_bytes()
    sources = json.loads((paths.retrieval_qa_dir / "source.json").read_text(encoding="utf-8"))
    assert sources == {
        "train": {"kind": "real", "size": 2},
        "dev": {"kind": "real", "size": 5},
        "test": {"kind": "real", "size": 5},
    }
    assert qa_split_label(paths.retrieval_qa_dir, "test") == "test: real questions (5)"

    kb = {
        name: read_qa(paths.kb_questions_dir / f"{name}.jsonl") for name in kb_questions.KB_SPLITS
    }
    assert [len(kb[name]) for name in ("train", "dev", "heldout")] == [4, 2, 4]
    real_gold = {d for rows in tiny_qa().values() for row in rows for d in row["doc_ids"]}
    kb_docs = [r.doc_ids[0] for records in kb.values() for r in records]
    assert len(set(kb_docs)) == 10 and not set(kb_docs) & real_gold
    assert all(generator_task(r) == "describe" for records in kb.values() for r in records)
    metrics = json.loads((paths.kb_questions_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["source"] == "description"
    assert (paths.kb_questions_dir / "rejected.jsonl").read_text(encoding="utf-8") == ""


def test_generated_mode_fails_clearly_when_no_triple_survives(
    tmp_path: Path, tiny_encoders: tuple[Path, Path], tiny_generator_dir: Path
) -> None:
    """No descriptions (auto picks generated) and no QA; the random generator's replies are no
    questions, so there would be no dev or held-out set."""
    params_file = make_kb_project(tmp_path, tiny_encoders[0], tiny_generator_dir, tiny_docs(), {})
    with pytest.raises(InputError, match=r"none left for the dev set.*kb_questions.generated_docs"):
        kb_questions.main(params_file)
    assert not (tmp_path / "kbq").exists()  # nothing half written


def test_without_real_qa_the_kb_dev_and_heldout_sets_become_dev_and_test(
    tmp_path: Path, tiny_encoders: tuple[Path, Path], tiny_generator_dir: Path
) -> None:
    """The stage's outputs from generated triples (the filters' real output on given texts)."""
    params_file = make_kb_project(tmp_path, tiny_encoders[0], tiny_generator_dir, tiny_docs(), {})
    params = load_params(params_file)
    docs = {d.id: d for d in tiny_docs()}
    spans = {doc_id: " ".join(doc.text.split()[-2:]) for doc_id, doc in docs.items()}
    questions = [
        QARecord(id=f"syn:{i}", question=f"What about {docs[i].title}?", answers=[], doc_ids=[i],
                 group=i)
        for i in list(docs)[:7]
    ]  # fmt: skip
    kept, rejected = filter_triples(questions, [spans[q.doc_ids[0]] for q in questions], docs, 6)
    kb = split_by_doc(kept, params.kb_questions)
    assert [len(kb[name]) for name in ("heldout", "dev", "train")] == [3, 2, 2]  # 7 of 10 asked

    real = {split: [] for split in SPLITS}
    qa, written, kinds = kb_questions.qa_splits_for(real, kb, "generated")
    kb_questions.write_outputs(params.paths, qa, written, kinds, rejected, {"source": "generated"})

    paths = params.paths
    split_ids = {s: [r.id for r in rs] for s, rs in read_qa_splits(paths.retrieval_qa_dir).items()}
    assert split_ids == {
        "train": [],
        "dev": [r.id for r in kb["dev"]],
        "test": [r.id for r in kb["heldout"]],
    }
    kb_written = {n: read_qa(paths.kb_questions_dir / f"{n}.jsonl", allow_empty=True) for n in kb}
    assert kb_written == {"train": kb["train"], "dev": [], "heldout": []}  # nothing asked twice
    assert (
        qa_split_label(paths.retrieval_qa_dir, "test") == "test: generated held-out questions (3)"
    )
    assert qa_split_label(paths.retrieval_qa_dir, "dev") == "dev: generated dev questions (2)"
    assert qa_split_label(paths.retrieval_qa_dir, "train") == "train: real questions (0)"
    test = read_qa(paths.retrieval_qa_dir / "test.jsonl")
    assert all(generator_task(r) == "qa" and r.answerable for r in test)
