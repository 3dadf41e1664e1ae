"""The promotion gate: may a candidate replace the champion? Pure functions of per-question scores.

Means alone cannot tell: on a test split of a hundred-odd questions the standard error of a
token-F1 difference is several points, so two means compared with a small margin promote and
block on chance. Every check here is a paired bootstrap interval (`tasks.lib.core.stats`) of
the per-question difference candidate - reference over the same questions, signed so that
positive is better, and the rule asks where its lower end lies (params.yaml `register.gate`):

- a model candidate (`model_gate`): each *primary* metric's lower end above `margin` (a gain
  that is not noise), each *tracked* metric's above `-tolerance` (no loss beyond it). The
  reference is the champion; with none yet, the best baseline on each primary metric, so the
  first champion must beat closed-book and un-tuned RAG (tracked metrics are not held against
  baselines: closed-book is always faster and has no ranking to compare).
- an index refresh (`refresh_gate`: the champion's models over a changed KB): non-inferior on
  the standing test set on primary and tracked metrics, and a gain (lower end above 0) on
  `change_metrics` on the questions about the added or modified docs; when there are none
  (only deletions), non-inferiority decides alone.

A tie never promotes, and a metric that cannot be compared blocks promotion rather than being
waved through: a gate that guesses is how a worse model ends up serving.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from tasks.lib.core.config import GateParams
from tasks.lib.core.stats import paired_difference
from tasks.lib.serving.scores import CHANGE_SET, TEST_SET

Scores = Mapping[str, Sequence[float] | np.ndarray]  # metric -> one value per question
Role = Literal["primary", "tracked", "change"]
Rule = Literal["model", "refresh"]


@dataclass(frozen=True)
class Comparison:
    """Candidate minus reference on one metric over `n` questions, and the interval of that
    difference; `diff`, `low` and `high` are signed so that positive is better."""

    metric: str
    question_set: str
    reference_name: str
    candidate: float
    reference: float
    diff: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class MetricCheck:
    """One metric's verdict: passed when the interval's lower end lies above `bound`."""

    metric: str
    role: Role
    question_set: str
    candidate: float | None  # means over the questions
    reference: float | None
    reference_name: str | None  # "champion" or the baseline that set the bar
    diff: float | None
    low: float | None
    high: float | None
    n: int
    bound: float
    passed: bool
    note: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    rule: Rule
    against: Literal["champion", "baselines"]
    confidence: float
    questions: dict[str, int]  # question set -> questions judged
    checks: list[MetricCheck]
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The decision as MLflow metrics (`gate.<metric>.diff/low/high`, change-set checks
        under `gate.change_set.`): compare gates across runs in the UI."""
        values = {"gate.promote": float(self.promote)}
        values |= {f"gate.questions.{name}": float(n) for name, n in self.questions.items()}
        for check in self.checks:
            if check.diff is None:
                continue
            key = f"gate.{_set_prefix(check.question_set)}{check.metric}"
            values |= {
                f"{key}.diff": check.diff,
                f"{key}.low": check.low,
                f"{key}.high": check.high,
            }
        return values

    def summary(self) -> dict[str, Any]:
        """A few hundred characters: the verdict and the intervals that decide it (primary and
        change-set metrics), for registry tags and the promotion history."""
        shown = [c for c in self.checks if c.role != "tracked" and c.diff is not None]
        return {
            "rule": self.rule,
            "promote": self.promote,
            "against": self.against,
            "confidence": self.confidence,
            "questions": self.questions,
            "intervals": {
                f"{_set_prefix(c.question_set)}{c.metric}": {
                    "diff": round(c.diff, 4),  # type: ignore[arg-type]
                    "low": round(c.low, 4),  # type: ignore[arg-type]
                    "high": round(c.high, 4),  # type: ignore[arg-type]
                    "n": c.n,
                    "vs": c.reference_name,
                }
                for c in shown
            },
        }


def _set_prefix(question_set: str) -> str:
    return "" if question_set == TEST_SET else f"{question_set}."


def questions_in(scores: Scores) -> int:
    """How many questions `scores` holds (every metric has one value per question)."""
    sizes = {len(values) for values in scores.values()}
    if len(sizes) > 1:
        raise ValueError(f"metrics scored on different numbers of questions: {sorted(sizes)}")
    return sizes.pop() if sizes else 0


