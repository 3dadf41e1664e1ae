"""The gate's paired test on constructed per-question scores with real noise: chance never
promotes, a clear gain does, and the refresh rule judges an index over a changed KB."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.lib.core.config import GateParams
from tasks.lib.core.stats import bootstrap_interval, paired_difference
from tasks.lib.serving.promotion import model_gate, refresh_gate

RULE = GateParams(
    primary=["answer_f1"],
    tracked=["exact_match", "recall_at_10"],
    lower_is_better=[],
    margin=0.01,
    tolerance=0.02,
    change_metrics=["recall_at_10", "answer_f1"],
    candidate="tuned_rag",
    baselines=["closed_book", "base_rag"],
    confidence=0.95,
    resamples=1000,
    seed=0,
)
N = 158


def token_f1_like(rng: np.random.Generator, n: int = N) -> np.ndarray:
    """Mostly wrong (0), some exactly right (1), the rest partial: a real test split's shape."""
    kind, partial = rng.random(n), rng.beta(2, 3, n)
    return np.where(kind < 0.65, 0.0, np.where(kind < 0.8, 1.0, partial))


def system(f1: np.ndarray, recall: np.ndarray) -> dict[str, np.ndarray]:
    return {"answer_f1": f1, "exact_match": (f1 == 1.0).astype(float), "recall_at_10": recall}


