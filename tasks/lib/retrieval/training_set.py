"""The retriever's training set: what `finetune_retriever` learns from, and nothing else.

Stage `retriever_training_set` builds it; `finetune_retriever` reads only this file (plus the
base encoder), so DVC reruns the training exactly when the set's bytes change.

Training pairs are (question, gold passage) from the real train split and, when enabled, from
`synthesize_queries`, one per gold doc present in the KB, real pairs first, each in its file's
order. Each pair carries `negatives.count` hard negatives mined from the base index over the
whole KB: a candidate is skipped when it is a gold doc of the question (all of them, for a
question with several) or scores within `margin` of the gold, since such a near-tie is more
often an unlabelled answer than a wrong one.

The dev corpus ranks checkpoints during training. Encoding the whole KB at every evaluation is
slow on a CPU and grows with the KB, so by default it is a fixed subsample: the dev gold docs,
each dev question's top base-encoder candidates (the docs that can actually outrank the gold)
and random KB docs up to `eval_corpus`.

What an added doc changes: mining runs against the current base index, so a new doc that ranks
above a pair's current negative becomes that negative (the set changes and the retriever is
retrained: the new doc is real signal), and so does one entering a dev question's top
candidates. A doc that enters no pair's negatives and no dev candidate list leaves the pairs
and those candidates byte-identical. Two draws depend on the KB as a whole, though: the random
dev-corpus fill samples the other docs (sorted by id), so any added doc reshuffles it when
`eval_corpus` is above the gold and candidates and below the KB size (0, the whole KB, takes
every new doc in), and the random negatives of a pair left short of mined ones (its gold
outside the mining window, or too few candidates below it) are drawn by position in the KB's
doc list, which an added doc can shift. An `eval_corpus` at most the dev gold plus candidates
(1 does) has no random fill.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from tasks.lib.core.config import FinetuneRetrieverParams, HardNegativesParams
from tasks.lib.core.io import InputError, parse_record, read_text, write_json
from tasks.lib.core.records import QARecord

if TYPE_CHECKING:  # the mining stage passes a Retriever in; the training stage only reads sets
    from tasks.lib.retrieval.retriever import Retriever

EVAL_HARD_CANDIDATES = 10  # per dev question, from the base encoder, in the dev subsample
SOURCES = ("real", "synthetic")
# (questions, depth) -> per question (doc id, score), best first
Search = Callable[[list[str], int], list[list[tuple[str, float]]]]


@dataclass(frozen=True)
class TrainingPair:
    """One (question, gold doc) pair; `gold` is every gold doc of the question."""

    query: str
    doc_id: str
    gold: frozenset[str]
    source: str  # "real" or "synthetic"


def training_pairs(records: Sequence[QARecord], known: set[str], source: str) -> list[TrainingPair]:
    """One pair per gold doc present in the KB (a question with two gold docs gives two)."""
    pairs = []
    for record in records:
        gold = frozenset(d for d in record.doc_ids if d in known)
        pairs += [
            TrainingPair(record.question, d, gold, source) for d in record.doc_ids if d in gold
        ]
    return pairs


def dense_search(retriever: Retriever) -> Search:
    """The base index's dense search as (doc id, cosine) lists, best first."""
    ids = [doc["id"] for doc in retriever.docs]

    def search(queries: list[str], depth: int) -> list[list[tuple[str, float]]]:
        return [[(ids[r], s) for r, s in ranked] for ranked in retriever.dense(queries, depth)]

    return search


def mine_hard_negatives(
    search: Search,
    pairs: Sequence[TrainingPair],
    all_ids: Sequence[str],
    params: HardNegativesParams,
    seed: int,
) -> tuple[list[list[str]], dict[str, int]]:
    """`params.count` negative doc ids per pair, from the base index's ranking of its question.

    Candidates are ranks range_min+1 .. range_max once the question's gold docs (all of them,
    by id) are removed; a candidate must score below the lowest gold score by the margin
    (sentence-transformers' `mine_hard_negatives` rule; strictly below, so a copy of a gold doc
    under another id never passes). A gold doc outside the searched window scores below every
    candidate, so then none passes, as in the library. Pairs left short get random KB docs, so
    no real label is lost. The index is searched rather than the KB re-encoded: that costs one
    query batch instead of encoding every passage again after each KB change.
    """
    gold_of: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        gold_of[pair.query] |= pair.gold
    queries = list(gold_of)
    depth = params.range_max + max(len(g) for g in gold_of.values())
    mined: dict[str, list[str]] = {}
    stats = {"mined": 0, "random_filled": 0, "skipped_by_margin": 0}
    for query, ranked in zip(queries, search(queries, depth), strict=True):
        gold = gold_of[query]
        gold_scores = [score for doc_id, score in ranked if doc_id in gold]
        window = [(d, s) for d, s in ranked if d not in gold][params.range_min : params.range_max]
        passing = []
        if len(gold_scores) == len(gold):  # else a gold doc scores below the whole window
            floor = min(gold_scores)
            gap = params.margin * (abs(floor) if params.margin_type == "relative" else 1.0)
            passing = [d for d, s in window if s < floor - gap]
        stats["skipped_by_margin"] += len(window) - len(passing)
        mined[query] = passing[: params.count]
    rng = random.Random(seed)
    negatives = []
    for pair in pairs:
        chosen = list(mined[pair.query])
        stats["mined"] += len(chosen)
        while len(chosen) < params.count:
            candidate = rng.choice(all_ids)
            if candidate not in gold_of[pair.query] and candidate not in chosen:
                chosen.append(candidate)
                stats["random_filled"] += 1
        negatives.append(chosen)
    return negatives, stats