def paired_comparison(
    metric: str,
    question_set: str,
    candidate: Sequence[float] | np.ndarray,
    reference: Sequence[float] | np.ndarray,
    reference_name: str,
    rule: GateParams,
) -> Comparison:
    """The paired bootstrap of candidate - reference on `metric` (same questions, same order)."""
    sign = -1.0 if metric in rule.lower_is_better else 1.0
    cand, ref = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    interval = paired_difference(
        sign * cand, sign * ref, rule.resamples, rule.confidence, rule.seed
    )
    # Rounded so that float noise never turns an exact tie with the bound into a pass.
    diff, low, high = (round(interval[k], 9) for k in ("mean", "low", "high"))
    return Comparison(
        metric,
        question_set,
        reference_name,
        float(cand.mean()),
        float(ref.mean()),
        diff,
        low,
        high,
        len(cand),
    )


def judged(comparison: Comparison, role: Role, bound: float) -> MetricCheck:
    """The rule on one interval: its lower end must lie above `bound`.

    On the change set (questions about docs the champion's index lacks or holds in an old
    version) the lower end may touch the bound when the gain is positive: a handful of such
    questions, some of which both systems answer alike, cannot exclude a tie at 95 %, yet a
    refreshed index that is never worse there and better on average is what should serve.
    """
    c = comparison
    if role == "change":
        passed = c.low >= bound and c.diff > 0
        where = "at or above" if c.low >= bound else "below"
        verdict = f"lower end {where} {bound:+g}, " + ("a gain" if c.diff > 0 else "no gain")
    else:
        passed = c.low > bound
        verdict = f"lower end {'above' if passed else 'not above'} {bound:+g}"
    note = (
        f"{role} {c.metric} on {c.question_set}: {c.candidate:.4g} vs {c.reference_name} "
        f"{c.reference:.4g}, diff {c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}] over {c.n} "
        f"questions: {verdict}"
    )
    return MetricCheck(**asdict(c), role=role, bound=bound, passed=passed, note=note)


def check(
    metric: str,
    role: Role,
    question_set: str,
    candidate: Scores,
    reference: tuple[str, Scores] | None,
    bound: float,
    rule: GateParams,
) -> MetricCheck:
    """Judge one metric of `candidate` against `reference` (name, scores) under the rule."""
    values = candidate.get(metric)
    ref_name, ref_scores = reference if reference else (None, {})
    ref_values = ref_scores.get(metric)
    n = 0 if values is None else len(values)
    scored = n > 0 and bool(np.all(np.isfinite(values)))

    def refused(note: str, passed: bool = False) -> MetricCheck:
        return MetricCheck(
            metric=metric,
            role=role,
            question_set=question_set,
            candidate=float(np.mean(values)) if scored else None,
            reference=None,
            reference_name=ref_name,
            diff=None,
            low=None,
            high=None,
            n=n,
            bound=bound,
            passed=passed,
            note=f"{role} {metric} on {question_set}: {note}",
        )

    if not scored:
        return refused("the candidate lacks a finite score on some question")
    if ref_values is None or not np.all(np.isfinite(ref_values)):
        # A tracked metric the reference lacks (closed-book has no recall) cannot regress;
        # a primary one cannot show the improvement the rule asks for.
        if role == "tracked":
            return refused("nothing to compare with", passed=True)
        return refused("no reference, so no improvement shown")
    comparison = paired_comparison(metric, question_set, values, ref_values, ref_name, rule)
    return judged(comparison, role, bound)


def decide(
    rule: Rule,
    against: Literal["champion", "baselines"],
    checks: Sequence[MetricCheck],
    questions: Mapping[str, int],
    confidence: float,
    summary: str,
    notes: Sequence[str] = (),
) -> Decision:
    """Promote when every check passed; reasons: the verdict, `notes`, then the checks, the
    failed ones first (they are the reason a person looks for)."""
    promote = bool(checks) and all(c.passed for c in checks)
    keep = "champion" if against == "champion" else "registry as it is (no champion)"
    verdict = f"promote: {summary}" if promote else f"keep the {keep}: the rule does not hold"
    ordered = sorted(checks, key=lambda c: c.passed)
    return Decision(
        promote,
        rule,
        against,
        confidence,
        dict(questions),
        list(checks),
        [verdict, *notes, *(c.note for c in ordered)],
    )


