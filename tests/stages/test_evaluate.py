"""The evaluate stage's scoring of bundle outputs and its one-table view of the baselines."""

from __future__ import annotations

import pytest

from tasks.evaluate import baseline_systems, score_outputs
from tasks.lib.core.records import Doc, QARecord

DOCS = {
    "paris": Doc(id="paris", title="Paris", text="Paris is the capital of France.", source="t"),
    "rome": Doc(id="rome", title="Rome", text="Rome is the capital of Italy.", source="t"),
    "oslo": Doc(id="oslo", title="Oslo", text="Oslo is the capital of Norway.", source="t"),
}
RECORDS = [
    QARecord(
        id="a", question="Capital of France?", answers=["Paris"], doc_ids=["paris"], group="a"
    ),
    QARecord(id="b", question="Capital of Italy?", answers=["Rome"], doc_ids=["rome"], group="b"),
]


def test_bundle_outputs_score_answers_and_rankings_by_hand() -> None:
    outputs = [
        {"answer": "paris.", "sources": ["paris"], "retrieved": ["paris", "oslo"]},
        {"answer": "the city of Oslo", "sources": ["oslo"], "retrieved": ["oslo", "rome"]},
    ]
    scores = score_outputs(RECORDS, outputs, DOCS, ["recall@1", "recall@10", "mrr@10"])
    assert scores["exact_match"] == 0.5  # normalization drops case and punctuation
    assert scores["answer_f1"] == 0.5  # "city oslo" shares no token with "rome"
    assert scores["supported"] == 0.5  # "paris." is in its cited passage, "city of Oslo" is not
    assert scores["recall_at_1"] == 0.5
    assert scores["recall_at_10"] == 1.0
    assert scores["mrr_at_10"] == pytest.approx(0.75)  # ranks 1 and 2


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
