"""Answer metrics.

EM and token F1 follow SQuAD v1.1 (normalize, best over gold answers); ROUGE-L is Google's
`rouge-score` on the same normalized text, so all three judge the same strings. `supported`
asks whether the predicted answer occurs (normalized, on token boundaries) in the passages the
system was shown, i.e. whether the answer is grounded rather than recalled or invented.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache

from rouge_score import rouge_scorer

from tasks.lib.core.answers import answer_in_text, normalize_answer

METRICS = ("exact_match", "answer_f1", "rouge_l", "supported")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    return max(_f1(prediction, a) for a in answers)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, answers: Sequence[str]) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), best over the gold answers."""
    pred = normalize_answer(prediction)
    return max(_rouge().score(normalize_answer(a), pred)["rougeL"].fmeasure for a in answers)


def supported(prediction: str, passages: Sequence[str]) -> float:
    return float(any(answer_in_text(prediction, text) for text in passages))


def score_prediction(
    prediction: str, answers: Sequence[str], passages: Sequence[str]
) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, answers),
        "answer_f1": token_f1(prediction, answers),
        "rouge_l": rouge_l(prediction, answers),
        "supported": supported(prediction, passages),
    }
