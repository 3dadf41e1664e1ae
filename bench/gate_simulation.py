"""Gate simulation: how often the OLD mean-with-margin rule and the NEW paired rule promote a
candidate whose true gain over the champion is known, on simulated per-question scores.

Per trial, a champion's token F1 on `--questions` questions, shaped like the real test split's
(most answers wrong, F1 0; some exactly right, F1 1; the rest partial), and a candidate that
answers a share `--changed` of the questions differently, redrawn from the same distribution
(noise with no effect), then turns enough of its wrong answers right (F1 1) to raise its
expected mean F1 by the effect. Exact match is F1 = 1, a tracked metric. Both rules run the
real gate (`tasks.lib.serving.promotion`) with params.yaml's `register.gate` (tracked metrics
cut to exact match, the one simulated): the NEW rule is `model_gate` on paired bootstrap
intervals; the OLD rule is the same checks (`judged`, `decide`) on the plain difference of the
means, i.e. an interval of zero width: primary diff > margin, tracked diff > -tolerance.

    .venv/bin/python bench/gate_simulation.py [--trials 200] [--questions 158] [--changed 0.35]
                                              [--seed 0] [--params params.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tasks.lib.core.config import GateParams, load_params
from tasks.lib.core.report import markdown_table
from tasks.lib.serving.promotion import Comparison, Scores, decide, judged, model_gate
from tasks.lib.serving.scores import TEST_SET

EFFECTS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.15)
WRONG, RIGHT = 0.68, 0.12  # shares of F1 = 0 and F1 = 1; the rest is partial, Beta(2, 3)


def token_f1_like(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.random(n)
    partial = rng.beta(2, 3, n)
    return np.where(kind < WRONG, 0.0, np.where(kind < WRONG + RIGHT, 1.0, partial))


def candidate_of(
    champion: np.ndarray, effect: float, changed: float, rng: np.random.Generator
) -> np.ndarray:
    """The champion's answers, a share redrawn, then wrong ones made right to gain `effect`."""
    redrawn = np.where(
        rng.random(len(champion)) < changed, token_f1_like(rng, len(champion)), champion
    )
    # Each answer turns right with probability p: the mean gains p * mean(1 - F1) = effect.
    p = effect / float(np.mean(1.0 - redrawn))
    return np.where(rng.random(len(champion)) < p, 1.0, redrawn)


def scores(f1: np.ndarray) -> Scores:
    return {"answer_f1": f1, "exact_match": (f1 == 1.0).astype(float)}


def old_rule(candidate: Scores, champion: Scores, rule: GateParams) -> bool:
    """The gate's checks on the difference of the means alone (zero-width intervals)."""
    checks = []
    for role, metrics, bound in (
        ("primary", rule.primary, rule.margin),
        ("tracked", rule.tracked, -rule.tolerance),
    ):
        for metric in metrics:
            cand, ref = float(np.mean(candidate[metric])), float(np.mean(champion[metric]))
            diff = round(cand - ref, 9)
            n = len(candidate[metric])
            point = Comparison(metric, TEST_SET, "champion", cand, ref, diff, diff, diff, n)
            checks.append(judged(point, role, bound))
    questions = {TEST_SET: len(candidate[rule.primary[0]])}
    return decide("model", "champion", checks, questions, rule.confidence, "").promote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per effect size")
    parser.add_argument("--questions", type=int, default=158)
    parser.add_argument("--changed", type=float, default=0.35, help="share of answers redrawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    gate = load_params(args.params).register_.gate
    rule = gate.model_copy(update={"primary": ["answer_f1"], "tracked": ["exact_match"]})
    rng = np.random.default_rng(args.seed)

    rows = []
    for effect in EFFECTS:
        gains, old, new = [], 0, 0
        for _ in range(args.trials):
            champion_f1 = token_f1_like(rng, args.questions)
            champion = scores(champion_f1)
            candidate = scores(candidate_of(champion_f1, effect, args.changed, rng))
            gains.append(float(np.mean(candidate["answer_f1"]) - np.mean(champion_f1)))
            old += old_rule(candidate, champion, rule)
            new += model_gate(candidate, champion, {}, rule).promote
        rows.append(
            [
                f"{effect:+.2f}",
                f"{np.mean(gains):+.3f} ± {np.std(gains):.3f}",
                f"{old / args.trials:.0%}",
                f"{new / args.trials:.0%}",
            ]
        )
    print(
        f"{args.trials} trials per effect, {args.questions} questions, {args.changed:.0%} of "
        f"answers redrawn; margin {rule.margin}, tolerance {rule.tolerance} (exact match "
        f"tracked), paired bootstrap {rule.confidence:.0%}, {rule.resamples} resamples\n"
    )
    header = ["true F1 gain", "observed gain (mean ± sd)", "OLD: means + margin", "NEW: paired"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