def best_baseline(
    metric: str, baselines: Mapping[str, Scores], lower_is_better: bool
) -> tuple[str, Scores] | None:
    """The strongest baseline on `metric` by its mean (the bar to clear), among those that
    score it on every question."""
    scored = [
        (name, scores, float(np.mean(scores[metric])))
        for name, scores in baselines.items()
        if metric in scores and len(scores[metric])
    ]
    if not scored:
        return None
    pick = min if lower_is_better else max
    name, scores, _ = pick(scored, key=lambda item: item[2])
    return name, scores


def model_gate(
    candidate: Scores,
    champion: Scores | None,
    baselines: Mapping[str, Scores],
    rule: GateParams,
) -> Decision:
    """Decide whether a new model `candidate` replaces `champion` (or, with none, becomes the
    first one). All scores are over the same questions in the same order, metric names in one
    spelling (`tracking.metric_key`); metrics neither primary nor tracked are ignored."""
    questions = {TEST_SET: questions_in(candidate)}
    if champion is None and not baselines:
        return decide(
            "model",
            "baselines",
            [],
            questions,
            rule.confidence,
            "",
            [
                "no champion and no baselines: nothing shows the model is any good; "
                "promote it by hand (`ragloop promote`) if you are sure"
            ],
        )
    against: Literal["champion", "baselines"] = "champion" if champion is not None else "baselines"

    def reference(metric: str, role: Role) -> tuple[str, Scores] | None:
        if champion is not None:
            return "champion", champion
        if role == "tracked":
            return None
        return best_baseline(metric, baselines, metric in rule.lower_is_better)

    checks = [
        check(m, role, TEST_SET, candidate, reference(m, role), bound, rule)
        for role, metrics, bound in (
            ("primary", rule.primary, rule.margin),
            ("tracked", rule.tracked, -rule.tolerance),
        )
        for m in metrics
    ]
    summary = (
        f"every primary metric beats the {against} beyond the margin and no tracked metric "
        "is worse beyond the tolerance"
    )
    return decide("model", against, checks, questions, rule.confidence, summary)


def refresh_gate(
    candidate: Scores,
    champion: Scores,
    change_candidate: Scores,
    change_champion: Scores,
    rule: GateParams,
) -> Decision:
    """Decide whether a refreshed index (the champion's models, a changed KB) replaces the
    champion: `candidate`/`champion` on the standing test set, `change_*` on the questions
    about the added or modified docs (empty scores when there are none)."""
    questions = {TEST_SET: questions_in(candidate), CHANGE_SET: questions_in(change_candidate)}
    champion_ref = ("champion", champion)
    checks = [
        check(m, role, TEST_SET, candidate, champion_ref, -rule.tolerance, rule)
        for role, metrics in (("primary", rule.primary), ("tracked", rule.tracked))
        for m in metrics
    ]
    notes = []
    if questions[CHANGE_SET]:
        scored = [m for m in rule.change_metrics if m in change_candidate]
        notes += [
            f"change {m}: not scored on the change set (its questions have no reference answer)"
            for m in rule.change_metrics
            if m not in change_candidate
        ]
        checks += [
            check(
                m, "change", CHANGE_SET, change_candidate, ("champion", change_champion), 0.0, rule
            )
            for m in scored
        ]
        summary = "no worse than the champion on the test set and better on the changed docs"
    else:
        notes.append("the change set is empty (no added or modified docs): non-inferiority decides")
        summary = "no worse than the champion on the test set"
    return decide("refresh", "champion", checks, questions, rule.confidence, summary, notes)


def refusal(rule: Rule, reason: str, questions: Mapping[str, int], confidence: float) -> Decision:
    """Keep the champion without judging: the numbers at hand cannot be compared with it."""
    reasons = [f"keep the champion: {reason}"]
    return Decision(False, rule, "champion", confidence, dict(questions), [], reasons)