def evaluation_corpus(
    dev: Sequence[QARecord],
    candidates: Sequence[Sequence[str]],
    doc_ids: Sequence[str],
    size: int,
    seed: int,
) -> list[str]:
    """Doc ids of the dev corpus: gold docs, the base encoder's `candidates`, random fill to
    `size` (0: every doc). Sorted, so a rerun builds the same corpus."""
    if size == 0 or size >= len(doc_ids):
        return sorted(doc_ids)
    chosen = {d for r in dev for d in r.doc_ids} | {d for ranked in candidates for d in ranked}
    rest = sorted(set(doc_ids) - chosen)
    fill = max(0, size - len(chosen))
    chosen |= set(random.Random(seed).sample(rest, min(fill, len(rest))))
    return sorted(chosen)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PassageRow(_Row):
    """A KB passage as both indexes embed it (`index_store.passage_text`)."""

    id: StrictStr
    text: StrictStr


class PairRow(_Row):
    """One training example: the question, its gold passage, its negatives, best first."""

    query: StrictStr
    source: Literal["real", "synthetic"]
    positive: PassageRow
    negatives: list[PassageRow]


class DevQuery(_Row):
    id: StrictStr
    question: StrictStr
    relevant: list[StrictStr]  # its gold docs in the dev corpus, sorted


class RetrieverTrainingSet(_Row):
    """Pairs in training order and the dev evaluation data, with the encoder that mined them."""

    encoder_fingerprint: StrictStr  # the base encoder: negatives and candidates are its ranking
    pairs: list[PairRow] = Field(min_length=1)
    dev_queries: list[DevQuery]
    dev_corpus: list[PassageRow]  # sorted by id

    @model_validator(mode="after")
    def _same_negative_count(self) -> RetrieverTrainingSet:
        """The dataset has one column per negative rank, so every pair needs as many."""
        counts = {len(pair.negatives) for pair in self.pairs}
        if len(counts) > 1:
            raise ValueError(f"pairs have different numbers of negatives: {sorted(counts)}")
        return self


def build_training_set(
    passages: dict[str, str],
    real: Sequence[QARecord],
    synthetic: Sequence[QARecord],
    dev: Sequence[QARecord],
    base: Retriever,
    tune: FinetuneRetrieverParams,
) -> tuple[RetrieverTrainingSet, dict[str, Any]]:
    """Pair the `real` and `synthetic` questions, mine their negatives and pick the dev corpus
    with the base index; also return the statistics (pair counts, mining, dev sizes).
    `passages` maps every KB doc id, in KB order, to its text (random draws index that order)."""
    known = set(passages)
    pairs = training_pairs(real, known, "real") + training_pairs(synthetic, known, "synthetic")
    if not pairs:
        raise InputError("retriever_training_set: no training pair has its gold doc in the KB")
    mining: dict[str, int] = {}
    negatives: list[list[str]] = [[] for _ in pairs]
    if tune.negatives.count:
        negatives, mining = mine_hard_negatives(
            dense_search(base), pairs, list(passages), tune.negatives, tune.seed
        )
    dev = [r for r in dev if set(r.doc_ids) & known]
    hard = [
        [hit.id for hit in hits]
        for hits in base.search([r.question for r in dev], k=EVAL_HARD_CANDIDATES, mode="dense")
    ]
    corpus_ids = evaluation_corpus(dev, hard, list(passages), tune.eval_corpus, tune.seed)
    in_corpus = set(corpus_ids)
    training_set = RetrieverTrainingSet(
        encoder_fingerprint=base.manifest["encoder"]["fingerprint"],
        pairs=[
            PairRow(
                query=pair.query,
                source=pair.source,
                positive=PassageRow(id=pair.doc_id, text=passages[pair.doc_id]),
                negatives=[PassageRow(id=n, text=passages[n]) for n in chosen],
            )
            for pair, chosen in zip(pairs, negatives, strict=True)
        ],
        dev_queries=[
            DevQuery(id=r.id, question=r.question, relevant=sorted(set(r.doc_ids) & in_corpus))
            for r in dev
        ],
        dev_corpus=[PassageRow(id=d, text=passages[d]) for d in corpus_ids],
    )
    stats = {
        "pairs": pair_counts(training_set),
        "negatives_per_pair": tune.negatives.count,
        "mining": mining,
        "dev_questions": len(dev),
        "dev_corpus_docs": len(corpus_ids),
    }
    return training_set, stats


def pair_counts(training_set: RetrieverTrainingSet) -> dict[str, int]:
    return {source: sum(p.source == source for p in training_set.pairs) for source in SOURCES}


def write_training_set(path: Path, training_set: RetrieverTrainingSet) -> None:
    """Plain JSON in a fixed key and row order: the same set is the same bytes."""
    write_json(path, training_set.model_dump(mode="json"))


def read_training_set(path: Path) -> RetrieverTrainingSet:
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(
            f"{path}: malformed JSON ({err.msg}, line {err.lineno}); "
            "rerun the retriever_training_set stage"
        ) from err
    return parse_record(raw, RetrieverTrainingSet, str(path))
