"""Generated (question, answer, passage) triples: which survive the filters, and why the others
do not; and the split by doc. The generator's texts are given (a tiny random model writes
nothing usable); the round trip is a real BM25 search over the tiny KB's index."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.lib.core.config import KbQuestionsParams
from tasks.lib.core.records import QARecord
from tasks.lib.kb.generated import filter_triples, generated_triples, split_by_doc
from tasks.lib.retrieval.retriever import Fusion, Retriever, round_trip_ranks
from tests.support.retrieval import build_tiny_index, repo_params, tiny_docs

DOCS = {d.id: d for d in tiny_docs()}


def kb_params(**overrides: object) -> KbQuestionsParams:
    return KbQuestionsParams.model_validate(repo_params()["kb_questions"] | overrides)


def question(doc_id: str, text: str) -> QARecord:
    return QARecord(id=f"syn:{doc_id}", question=text, answers=[], doc_ids=[doc_id], group=doc_id)


def test_a_triple_is_kept_only_with_a_short_span_of_its_passage() -> None:
    questions = [
        question("glacier", "What is a glacier formed from?"),
        question("volcano", "What does a volcano vent?"),
        question("violin", "How are the violin's strings tuned?"),
        question("chess", "Which game is played by two players?"),
        question("tea", "What is tea brewed from?"),
        question("saturn", "Which planet known for its bright rings is sixth from the Sun?"),
    ]
    replies = [  # a small model's replies; the span is what they repeat of the passage
        "A glacier is formed from compacted snow.",  # span "compacted snow": kept
        "Lava and smoke come out.",  # repeats nothing of the passage but a stop word
        "The violin's strings are tuned in fifths, on a bowed string instrument with four",
        "Chess.",  # the title itself
        "Tea is brewed from the cured leaves of the tea plant.",  # a 6-word span
        "Saturn is known for its bright rings.",  # only what the question already says
    ]
    kept, rejected = filter_triples(questions, replies, DOCS, max_answer_words=4)
    assert [(r.id, r.answers, r.doc_ids, r.group, r.answerable) for r in kept] == [
        ("gen:glacier", ["compacted snow"], ["glacier"], "gen:glacier", True)
    ]
    assert {row["doc_id"]: row["reason"] for row in rejected} == {
        "volcano": "answer_not_in_passage",
        "violin": "answer_too_long",  # "bowed string instrument with four strings tuned ..."
        "chess": "answer_is_title",
        "tea": "answer_too_long",
        "saturn": "answer_not_in_passage",
    }
    # A longer limit keeps the violin and tea spans; the rest fail for the same reasons.
    kept, _ = filter_triples(questions, replies, DOCS, max_answer_words=6)
    assert [(r.id, r.answers) for r in kept] == [
        ("gen:glacier", ["compacted snow"]),
        ("gen:violin", ["bowed string instrument with four"]),
        ("gen:tea", ["cured leaves of the tea plant"]),
    ]


@pytest.fixture(scope="module")
def bm25_ranks(
    tiny_encoders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Retriever:
    index = build_tiny_index(tiny_encoders[0], tmp_path_factory.mktemp("generated") / "index")
    return Retriever.load(index, Fusion(60, 0.5, 0.5, 10), precision="fp32")


def test_questions_are_checked_before_they_are_answered(bm25_ranks: Retriever) -> None:
    docs = [DOCS[i] for i in ("glacier", "volcano", "lighthouse", "saturn", "honeybee")]
    generated = [
        "Question: What forms a slow river of ice over centuries?",
        "Molten rock.",  # an answer, not a question
        "What forms a slow river of ice over centuries?",  # the glacier's question again
        "Which planet is the sixth from the Sun and has bright rings?",
        "What is sweet?",  # shares no word with the honeybee doc: BM25 cannot find it
    ]
    answers = {"glacier": "compacted snow", "saturn": "sixth planet from the Sun"}
    asked: list[str] = []

    def answer(records: list[QARecord]) -> list[str]:
        asked.extend(r.doc_ids[0] for r in records)
        return [answers[r.doc_ids[0]] for r in records]

    def ranks_of(questions: list[str], source_ids: list[str]) -> list[int | None]:
        return round_trip_ranks(bm25_ranks, questions, source_ids, 10, "bm25")

    params = kb_params(round_trip_k=10, max_answer_words=6)
    kept, rejected = generated_triples(docs, generated, answer, ranks_of, params, set())
    assert asked == ["glacier", "saturn"]  # only the questions that passed are answered
    assert [(r.id, r.answers) for r in kept] == [("gen:glacier", ["compacted snow"])]
    assert {row["doc_id"]: row["reason"] for row in rejected} == {
        "saturn": "answer_not_in_passage",  # every word of the span is in the question
        "volcano": "not_a_question",
        "lighthouse": "duplicate",
        "honeybee": "source_not_in_top_10",
    }


def gen(doc_id: str, n: int = 0) -> QARecord:
    return QARecord(
        id=f"gen:{doc_id}:{n}", question=f"q{n}?", answers=["a"], doc_ids=[doc_id], group=doc_id
    )


def test_split_by_doc_shares_out_a_low_yield_and_keeps_a_docs_questions_together() -> None:
    records = [gen(f"d{i}") for i in range(6)] + [gen("d0", 1), gen("d3", 1)]
    params = kb_params(n_train=10, n_dev=2, n_heldout=3, seed=4)
    splits = split_by_doc(records, params)
    docs_of = {name: {r.doc_ids[0] for r in split} for name, split in splits.items()}
    # 6 docs of the 15 asked for: each split gets its share, rounded up (held-out, dev first).
    assert [len(docs_of[name]) for name in ("heldout", "dev", "train")] == [2, 1, 3]
    assert not (docs_of["train"] & docs_of["dev"] or docs_of["train"] & docs_of["heldout"])
    assert not docs_of["dev"] & docs_of["heldout"]
    assert sorted(r.id for split in splits.values() for r in split) == sorted(r.id for r in records)
    # Fewer docs than asked for: every split shrinks in proportion, none is left empty.
    few = split_by_doc(records[:3], params)  # 3 docs of 15 asked: a fifth
    assert [len({r.doc_ids[0] for r in few[n]}) for n in ("heldout", "dev", "train")] == [1, 1, 1]
    assert split_by_doc(records, params) == splits  # seeded
