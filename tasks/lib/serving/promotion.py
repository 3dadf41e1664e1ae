"""The promotion gate: may a challenger replace the champion? A pure function of numbers.

Rule (params.yaml `register.gate`): every *primary* metric must beat the reference by more
than `margin`, and no *tracked* metric may fall behind it by more than `tolerance`. The
reference is the champion's metrics on the same test split; with no champion yet it is the
best baseline for each primary metric, so the first champion must beat closed-book and
un-tuned RAG.
A tie never promotes, and a metric that cannot be compared blocks promotion rather than being
waved through: a gate that guesses is how a worse model ends up serving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tasks.lib.core.config import GateParams

Metrics = Mapping[str, float]


@dataclass(frozen=True)
class MetricCheck:
    """One metric's comparison; `delta` is signed so that positive always means better."""

    metric: str
    role: Literal["primary", "tracked"]
    candidate: float | None
    reference: float | None
    reference_name: str | None  # "champion" or the baseline that set the bar
    delta: float | None
    passed: bool
    note: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    against: Literal["champion", "baselines"]
    checks: list[MetricCheck] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def deltas(self) -> dict[str, float]:
        return {c.metric: c.delta for c in self.checks if c.delta is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"deltas": self.deltas}

    def metrics(self) -> dict[str, float]:
        """The decision as MLflow metrics: compare gates across runs in the UI."""
        return {"gate.promote": float(self.promote)} | {
            f"gate.delta.{metric}": delta for metric, delta in self.deltas.items()
        }


def best_baseline(
    metric: str, baselines: Mapping[str, Metrics], lower_is_better: bool
) -> tuple[str, float] | None:
    """The strongest baseline on `metric` (the bar to clear), among those that report it."""
    scored = [(name, m[metric]) for name, m in baselines.items() if metric in m]
    if not scored:
        return None
    pick = min if lower_is_better else max
    return pick(scored, key=lambda pair: pair[1])


def check_metric(
    metric: str,
    role: Literal["primary", "tracked"],
    candidate: Metrics,
    reference: tuple[str, float] | None,
    rule: GateParams,
) -> MetricCheck:
    """Judge one metric against its reference under the rule."""
    value = candidate.get(metric)
    ref_name, ref_value = reference if reference else (None, None)
    delta = None
    if value is None or not math.isfinite(value):
        passed, note = False, "the candidate does not report a finite value"
    elif ref_value is None or not math.isfinite(ref_value):
        # A tracked metric the reference lacks (closed-book has no recall) cannot regress;
        # a primary one cannot show the improvement the rule asks for.
        passed = role == "tracked"
        note = "nothing to compare with" if passed else "no reference, so no improvement shown"
    else:
        sign = -1.0 if metric in rule.lower_is_better else 1.0
        # Rounded so that float noise never turns an exact-margin tie into a pass.
        delta = round(sign * (value - ref_value), 9)
        if role == "primary":
            passed = delta > rule.margin
            verdict = "beats" if passed else "does not beat"
            verdict += f" the margin {rule.margin}"
        else:
            passed = delta >= -rule.tolerance
            verdict = "within" if passed else "regresses beyond"
            verdict += f" the tolerance {rule.tolerance}"
        note = f"{value:.4g} vs {ref_name} {ref_value:.4g} (delta {delta:+.4g}): {verdict}"
    return MetricCheck(
        metric, role, value, ref_value, ref_name, delta, passed, f"{role} {metric}: {note}"
    )


def promotion_gate(
    candidate: Metrics,
    champion: Metrics | None,
    baselines: Mapping[str, Metrics],
    rule: GateParams,
) -> Decision:
    """Decide whether `candidate` replaces `champion` (or, with none, becomes the first one).

    All metric names must be in one spelling (see `tracking.metric_key`); metrics neither
    primary nor tracked are ignored.
    """
    if champion is None and not baselines:
        return Decision(
            promote=False,
            against="baselines",
            reasons=[
                "no champion and no baselines: nothing shows the model is any good; "
                "promote it by hand (`ragloop promote`) if you are sure"
            ],
        )
    against: Literal["champion", "baselines"] = "champion" if champion is not None else "baselines"

    def reference(metric: str, role: str) -> tuple[str, float] | None:
        if champion is not None:
            return ("champion", champion[metric]) if metric in champion else None
        if role == "tracked":
            # Baselines set the bar on primary metrics only: closed-book is always faster and
            # cheaper than any RAG system, so a tracked cost would bar every first champion.
            return None
        return best_baseline(metric, baselines, metric in rule.lower_is_better)

    checks = [
        check_metric(m, role, candidate, reference(m, role), rule)
        for role, metrics in (("primary", rule.primary), ("tracked", rule.tracked))
        for m in metrics
    ]
    promote = all(c.passed for c in checks)
    keep = "champion" if champion is not None else "registry as it is (no champion)"
    summary = (
        f"promote: every primary metric beats the {against} and no tracked metric regresses"
        if promote
        else f"keep the {keep}: the rule does not hold"
    )
    # On a refusal the failed checks come first: they are the reason a person looks for.
    ordered = sorted(checks, key=lambda c: c.passed)
    reasons = [summary, *(c.note for c in ordered)]
    return Decision(promote=promote, against=against, checks=checks, reasons=reasons)
