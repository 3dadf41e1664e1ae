"""The model rule of the promotion gate on constructed per-question scores: what it compares
with what, and that it never promotes a worse model.

Every question here scores the same, so each paired interval has zero width and the rule's
bounds are met or missed exactly; tests/test_gate_paired.py gives the gate real noise.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.lib.core.config import GateParams
from tasks.lib.serving.promotion import model_gate

RULE = GateParams(
    primary=["answer_f1"],
    tracked=["recall_at_5", "latency_ms"],
    lower_is_better=["latency_ms"],
    margin=0.01,
    tolerance=0.02,
    change_metrics=["recall_at_5"],
    candidate="tuned_rag",
    baselines=["closed_book", "base_rag"],
    confidence=0.95,
    resamples=200,
    seed=0,
)
N = 40


def flat(**means: float) -> dict[str, np.ndarray]:
    """Per-question scores with these means, every question alike."""
    return {metric: np.full(N, value) for metric, value in means.items()}


CHAMPION = flat(answer_f1=0.50, recall_at_5=0.80, latency_ms=100.0)
BASELINES = {
    "closed_book": flat(answer_f1=0.20, latency_ms=50.0),
    "base_rag": flat(answer_f1=0.40, recall_at_5=0.70, latency_ms=90.0),
}
# Tolerance is absolute, in each metric's unit: 0.02 ms of latency, 0.02 of recall.


def test_better_on_primary_and_steady_elsewhere_promotes() -> None:
    candidate = flat(answer_f1=0.55, recall_at_5=0.79, latency_ms=99.0)
    decision = model_gate(candidate, CHAMPION, BASELINES, RULE)
    assert decision.promote and decision.against == "champion" and decision.rule == "model"
    diffs = {c.metric: c.diff for c in decision.checks}
    assert diffs["answer_f1"] == pytest.approx(0.05)
    assert diffs["latency_ms"] == pytest.approx(1.0)  # signed: positive is better
    assert decision.metrics()["gate.promote"] == 1.0
    assert decision.metrics()["gate.answer_f1.low"] == pytest.approx(0.05)
    assert decision.questions == {"test": N}


def test_worse_does_not_promote() -> None:
    candidate = flat(answer_f1=0.45, recall_at_5=0.85, latency_ms=80.0)
    decision = model_gate(candidate, CHAMPION, BASELINES, RULE)
    assert not decision.promote
    assert "primary answer_f1" in decision.reasons[1] and "not above" in decision.reasons[1]


@pytest.mark.parametrize("gain", [0.0, 0.01, 0.005])
def test_tie_or_gain_within_margin_does_not_promote(gain: float) -> None:
    candidate = dict(CHAMPION, answer_f1=CHAMPION["answer_f1"] + gain)
    assert not model_gate(candidate, CHAMPION, BASELINES, RULE).promote


def test_one_regression_beyond_tolerance_blocks_promotion() -> None:
    candidate = flat(answer_f1=0.60, recall_at_5=0.77, latency_ms=100.0)  # recall -0.03
    decision = model_gate(candidate, CHAMPION, BASELINES, RULE)
    assert not decision.promote
    failed = [c for c in decision.checks if not c.passed]
    assert [c.metric for c in failed] == ["recall_at_5"]
    assert failed[0].low == pytest.approx(-0.03)
    # Lower-is-better: 3 ms slower is a regression beyond 0.02 too.
    slower = flat(answer_f1=0.60, recall_at_5=0.80, latency_ms=103.0)
    assert not model_gate(slower, CHAMPION, BASELINES, RULE).promote


def test_regression_within_tolerance_still_promotes() -> None:
    candidate = flat(answer_f1=0.60, recall_at_5=0.785, latency_ms=100.0)
    assert model_gate(candidate, CHAMPION, BASELINES, RULE).promote


def test_no_champion_must_beat_the_best_baseline() -> None:
    beats = flat(answer_f1=0.45, recall_at_5=0.71, latency_ms=95.0)
    decision = model_gate(beats, None, BASELINES, RULE)
    assert decision.promote and decision.against == "baselines"
    f1 = next(c for c in decision.checks if c.metric == "answer_f1")
    assert (f1.reference_name, f1.reference) == ("base_rag", 0.40)  # the stronger baseline
    # Costs are not held against baselines: closed-book is always faster than RAG.
    latency = next(c for c in decision.checks if c.metric == "latency_ms")
    assert latency.passed and latency.reference is None
    # Beating closed-book only is not enough.
    assert not model_gate(dict(beats, answer_f1=np.full(N, 0.30)), None, BASELINES, RULE).promote


def test_nothing_to_compare_with_never_promotes() -> None:
    decision = model_gate(flat(answer_f1=0.99), None, {}, RULE)
    assert not decision.promote and "promote it by hand" in decision.reasons[1]
    assert decision.reasons[0].startswith("keep")


def test_missing_or_nan_metrics_block() -> None:
    missing_primary = flat(recall_at_5=0.9, latency_ms=1.0)
    assert not model_gate(missing_primary, CHAMPION, BASELINES, RULE).promote
    one_nan = flat(answer_f1=0.9, recall_at_5=0.9, latency_ms=1.0)
    one_nan["answer_f1"][3] = np.nan
    assert not model_gate(one_nan, CHAMPION, BASELINES, RULE).promote
    champion_without_f1 = flat(recall_at_5=0.8, latency_ms=100.0)
    good = flat(answer_f1=0.9, recall_at_5=0.9, latency_ms=1.0)
    assert not model_gate(good, champion_without_f1, BASELINES, RULE).promote


def test_never_promotes_a_model_worse_on_any_primary_metric() -> None:
    """Exhaustive over a grid: a promoted candidate always beats the champion on the primary
    metric by more than the margin, and never regresses a tracked metric beyond tolerance."""
    grid = [0.40, 0.49, 0.50, 0.51, 0.515, 0.60]
    for f1, recall, latency in itertools.product(grid, [0.70, 0.78, 0.79, 0.80, 0.9], [90, 100]):
        candidate = flat(answer_f1=f1, recall_at_5=recall, latency_ms=float(latency))
        decision = model_gate(candidate, CHAMPION, BASELINES, RULE)
        expected = f1 - 0.50 > 0.01 + 1e-12 and recall > 0.78 + 1e-12
        assert decision.promote == expected, (f1, recall, latency)
