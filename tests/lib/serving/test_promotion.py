"""The promotion gate on constructed metrics: it never promotes a worse model."""

from __future__ import annotations

import itertools

import pytest

from tasks.lib.core.config import GateParams
from tasks.lib.serving.promotion import promotion_gate

RULE = GateParams(
    primary=["answer_f1"],
    tracked=["recall_at_5", "latency_ms"],
    lower_is_better=["latency_ms"],
    margin=0.01,
    tolerance=0.02,
    candidate="tuned_rag",
    baselines=["closed_book", "base_rag"],
)
CHAMPION = {"answer_f1": 0.50, "recall_at_5": 0.80, "latency_ms": 100.0}
BASELINES = {
    "closed_book": {"answer_f1": 0.20, "latency_ms": 50.0},
    "base_rag": {"answer_f1": 0.40, "recall_at_5": 0.70, "latency_ms": 90.0},
}
# Tolerance is absolute, in each metric's unit: 0.02 ms of latency, 0.02 of recall.


def test_better_on_primary_and_steady_elsewhere_promotes() -> None:
    candidate = {"answer_f1": 0.55, "recall_at_5": 0.79, "latency_ms": 99.0}
    decision = promotion_gate(candidate, CHAMPION, BASELINES, RULE)
    assert decision.promote and decision.against == "champion"
    assert decision.deltas["answer_f1"] == pytest.approx(0.05)
    assert decision.deltas["latency_ms"] == pytest.approx(1.0)  # signed: positive is better
    assert decision.metrics()["gate.promote"] == 1.0


def test_worse_does_not_promote() -> None:
    candidate = {"answer_f1": 0.45, "recall_at_5": 0.85, "latency_ms": 80.0}
    decision = promotion_gate(candidate, CHAMPION, BASELINES, RULE)
    assert not decision.promote
    assert "primary answer_f1" in decision.reasons[1] and "does not beat" in decision.reasons[1]


@pytest.mark.parametrize("gain", [0.0, 0.01, 0.005])
def test_tie_or_gain_within_margin_does_not_promote(gain: float) -> None:
    candidate = dict(CHAMPION, answer_f1=CHAMPION["answer_f1"] + gain)
    assert not promotion_gate(candidate, CHAMPION, BASELINES, RULE).promote


def test_one_regression_beyond_tolerance_blocks_promotion() -> None:
    candidate = {"answer_f1": 0.60, "recall_at_5": 0.77, "latency_ms": 100.0}  # recall -0.03
    decision = promotion_gate(candidate, CHAMPION, BASELINES, RULE)
    assert not decision.promote
    failed = [c for c in decision.checks if not c.passed]
    assert [c.metric for c in failed] == ["recall_at_5"]
    assert failed[0].delta == pytest.approx(-0.03)
    # Lower-is-better: 3 ms slower is a regression beyond 0.02 too.
    slower = {"answer_f1": 0.60, "recall_at_5": 0.80, "latency_ms": 103.0}
    assert not promotion_gate(slower, CHAMPION, BASELINES, RULE).promote


def test_regression_within_tolerance_still_promotes() -> None:
    candidate = {"answer_f1": 0.60, "recall_at_5": 0.785, "latency_ms": 100.0}
    assert promotion_gate(candidate, CHAMPION, BASELINES, RULE).promote


def test_no_champion_must_beat_the_best_baseline() -> None:
    beats = {"answer_f1": 0.45, "recall_at_5": 0.71, "latency_ms": 95.0}
    decision = promotion_gate(beats, None, BASELINES, RULE)
    assert decision.promote and decision.against == "baselines"
    f1 = next(c for c in decision.checks if c.metric == "answer_f1")
    assert (f1.reference_name, f1.reference) == ("base_rag", 0.40)  # the stronger baseline
    # Costs are not held against baselines: closed-book is always faster than RAG.
    latency = next(c for c in decision.checks if c.metric == "latency_ms")
    assert latency.passed and latency.reference is None
    # Beating closed-book only is not enough.
    assert not promotion_gate(dict(beats, answer_f1=0.30), None, BASELINES, RULE).promote


def test_nothing_to_compare_with_never_promotes() -> None:
    decision = promotion_gate({"answer_f1": 0.99}, None, {}, RULE)
    assert not decision.promote and "promote it by hand" in decision.reasons[0]


def test_missing_or_nan_metrics_block() -> None:
    missing_primary = {"recall_at_5": 0.9, "latency_ms": 1.0}
    assert not promotion_gate(missing_primary, CHAMPION, BASELINES, RULE).promote
    nan = {"answer_f1": float("nan"), "recall_at_5": 0.9, "latency_ms": 1.0}
    assert not promotion_gate(nan, CHAMPION, BASELINES, RULE).promote
    champion_without_f1 = {"recall_at_5": 0.8, "latency_ms": 100.0}
    good = {"answer_f1": 0.9, "recall_at_5": 0.9, "latency_ms": 1.0}
    assert not promotion_gate(good, champion_without_f1, BASELINES, RULE).promote


def test_never_promotes_a_model_worse_on_any_primary_metric() -> None:
    """Exhaustive over a grid: a promoted candidate always beats the champion on the primary
    metric by more than the margin, and never regresses a tracked metric beyond tolerance."""
    grid = [0.40, 0.49, 0.50, 0.51, 0.515, 0.60]
    for f1, recall, latency in itertools.product(grid, [0.70, 0.78, 0.79, 0.80, 0.9], [90, 100]):
        candidate = {"answer_f1": f1, "recall_at_5": recall, "latency_ms": float(latency)}
        decision = promotion_gate(candidate, CHAMPION, BASELINES, RULE)
        expected = f1 - 0.50 > 0.01 + 1e-12 and recall >= 0.78 - 1e-12
        assert decision.promote == expected, candidate
