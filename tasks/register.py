"""Stage `register`: register what evaluate judged, make it the challenger, run the gate.

Default mode: the model folders the training stages wrote (`register.models`) become new
versions, the judged bundle pinning the others, and the gate's model rule judges the bundle.
`--refresh`: a refreshed bundle (`--bundle`: the champion's registered models over an index of
the changed KB) is registered alone, and the refresh rule judges it on an evaluation that
holds a change set (`tasks.lib.serving.promotion`).

Inputs, in `--evaluation` (default `paths.evaluate_dir`): evaluate's per-question scores, which
the gate pairs question by question, and its means (metrics.json), logged on this stage's run,
which every new version points to, so the registry shows each version's numbers. The
reference is evaluate's re-score of the champion (system `champion`), which must be of the
version that is champion now; without a re-score (default mode only), the scores the champion
was itself judged on, if that was on this very test split; otherwise the gate refuses.

Outputs: the decision with every interval and question count (`--decision`, default
`register.decision_file`), the same on the MLflow run (metrics `gate.<metric>.diff/low/high`,
tags) and on the new versions, whose page in the registry shows their description and tags
(`gate.decision`, `gate.summary`, `metric.<name>`, `gate.<metric>.diff/low/high`).

Under DVC this stage runs only when a model or the evaluation changed, so an unchanged
pipeline never registers duplicate versions. As the pipeline's last stage, in default mode it
records the KB source ingest read as consumed, so the KB watcher sees no change after a plain
`dvc repro` (`tasks.lib.kb.source_state`).

    python -m tasks.register [--refresh --bundle DIR] [--evaluation DIR] [--decision FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import InputError, atomic_path, read_text, run_stage, write_json
from tasks.lib.core.skipped import skipped_reason, write_skipped_file
from tasks.lib.core.tracking import file_digest, numeric_metrics, run_name, stage_run
from tasks.lib.kb.source_state import consume_ingested_fingerprint
from tasks.lib.serving.bundle import is_bundle, pin_components, pinned_components
from tasks.lib.serving.promotion import Decision, model_gate, refresh_gate, refusal
from tasks.lib.serving.registry import (
    CHAMPION,
    TEST_SPLIT_TAG,
    aliases,
    promote_judged,
    register_models,
    register_pinned,
    registry_client,
    version_pins,
)
from tasks.lib.serving.scores import (
    CHANGE_SET,
    SCORES_ARTIFACT,
    TEST_SET,
    SystemScores,
    evaluation_files,
    judged_scores,
    read_scores,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

RESCORED_CHAMPION = "champion"  # evaluate's system name for the champion it re-scored
EMPTY = SystemScores((), {})
NOTHING_REFRESHED = "nothing refreshed"


def read_system_metrics(path: Path) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """evaluate's metrics.json: ({system: {metric: mean}} on the test set, the change set's
    entry or None when evaluate had none), metric names MLflow-safe."""
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON: {err.msg}") from err
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise InputError(f"{path}: expected {{system: {{metric: value}}}}")
    change = raw.pop(CHANGE_SET, None)
    return {system: numeric_metrics(values) for system, values in raw.items()}, change


def scores_of(
    scores: dict[tuple[str, str], SystemScores], question_set: str, system: str, where: Path
) -> SystemScores:
    found = scores.get((question_set, system))
    if found is None:
        have = sorted(s for q, s in scores if q == question_set)
        raise InputError(f"{where}: no {question_set} scores of {system!r} (have {have})")
    return found


def champion_reference(
    client: MlflowClient,
    model: str,
    current: str | None,
    scores: dict[tuple[str, str], SystemScores],
    test_split: str | None,
    params: Params,
) -> tuple[bool, SystemScores | None, str]:
    """(comparable, the champion's test scores or None when there is no champion, how they
    were found), for `current`, the champion the stage read once and will promote over.
    `test_split` None: only a re-score will do."""
    rescored = scores.get((TEST_SET, RESCORED_CHAMPION))
    if rescored is not None:
        if rescored.version != current:
            now = f"v{current}" if current else "none"
            stale = (
                f"evaluate re-scored champion v{rescored.version}, but the champion is now "
                f"{now}: rerun evaluate to judge against the current one"
            )
            return False, None, stale
        return True, rescored, f"champion v{current} re-scored by evaluate on these questions"
    if current is None:
        return True, None, "no champion yet: the candidate must beat the best baseline"
    if test_split is None:
        return False, None, f"evaluate did not re-score champion v{current}"
    own = judged_scores(client, model, current, test_split, params)
    if own is None:
        missing = (
            f"champion v{current} has no scores on record for this test split (it was scored "
            "on another test split, or before scores were kept): re-score it"
        )
        return False, None, missing
    return True, own, f"champion v{current}: the scores it was judged on, same test split"


def judge_model(
    client: MlflowClient,
    model: str,
    current: str | None,
    scores: dict[tuple[str, str], SystemScores],
    test_split: str,
    params: Params,
    where: Path,
) -> Decision:
    """The model rule: the candidate against the champion, or the best baseline with none."""
    gate = params.register_.gate
    candidate = scores_of(scores, TEST_SET, gate.candidate, where)
    questions = {TEST_SET: len(candidate.ids)}
    comparable, champion, how = champion_reference(
        client, model, current, scores, test_split, params
    )
    if not comparable:
        return refusal("model", how, questions, gate.confidence)
    if champion is None:
        baselines = {
            name: scores_of(scores, TEST_SET, name, where).aligned_to(candidate.ids, name).metrics
            for name in gate.baselines
        }
        decision = model_gate(candidate.metrics, None, baselines, gate)
    else:
        reference = champion.aligned_to(candidate.ids, "champion")
        decision = model_gate(candidate.metrics, reference.metrics, {}, gate)
    decision.reasons.insert(1, how)
    return decision


def judge_refresh(
    client: MlflowClient,
    model: str,
    current: str | None,
    scores: dict[tuple[str, str], SystemScores],
    change_size: int,
    params: Params,
    where: Path,
) -> Decision:
    """The refresh rule: non-inferior on the test set, better on the changed docs' questions."""
    gate = params.register_.gate
    candidate = scores_of(scores, TEST_SET, gate.candidate, where)
    questions = {TEST_SET: len(candidate.ids), CHANGE_SET: change_size}
    comparable, champion, how = champion_reference(client, model, current, scores, None, params)
    if not comparable or champion is None:
        return refusal("refresh", how, questions, gate.confidence)
    change, change_champion = EMPTY, EMPTY
    if change_size:
        change = scores_of(scores, CHANGE_SET, gate.candidate, where)
        change_champion = scores_of(scores, CHANGE_SET, RESCORED_CHAMPION, where)
        change_champion = change_champion.aligned_to(change.ids, "champion on the change set")
    decision = refresh_gate(
        candidate.metrics,
        champion.aligned_to(candidate.ids, "champion").metrics,
        change.metrics,
        change_champion.metrics,
        gate,
    )
    decision.reasons.insert(1, how)
    return decision