def redrawn(scores: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Another model's answers: a share of the questions answered anew, no better on average."""
    return np.where(rng.random(len(scores)) < share, token_f1_like(rng, len(scores)), scores)


def test_paired_difference_is_the_bootstrap_of_the_differences() -> None:
    a, b = np.array([1.0, 0.0, 1.0, 0.5]), np.array([0.0, 0.0, 1.0, 0.0])
    got = paired_difference(a, b, 500, 0.9, 3)
    assert got == bootstrap_interval(a - b, 500, 0.9, 3) | {"n": 4}
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference(a, b[:3], 500, 0.9, 3)


def test_an_equal_candidate_with_noise_never_promotes() -> None:
    """Thirty candidates no better than the champion, each answering a third of the questions
    differently: the old rule (mean gain > margin) would have promoted some; this one none."""
    rng = np.random.default_rng(7)
    mean_gains, promoted = [], 0
    for _ in range(30):
        champion_f1 = token_f1_like(rng)
        recall = (rng.random(N) < 0.8).astype(float)
        champion = system(champion_f1, recall)
        candidate = system(redrawn(champion_f1, 0.35, rng), recall)
        mean_gains.append(candidate["answer_f1"].mean() - champion_f1.mean())
        promoted += model_gate(candidate, champion, {}, RULE).promote
    assert promoted == 0
    assert sum(g > RULE.margin for g in mean_gains) >= 3  # chance alone beats the margin


def test_an_identical_candidate_never_promotes() -> None:
    champion = system(token_f1_like(np.random.default_rng(1)), np.ones(N))
    decision = model_gate(champion, champion, {}, RULE)
    assert not decision.promote
    f1 = decision.checks[0]
    assert (f1.diff, f1.low, f1.high, f1.n) == (0.0, 0.0, 0.0, N)


def test_a_clear_gain_promotes() -> None:
    rng = np.random.default_rng(2)
    for _ in range(10):
        champion_f1 = token_f1_like(rng)
        recall = (rng.random(N) < 0.8).astype(float)
        better = np.where(rng.random(N) < 0.25, 1.0, redrawn(champion_f1, 0.2, rng))  # ~ +0.15
        decision = model_gate(system(better, recall), system(champion_f1, recall), {}, RULE)
        assert decision.promote, decision.reasons
        f1 = decision.checks[0]
        assert f1.low > RULE.margin and f1.low < f1.diff < f1.high


def test_a_gain_inside_the_noise_does_not_promote() -> None:
    """+0.03 on the mean (the old rule's margin is beaten) from 12 questions won and 9 lost out
    of 100: the interval of the difference reaches well below zero."""
    champion = np.zeros(100)
    champion[12:21] = 1.0
    candidate = np.zeros(100)
    candidate[:12] = 1.0
    recall = np.ones(100)
    decision = model_gate(system(candidate, recall), system(champion, recall), {}, RULE)
    f1 = decision.checks[0]
    assert f1.diff == pytest.approx(0.03) and f1.low < 0 < f1.high
    assert not decision.promote
    assert decision.reasons[0].startswith("keep the champion")


def test_pairing_sees_a_consistent_gain_that_two_intervals_would_miss() -> None:
    """Ten questions won, none lost: the systems' own intervals overlap, the paired one does
    not reach the margin's side."""
    rng = np.random.default_rng(3)
    champion = token_f1_like(rng, 100)
    candidate = champion.copy()
    candidate[np.flatnonzero(champion == 0.0)[:10]] = 1.0
    recall = np.ones(100)
    own = [bootstrap_interval(s, 1000, 0.95, 0) for s in (champion, candidate)]
    assert own[1]["low"] < own[0]["high"]  # unpaired: indistinguishable
    decision = model_gate(system(candidate, recall), system(champion, recall), {}, RULE)
    assert decision.promote and decision.checks[0].low > RULE.margin


def test_no_champion_is_paired_with_the_best_baseline() -> None:
    rng = np.random.default_rng(4)
    base_rag = token_f1_like(rng)
    closed_book = np.where(rng.random(N) < 0.5, 0.0, base_rag)
    tuned = np.where(rng.random(N) < 0.3, 1.0, base_rag)
    baselines = {"closed_book": {"answer_f1": closed_book}, "base_rag": {"answer_f1": base_rag}}
    recall = np.ones(N)
    decision = model_gate(system(tuned, recall), None, baselines, RULE)
    assert decision.promote and decision.against == "baselines"
    f1 = decision.checks[0]
    assert f1.reference_name == "base_rag" and f1.n == N
    # Tracked metrics are not held against baselines (closed-book has no ranking).
    assert all(c.passed and c.diff is None for c in decision.checks[1:])
    # A candidate that only beats closed-book does not become the first champion.
    weak = system(np.where(rng.random(N) < 0.5, closed_book, base_rag), recall)
    assert not model_gate(weak, None, baselines, RULE).promote


def refresh_sets(
    rng: np.random.Generator, change_gain: float, standing_loss: float
) -> tuple[dict, dict, dict, dict]:
    """Champion and refreshed index on the standing test set and on a 60-question change set
    (the champion's index lacks the new docs: low recall there)."""
    f1, recall = token_f1_like(rng), (rng.random(N) < 0.85).astype(float)
    champion = system(f1, recall)
    worse = np.where(rng.random(N) < standing_loss, 0.0, f1)
    # The same models: a standing answer changes only where the new docs reach its top k.
    worse[np.flatnonzero((f1 > 0) & (f1 < 1))[0]] -= 0.2
    candidate = system(worse, recall)
    change_f1, change_recall = token_f1_like(rng, 60) * 0.5, (rng.random(60) < 0.2).astype(float)
    change_champion = system(change_f1, change_recall)
    found = rng.random(60) < change_gain
    change_candidate = system(np.where(found, 1.0, change_f1), np.where(found, 1.0, change_recall))
    return candidate, champion, change_candidate, change_champion


def test_refresh_no_worse_and_better_on_the_change_set_promotes() -> None:
    sets = refresh_sets(np.random.default_rng(5), change_gain=0.6, standing_loss=0.0)
    decision = refresh_gate(*sets, RULE)
    assert decision.promote, decision.reasons
    assert decision.rule == "refresh" and decision.questions == {"test": N, "change_set": 60}
    change = [c for c in decision.checks if c.question_set == "change_set"]
    assert [c.metric for c in change] == RULE.change_metrics
    assert all(c.bound == 0.0 and c.low > 0 for c in change)
    standing = [c for c in decision.checks if c.question_set == "test"]
    assert all(c.bound == -RULE.tolerance for c in standing)  # non-inferiority, no margin
    metrics = decision.metrics()
    assert metrics["gate.change_set.recall_at_10.low"] > 0
    assert metrics["gate.questions.change_set"] == 60.0
    summary = json.loads(json.dumps(decision.summary()))  # small and JSON-safe
    assert set(summary["intervals"]) == {
        "answer_f1",
        "change_set.recall_at_10",
        "change_set.answer_f1",
    }
    assert json.loads(json.dumps(decision.to_dict()))["checks"][0]["n"] == N


def test_refresh_not_better_on_the_change_set_does_not_promote() -> None:
    # The new docs found no better than before (a tie on the change set): no gain shown.
    candidate, champion, _, change_champion = refresh_sets(np.random.default_rng(6), 0.0, 0.0)
    decision = refresh_gate(candidate, champion, change_champion, change_champion, RULE)
    assert not decision.promote
    # Worse on the change set: blocked too.
    sets = refresh_sets(np.random.default_rng(6), change_gain=0.6, standing_loss=0.0)
    decision = refresh_gate(sets[0], sets[1], sets[3], sets[2], RULE)
    assert not decision.promote
    assert any(c.question_set == "change_set" and not c.passed for c in decision.checks)


def test_refresh_regressing_on_the_standing_set_does_not_promote() -> None:
    sets = refresh_sets(np.random.default_rng(8), change_gain=0.6, standing_loss=0.2)
    decision = refresh_gate(*sets, RULE)
    assert not decision.promote
    failed = [c for c in decision.checks if not c.passed]
    assert failed and all(c.question_set == "test" for c in failed)
    assert decision.reasons[1] == failed[0].note


def test_refresh_judges_the_change_set_on_what_it_could_score() -> None:
    # Questions written from the new docs have no reference answer: retrieval alone decides.
    candidate, champion, change, change_champion = refresh_sets(np.random.default_rng(5), 0.6, 0)
    retrieval_only = [{"recall_at_10": s["recall_at_10"]} for s in (change, change_champion)]
    decision = refresh_gate(candidate, champion, *retrieval_only, RULE)
    assert decision.promote, decision.reasons
    assert [c.metric for c in decision.checks if c.question_set == "change_set"] == ["recall_at_10"]
    assert any("change answer_f1: not scored" in reason for reason in decision.reasons)


def test_refresh_with_an_empty_change_set_needs_only_non_inferiority() -> None:
    candidate, champion, _, _ = refresh_sets(np.random.default_rng(9), 0.0, 0.0)
    decision = refresh_gate(candidate, champion, {}, {}, RULE)
    assert decision.promote, decision.reasons
    assert decision.questions["change_set"] == 0
    assert all(c.question_set == "test" for c in decision.checks)
    assert "change set is empty" in decision.reasons[1]
    worse, _, _, _ = refresh_sets(np.random.default_rng(9), 0.0, 0.2)
    assert not refresh_gate(worse, champion, {}, {}, RULE).promote


def test_a_small_change_set_promotes_a_gain_that_is_never_worse() -> None:
    # Two questions about an added doc (the champion cannot find it), two about an edited doc
    # both find: a tie cannot be excluded at 95 % on four questions, yet nothing is worse.
    standing = {
        m: np.full(N, 0.5) for m in ("answer_f1", "exact_match", "ndcg_at_10", "recall_at_10")
    }
    found, champion_found = np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 1.0])
    decision = refresh_gate(
        standing, standing, {"recall_at_10": found}, {"recall_at_10": champion_found}, RULE
    )
    assert decision.promote, decision.reasons
    (change,) = [c for c in decision.checks if c.question_set == "change_set"]
    assert change.low == 0.0 and change.diff == 0.5
    # A tie is no gain, and one question lost is a possible loss: neither promotes.
    for candidate in (champion_found, np.array([1.0, 1.0, 0.0, 1.0])):
        decision = refresh_gate(
            standing, standing, {"recall_at_10": candidate}, {"recall_at_10": champion_found}, RULE
        )
        assert not decision.promote, decision.reasons
