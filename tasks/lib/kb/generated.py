"""Generated (question, answer, passage) triples: the KB's own questions when its docs carry no
descriptions (a user's KB).

The local base generator writes a question about a doc (doc-to-query, with the
`synthesize_queries` prompt settings: `tasks.lib.generation.doc_queries`), then answers it with
the doc as its one passage, through the generator's own prompt contract (the `qa` instruction).
A small model answers in a sentence that restates the question ("The git-branch command is used
to create a new branch"), whatever the instruction says, so the answer *span* is taken from the
passage: the longest run of passage words the reply repeats (difflib's longest match), trimmed
of question and stop words at its ends. A reply that repeats nothing of the passage beyond the
question's own words is a guess, not a label. A triple is kept when the question is one clean,
new question whose doc the round-trip retriever finds again and the span is short, not the
title, and not given away by the question. `filter_triples` says why it dropped each one.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable
from difflib import SequenceMatcher
from typing import Any

from bm25s.stopwords import STOPWORDS_EN_PLUS

from tasks.lib.core.answers import normalize_answer
from tasks.lib.core.config import GeneratorParams, KbQuestionsParams
from tasks.lib.core.precision import Precision
from tasks.lib.core.records import KB_SPLITS, Doc, QARecord
from tasks.lib.generation.doc_queries import filter_questions
from tasks.lib.generation.generation_cache import CachedGenerator, GenerationStats
from tasks.lib.generation.generator import Decoding, GenerationItem, Passage, item_prompt
from tasks.lib.kb.questions import GENERATED_PREFIX

AnswerFn = Callable[[list[QARecord]], list[str]]
RanksFn = Callable[[list[str], list[str]], list[int | None]]


# Words that neither start nor end an answer span (SQuAD spans rarely do): bm25s's English list.
_EDGE_WORDS = frozenset(STOPWORDS_EN_PLUS)
_EDGE_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"  # and curly quotes


def _word_key(word: str) -> str:
    return word.casefold().strip(_EDGE_PUNCTUATION)


def answer_span(reply: str, question: str, passage: str) -> str:
    """The passage's words that the reply repeats longest, without question or stop words at
    either end ("" when the reply repeats no word of its own); the passage's spelling."""
    passage_words = re.findall(r"\S+", passage)
    passage_keys = [_word_key(w) for w in passage_words]
    reply_keys = [_word_key(w) for w in re.findall(r"\S+", reply)]
    match = SequenceMatcher(None, passage_keys, reply_keys, autojunk=False).find_longest_match()
    start, end = match.a, match.a + match.size
    asked = {_word_key(w) for w in question.split()}
    while start < end and (passage_keys[start] in _EDGE_WORDS or passage_keys[start] in asked):
        start += 1
    while end > start and (passage_keys[end - 1] in _EDGE_WORDS or not passage_keys[end - 1]):
        end -= 1
    return " ".join(passage_words[start:end]).strip(_EDGE_PUNCTUATION)


def answer_questions(
    answerer: CachedGenerator,
    records: list[QARecord],
    docs_by_id: dict[str, Doc],
    generator: GeneratorParams,
    batch_size: int,
    precision: Precision,
) -> tuple[list[str], GenerationStats]:
    """The generator's answer to each record's question, its doc the one passage (task `qa`)."""
    tokenizer, prompts = answerer.tokenizer, []
    for record in records:
        doc = docs_by_id[record.doc_ids[0]]
        item = GenerationItem(record.id, "qa", record.question, (), (Passage(doc.title, doc.text),))
        prompts.append(
            item_prompt(item, tokenizer, generator.instructions, generator.passage_tokens, 1)
        )
    return answerer.answers(prompts, batch_size, Decoding(generator.max_new_tokens, precision))


def triple_problem(question: str, answer: str, doc: Doc, max_answer_words: int) -> str | None:
    """Why (question, answer span, doc) is not a usable triple, or None when it is."""
    if not answer:
        return "answer_not_in_passage"
    if len(answer.split()) > max_answer_words:
        return "answer_too_long"
    if normalize_answer(answer) == normalize_answer(doc.title):
        return "answer_is_title"
    return None


def filter_triples(
    questions: list[QARecord],
    generated_answers: list[str],
    docs_by_id: dict[str, Doc],
    max_answer_words: int,
) -> tuple[list[QARecord], list[dict[str, Any]]]:
    """Canonical records (id `gen:<doc id>`, answers [span]) of the usable triples, and the
    others with their reasons."""
    kept: list[QARecord] = []
    rejected: list[dict[str, Any]] = []
    for record, generated in zip(questions, generated_answers, strict=True):
        doc = docs_by_id[record.doc_ids[0]]
        answer = answer_span(generated, record.question, doc.text)
        problem = triple_problem(record.question, answer, doc, max_answer_words)
        if problem is not None:
            rejected.append(
                {
                    "doc_id": doc.id,
                    "generated": record.question,
                    "answer": generated,
                    "reason": problem,
                }
            )
            continue
        kept.append(
            QARecord(
                id=f"{GENERATED_PREFIX}{doc.id}",
                question=record.question,
                answers=[answer],
                doc_ids=[doc.id],
                group=f"{GENERATED_PREFIX}{doc.id}",
                answerable=True,
            )
        )
    return kept, rejected


def generated_triples(
    docs: list[Doc],
    generated_questions: list[str],
    answer: AnswerFn,
    ranks_of: RanksFn,
    params: KbQuestionsParams,
    forbidden: set[str],
) -> tuple[list[QARecord], list[dict[str, Any]]]:
    """The usable triples of `docs` and their generated questions, and every rejected one.

    Questions are checked first (one question, new, round trip through `ranks_of`), so only
    their survivors are answered (`answer`, the expensive generation).
    """
    questions, rejected = filter_questions(
        docs, generated_questions, ranks_of, params.round_trip_k, forbidden
    )
    kept, bad_answers = filter_triples(
        questions, answer(questions), {d.id: d for d in docs}, params.max_answer_words
    )
    return kept, rejected + bad_answers


def split_by_doc(records: list[QARecord], params: KbQuestionsParams) -> dict[str, list[QARecord]]:
    """Seeded train / dev / held-out split by doc: a doc's questions all land in one split, so no
    held-out doc is ever trained on. With fewer docs than n_heldout + n_dev + n_train, each
    split shrinks in proportion (held-out, then dev, rounded up), so a low yield still leaves
    every split some questions."""
    by_doc: dict[str, list[QARecord]] = {}
    for record in records:
        by_doc.setdefault(record.doc_ids[0], []).append(record)
    doc_ids = sorted(by_doc)
    random.Random(params.seed).shuffle(doc_ids)
    wanted = params.n_heldout + params.n_dev + params.n_train
    share = min(1.0, len(doc_ids) / wanted) if wanted else 0.0
    n_heldout = math.ceil(params.n_heldout * share)
    bounds = (n_heldout, n_heldout + math.ceil(params.n_dev * share))
    heldout, dev, train = (
        doc_ids[: bounds[0]],
        doc_ids[bounds[0] : bounds[1]],
        doc_ids[bounds[1] : wanted],
    )
    return {
        name: [r for doc_id in split for r in by_doc[doc_id]]
        for name, split in zip(KB_SPLITS, (train, dev, heldout), strict=True)
    }
