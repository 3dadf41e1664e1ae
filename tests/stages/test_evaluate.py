"""The evaluate stage: per-question scores of bundle outputs and baselines, its one-table view,
and the stage itself on a tiny bundle, with a change set and deleted docs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks import evaluate
from tasks.evaluate import (
    baseline_scores,
    baseline_systems,
    check_no_deleted,
    means,
    question_scores,
    read_change_questions,
    read_deleted_docs,
)
from tasks.lib.core.config import load_params
from tasks.lib.core.io import InputError, write_json
from tasks.lib.core.records import Doc, QARecord
from tasks.lib.serving.bundle import components_spec, save_bundle
from tasks.lib.serving.scores import read_scores
from tests.support.projects import make_project, write_jsonl
from tests.support.retrieval import (
    build_tiny_index,
    make_tiny_encoder,
    tiny_docs,
    tiny_qa,
)
from tests.support.tiny_generator import make_tiny_generator

DOCS = {
    "paris": Doc(id="paris", title="Paris", text="Paris is the capital of France.", source="t"),
    "rome": Doc(id="rome", title="Rome", text="Rome is the capital of Italy.", source="t"),
    "oslo": Doc(id="oslo", title="Oslo", text="Oslo is the capital of Norway.", source="t"),
}
RECORDS = [  # not in id order: ranx scores in id order, the rows must follow the records
    QARecord(id="b", question="Capital of Italy?", answers=["Rome"], doc_ids=["rome"], group="b"),
    QARecord(
        id="a", question="Capital of France?", answers=["Paris"], doc_ids=["paris"], group="a"
    ),
]


def test_bundle_outputs_score_answers_and_rankings_per_question_by_hand() -> None:
    outputs = [
        {"answer": "the city of Oslo", "sources": ["oslo"], "retrieved": ["oslo", "rome"]},
        {"answer": "paris.", "sources": ["paris"], "retrieved": ["paris", "oslo"]},
    ]
    rows = question_scores(RECORDS, outputs, DOCS, ["recall@1", "recall@10", "mrr@10"])
    assert [r["exact_match"] for r in rows] == [0.0, 1.0]  # normalization drops case, dots
    assert [r["supported"] for r in rows] == [0.0, 1.0]  # "paris." is in its cited passage
    assert [r["recall_at_1"] for r in rows] == [0.0, 1.0]
    assert [r["mrr_at_10"] for r in rows] == [0.5, 1.0]  # rome at rank 2 for question b
    assert means(rows)["answer_f1"] == 0.5  # "city oslo" shares no token with "rome"
    assert means(rows)["recall_at_10"] == 1.0


def test_baselines_come_from_the_generation_and_retrieval_reports() -> None:
    interval = {"mean": 0.2, "low": 0.1, "high": 0.3}
    generation = {
        "real_test": {
            "n": 2,
            "closed_book": {"answer_f1": interval},
            "base_rag": {"answer_f1": interval | {"mean": 0.4}},
            "tuned_rag": {"answer_f1": interval | {"mean": 0.6}},
        }
    }
    retrieval = {"test": {"bm25": {"ndcg@10": 0.5}, "dense_tuned": {"ndcg@10": 0.9}}}
    systems = baseline_systems(generation, retrieval, "test")
    assert systems == {
        "closed_book": {"answer_f1": 0.2},
        "base_rag": {"answer_f1": 0.4},
        "bm25": {"ndcg_at_10": 0.5},
        "dense_tuned": {"ndcg_at_10": 0.9},
    }


def generation_rows(records: list[QARecord]) -> list[dict]:
    """evaluate_generation's predictions: closed-book wrong, base RAG right, and a KB set."""
    rows = [
        {"set": "real_test", "id": r.id, "question": r.question, "answers": r.answers,
         "passages": [], "closed_book": "no idea", "base_rag": r.answers[0], "tuned_rag": "x"}
        for r in records
    ]  # fmt: skip
    kb = {"set": "kb_heldout", "id": records[0].id, "question": "?", "answers": ["y"],
          "passages": [], "closed_book": "y", "base_rag": "y", "tuned_rag": "y"}  # fmt: skip
    return [*rows, kb]


def test_baseline_answers_are_scored_per_question_in_record_order(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, generation_rows(list(reversed(RECORDS))))
    scores = baseline_scores(path, RECORDS)
    assert [row["answer_f1"] for row in scores["base_rag"]] == [1.0, 1.0]
    assert [row["exact_match"] for row in scores["closed_book"]] == [0.0, 0.0]
    assert "supported" not in scores["base_rag"][0]  # passages are named by title only
    write_jsonl(path, generation_rows(RECORDS[:1]))
    with pytest.raises(InputError, match=r"no real_test answers for 1 of the 2 questions"):
        baseline_scores(path, RECORDS)