def refresh_pins(
    client: MlflowClient, model: str, champion: str | None, bundle: Path
) -> dict[str, str]:
    """The refreshed bundle's component versions, which must be the champion's own."""
    pins = pinned_components(bundle)
    if champion is None:
        raise InputError(f"{model}: no champion to refresh; run the pipeline first")
    serving = version_pins(client, model, champion)
    if pins != serving:
        raise InputError(
            f"{bundle}: pins {pins}, but champion v{champion} serves {serving}: a refresh keeps "
            "the champion's models (rebuild the bundle from them)"
        )
    return pins


def record_decision(
    client: MlflowClient,
    run: Any,
    model: str,
    versions: dict[str, str],
    decision: Decision,
    metrics: dict[str, float],
) -> None:
    """The decision on the run (metrics, tags) and on the new versions, where the registry's
    version page shows it: it shows a version's description and tags, not its run's metrics.
    The judged version is tagged with its headline metrics and the gate's intervals."""
    verdict = "promote" if decision.promote else "keep"
    summary = json.dumps(decision.summary(), separators=(",", ":"))
    gate_metrics = decision.metrics()
    run.log_metrics(gate_metrics)
    run.set_tags(
        {
            "gate.decision": verdict,
            "gate.rule": decision.rule,
            "gate.against": decision.against,
            "gate.summary": summary,
        }
    )
    version = versions[model]
    tags = {"gate.decision": verdict, "gate.summary": summary}
    tags |= {f"metric.{key}": f"{value:.4g}" for key, value in metrics.items()}
    tags |= {key: f"{value:.4g}" for key, value in gate_metrics.items()}
    for key, value in tags.items():
        client.set_model_version_tag(model, version, key, value)
    outcome = "promoted to champion" if decision.promote else "not promoted"
    client.update_model_version(
        model,
        version,
        description=(
            f"Registered by the register run {run.run_id}, {outcome} ({decision.rule} rule, "
            f"against {decision.against}). " + " ".join(decision.reasons)
        ),
    )
    for name, component in versions.items():
        if name != model:
            client.update_model_version(
                name,
                component,
                description=(
                    f"Registered by the register run {run.run_id}; {model} v{version} pins "
                    f"it and was {outcome}."
                ),
            )


