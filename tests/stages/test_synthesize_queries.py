"""Doc-to-query synthesis: which docs may be used, which generations count as questions, and
the round-trip filter (the generator itself is exercised by the stage, not here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks import synthesize_queries as sq
from tasks.lib.core.config import load_params
from tasks.lib.core.records import Doc, QARecord, normalize_question
from tasks.lib.generation import doc_queries as dq
from tests.support.retrieval import repo_params


def doc(doc_id: str) -> Doc:
    return Doc(id=doc_id, title=doc_id.title(), text=f"All about {doc_id}.", source="t")


def qa(doc_id: str, question: str = "?") -> QARecord:
    return QARecord(id=doc_id, question=question, answers=[], doc_ids=[doc_id], group=doc_id)


def test_sample_never_uses_dev_or_test_gold_docs_and_is_seeded() -> None:
    docs = [doc(f"d{i}") for i in range(30)]
    splits = {"train": [qa("d0")], "dev": [qa("d1")], "test": [qa("d2"), qa("d3")]}
    excluded = sq.evaluation_gold_docs(splits)
    assert excluded == {"d1", "d2", "d3"}  # train gold docs may be used
    sample = dq.sample_docs(docs, excluded, 27, seed=0)
    assert len(sample) == 27 and not {d.id for d in sample} & excluded
    assert sample == dq.sample_docs(list(reversed(docs)), excluded, 27, seed=0)
    assert len(dq.sample_docs(docs, excluded, 100, seed=0)) == 27  # no more than the pool


def test_clean_question_keeps_one_question_only() -> None:
    assert dq.clean_question("What is the capital of Laos?") == "What is the capital of Laos?"
    assert dq.clean_question('Question: "Who built it?"\nIt was built by') == "Who built it?"
    assert dq.clean_question("**Q1:** When did it open?") == "When did it open?"
    for bad in ["", "What a wonderful passage!", "Why? And how?", "Why?", "A statement."]:
        assert dq.clean_question(bad) is None, bad


def test_round_trip_filter_keeps_questions_whose_doc_is_found() -> None:
    docs = [doc("a"), doc("b"), doc("c"), doc("d"), doc("e")]
    generated = [
        "Where is a?",
        "Where is b?",
        "not a question",
        "what is the test question?",
        "where is  A?",
    ]
    ranks = {"a": 1, "b": None, "c": 3, "d": 2, "e": 1}

    def ranks_of(questions: list[str], source_ids: list[str]) -> list[int | None]:
        return [ranks[s] for s in source_ids]

    forbidden = {normalize_question("What is the test question?")}
    kept, rejected = dq.filter_questions(docs, generated, ranks_of, 5, forbidden)
    assert [(r.id, r.question, r.doc_ids) for r in kept] == [("syn:a", "Where is a?", ["a"])]
    assert {r["doc_id"]: r["reason"] for r in rejected} == {
        "b": "source_not_in_top_5",
        "c": "not_a_question",
        "d": "evaluation_question",
        "e": "duplicate",
    }


def test_stage_generates_nothing_when_the_retriever_does_not_use_synthetic_queries(
    tmp_path: Path,
) -> None:
    """Off by default: the stage must not load the generator (here it does not exist, so
    loading it would fail) and leaves empty outputs that finetune_retriever reads as none."""
    params = repo_params()
    params["paths"] |= {
        "synthetic_queries_dir": "synthetic",
        "synthetic_queries": "synthetic/queries.jsonl",
        "generator_base_dir": "no/generator",
        "retrieval_docs": "no/docs.jsonl",
    }
    params["prepare_generator"]["model"] = str(tmp_path / "no/generator")
    params["tracking"]["enabled"] = False
    params["finetune_retriever"]["use_synthetic"] = False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
    sq.main(params_file)
    out = tmp_path / "synthetic"
    queries = load_params(params_file).paths.synthetic_queries
    assert queries.read_text() == (out / "rejected.jsonl").read_text() == ""
    assert '"kept": 0' in (out / "metrics.json").read_text()