def test_change_questions_and_deleted_docs_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "change.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert read_change_questions(empty) == []  # only deletions: nothing new to ask
    deleted = tmp_path / "deleted.json"
    deleted.write_text('["rome"]', encoding="utf-8")
    assert read_deleted_docs(deleted) == {"rome"}
    deleted.write_text('{"rome": 1}', encoding="utf-8")
    with pytest.raises(InputError, match="expected a JSON list of doc ids"):
        read_deleted_docs(deleted)
    outputs = [
        {"sources": ["paris"], "retrieved": ["paris", "oslo"]},
        {"sources": ["oslo"], "retrieved": ["oslo", "rome"]},
    ]
    check_no_deleted(RECORDS, outputs, {"nowhere"})
    with pytest.raises(InputError, match=r"question 'b' .* deleted doc\(s\) \['oslo'\]"):
        check_no_deleted(RECORDS, outputs, {"oslo"})


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a tiny bundle and what evaluate_generation and compare_retrievers leave."""
    root = tmp_path_factory.mktemp("evaluate")
    params_file = make_project(root, generator__max_new_tokens=3)
    params = load_params(params_file)
    paths = params.paths
    write_jsonl(paths.retrieval_docs, [d.model_dump() for d in tiny_docs()])
    for split, rows in tiny_qa().items():
        write_jsonl(paths.retrieval_qa_dir / f"{split}.jsonl", rows)
    test = [QARecord.model_validate(r) for r in tiny_qa()["test"]]
    write_jsonl(paths.generation_predictions, generation_rows(test))
    mean = {"mean": 0.5, "low": 0.4, "high": 0.6}
    write_json(
        paths.generation_metrics,
        {"real_test": {"closed_book": {"answer_f1": mean}, "base_rag": {"answer_f1": mean}}},
    )
    write_json(paths.retriever_comparison_metrics, {"test": {"bm25": {"ndcg@10": 0.5}}})
    encoder = make_tiny_encoder(root / "models")
    build_tiny_index(encoder, root / "index")
    fusion = {"rrf_k": 60, "dense_weight": 0.7, "bm25_weight": 0.3, "candidates": 10}
    write_json(root / "fusion.json", {"fusion": fusion})
    generator = make_tiny_generator(root / "models" / "generator")
    spec = components_spec(encoder, generator, params.generator, params.bundle, params.precision)
    save_bundle(root / "candidate", root / "index", root / "fusion.json", spec)
    return params_file


def test_stage_writes_per_question_scores_of_every_system_and_the_change_set(
    project: Path,
) -> None:
    root = project.parent
    params = load_params(project)
    # The retrained candidate (paths.bundle_dir) faces the baselines, question by question.
    shutil.copytree(root / "candidate", params.paths.bundle_dir)
    evaluate.main(project)
    metrics = json.loads(params.paths.evaluate_metrics.read_text(encoding="utf-8"))
    scores = read_scores(params.paths.evaluate_scores)
    assert set(scores) == {("test", "tuned_rag"), ("test", "closed_book"), ("test", "base_rag")}
    candidate = scores[("test", "tuned_rag")]
    assert candidate.ids == tuple(r["id"] for r in tiny_qa()["test"])
    assert candidate.version is None
    # metrics.json keeps the means of those very scores, and the retrieval-only baselines.
    assert metrics["tuned_rag"] == candidate.means()
    assert set(candidate.metrics) == {
        "exact_match", "answer_f1", "rouge_l", "supported",
        "recall_at_10", "ndcg_at_10", "mrr_at_10",
    }  # fmt: skip
    assert np.all(scores[("test", "base_rag")].metrics["answer_f1"] == 1.0)
    assert metrics["bm25"] == {"ndcg_at_10": 0.5}

    # A refreshed bundle (--bundle) faces the champion alone, on the test and change sets.
    change = root / "change.jsonl"
    write_jsonl(change, tiny_qa()["dev"])
    out = root / "judged"
    evaluate.main(project, bundle=root / "candidate", out=out, change_questions=change)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    scores = read_scores(out / params.paths.evaluate_scores.name)
    n_dev = len(tiny_qa()["dev"])
    assert set(scores) == {("test", "tuned_rag"), ("change_set", "tuned_rag")}
    assert "bm25" not in metrics and "base_rag" not in metrics
    assert scores[("test", "tuned_rag")].means() == candidate.means()
    assert metrics["change_set"]["n"] == n_dev
    assert metrics["change_set"]["tuned_rag"] == scores[("change_set", "tuned_rag")].means()
    assert len(scores[("change_set", "tuned_rag")].ids) == n_dev

    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith(f"# evaluate: test: real questions ({len(tiny_qa()['test'])})\n")
    assert f"change set: {n_dev} questions" in report

    # A doc-to-query question has no reference answer: the change set's scores keep the
    # retrieval metrics every question has, the report the answer metrics of those with one.
    asked = [*tiny_qa()["dev"], {**tiny_qa()["dev"][0], "id": "syn:no answer", "answers": []}]
    write_jsonl(change, asked)
    evaluate.main(project, bundle=root / "candidate", out=out, change_questions=change)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    changed = read_scores(out / params.paths.evaluate_scores.name)[("change_set", "tuned_rag")]
    assert set(changed.metrics) == {"recall_at_10", "ndcg_at_10", "mrr_at_10"}
    assert len(changed.ids) == n_dev + 1
    assert {"answer_f1", "recall_at_10"} <= set(metrics["change_set"]["tuned_rag"])

    # Only deletions: an empty change set, recorded as such.
    change.write_text("", encoding="utf-8")
    evaluate.main(project, bundle=root / "candidate", out=out, change_questions=change)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["change_set"] == {"n": 0}
    assert not any(key[0] == "change_set" for key in read_scores(out / "scores.jsonl"))


def test_stage_fails_when_an_answer_rests_on_a_deleted_doc(project: Path) -> None:
    root = project.parent
    deleted = root / "deleted.json"
    deleted.write_text(json.dumps([d.id for d in tiny_docs()]), encoding="utf-8")
    first = tiny_qa()["test"][0]["id"]
    out = root / "refused"
    with pytest.raises(InputError, match=rf"question '{first}' .* deleted doc"):
        evaluate.main(project, bundle=root / "candidate", out=out, deleted_docs=deleted)
    assert not out.exists()  # nothing written