def main(
    params_file: Path = Path("params.yaml"),
    refresh: bool = False,
    bundle: Path | None = None,
    evaluation: Path | None = None,
    decision_file: Path | None = None,
) -> None:
    params = load_params(params_file)
    reg, gate = params.register_, params.register_.gate
    if refresh and evaluation is not None and skipped_reason(evaluation) is not None:
        # One constant marker, whatever the reason: the retrain path's evaluate depends on this
        # file and must not rerun because the refresh path's reason for resting changed.
        write_skipped_file(decision_file or reg.decision_file, NOTHING_REFRESHED)
        print(f"register: {NOTHING_REFRESHED} ({skipped_reason(evaluation)})")
        return
    metrics_path, scores_path = evaluation_files(params.paths, evaluation)
    systems, change = read_system_metrics(metrics_path)
    scores = read_scores(scores_path)
    if gate.candidate not in systems:
        raise InputError(f"{metrics_path}: no metrics for {gate.candidate!r} ({sorted(systems)})")
    out_file = decision_file if decision_file is not None else reg.decision_file
    test_split = file_digest(params.paths.retrieval_qa_dir / "test.jsonl")
    bundle_dir = bundle if bundle is not None else params.paths.bundle_dir
    if refresh and change is None:
        raise InputError(
            f"{metrics_path}: no change set: evaluate the refreshed bundle with "
            "--change-questions (an empty file when no doc was added or modified)"
        )
    if not refresh:
        if bundle is not None:
            raise InputError("register: --bundle names a refreshed bundle: use it with --refresh")
        for name, folder in reg.models.items():
            if not folder.is_dir():
                raise InputError(f"{folder}: no model folder for {name!r} (did its stage run?)")

    with stage_run(run_name("register", bundle_dir if refresh else None), params) as run:
        if run.run_id is None:
            raise InputError("register: the registry lives in MLflow; set tracking.enabled: true")
        run.set_tags({TEST_SPLIT_TAG: test_split})
        run.log_metrics(systems[gate.candidate])
        run.log_metrics({s: systems[s] for s in gate.baselines if s in systems}, "baseline.")
        run.log_metrics(change or {}, prefix=f"{CHANGE_SET}.")
        run.log_artifact(scores_path, SCORES_ARTIFACT)
        client = registry_client(params)
        # Read once: the gate judges against this champion, and promotes only over it.
        champion = aliases(client, reg.judged).get(CHAMPION)
        if refresh:
            pins = refresh_pins(client, reg.judged, champion, bundle_dir)
            versions = {
                reg.judged: register_pinned(client, run.run_id, reg.judged, bundle_dir, pins)
            }
            change_size = int(change["n"]) if change else 0
            decision = judge_refresh(
                client, reg.judged, champion, scores, change_size, params, scores_path
            )
        else:
            pin_into = pin_components if is_bundle(reg.models[reg.judged]) else None
            versions = register_models(client, run.run_id, reg.models, reg.judged, pin_into)
            decision = judge_model(
                client, reg.judged, champion, scores, test_split, params, scores_path
            )
        version = versions[reg.judged]
        if decision.promote:
            promote_judged(client, reg.judged, version, champion, decision.summary())
        record_decision(client, run, reg.judged, versions, decision, systems[gate.candidate])
        report = decision.to_dict() | {"model": reg.judged, "versions": versions}
        with atomic_path(out_file) as out:
            write_json(out, report)
        run.log_artifact(out_file)

    print(f"register: versions {versions} (alias challenger)")
    for reason in decision.reasons:
        print(f"register: {reason}")
    verdict = "promoted to champion" if decision.promote else "not promoted"
    print(f"register: {reg.judged} v{version} {verdict} ({decision.rule} rule)")
    # Not as refresh_register: it runs before the training stages, which may still fail.
    if not refresh:
        consume_ingested_fingerprint(params.project_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--refresh", action="store_true", help="judge a refreshed index bundle")
    parser.add_argument("--bundle", type=Path, help="the refreshed bundle (with --refresh)")
    parser.add_argument("--evaluation", type=Path, help="evaluate's output folder to judge on")
    parser.add_argument("--decision", type=Path, help="decision file (register.decision_file)")
    args = parser.parse_args()
    run_stage(lambda: main(args.params, args.refresh, args.bundle, args.evaluation, args.decision))
