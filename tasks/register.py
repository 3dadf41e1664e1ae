"""Stage `register`: register what evaluate judged, make it the challenger, run the gate.

Inputs: the model folders the training stages wrote (`register.models`) and evaluate's
`metrics.json`, `{system: {metric: value}}` on the held-out test split. The judged system's
metrics are logged on this stage's run, which every new version points to, so the registry
shows each version's numbers. The gate compares them with the champion *on the same test
split*: evaluate's re-score of the champion (system `champion`) when it made one, else the
champion's own numbers if they were computed on this very split; otherwise it refuses.

Under DVC this stage runs only when a model or the metrics changed, so an unchanged pipeline
never registers duplicate versions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import InputError, atomic_path, read_text, run_stage, write_json
from tasks.lib.core.tracking import file_digest, numeric_metrics, stage_run
from tasks.lib.serving.bundle import is_bundle, pin_components
from tasks.lib.serving.promotion import Decision, Metrics, promotion_gate
from tasks.lib.serving.registry import (
    CHAMPION,
    TEST_SPLIT_TAG,
    aliases,
    promote,
    register_models,
    registry_client,
    version_metrics,
    version_run_tags,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

RESCORED_CHAMPION = "champion"  # evaluate's key for the champion re-scored on this split


def read_system_metrics(path: Path) -> dict[str, dict[str, float]]:
    """evaluate's metrics.json as {system: {metric: value}}, metric names MLflow-safe."""
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON: {err.msg}") from err
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise InputError(f"{path}: expected {{system: {{metric: value}}}}")
    return {system: numeric_metrics(values) for system, values in raw.items()}


def gate_inputs(
    systems: Mapping[str, Metrics], params: Params, where: Path
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The candidate's metrics and the baselines', by the names params give them."""
    gate = params.register_.gate
    missing = [s for s in [gate.candidate, *gate.baselines] if s not in systems]
    if missing:
        raise InputError(f"{where}: no metrics for system(s) {missing} (have {sorted(systems)})")
    baselines = {name: dict(systems[name]) for name in gate.baselines}
    return dict(systems[gate.candidate]), baselines


def champion_reference(
    client: MlflowClient, model: str, test_split: str, rescored: Metrics | None
) -> tuple[bool, dict[str, float] | None, str]:
    """(comparable, champion metrics or None when there is no champion, how they were found)."""
    champion = aliases(client, model).get(CHAMPION)
    if champion is None:
        return True, None, "no champion yet: the candidate must beat the baselines"
    if rescored is not None:
        return True, dict(rescored), f"champion v{champion} re-scored by evaluate on this split"
    if version_run_tags(client, model, champion).get(TEST_SPLIT_TAG) == test_split:
        return True, version_metrics(client, model, champion), f"champion v{champion}, same split"
    return False, None, f"champion v{champion} was scored on another test split: re-score it"


def judge(
    client: MlflowClient,
    model: str,
    version: str,
    candidate: Metrics,
    baselines: Mapping[str, Metrics],
    rescored_champion: Metrics | None,
    test_split: str,
    params: Params,
) -> Decision:
    """Run the gate for `version` of `model` and promote it when the rule holds."""
    comparable, champion, how = champion_reference(client, model, test_split, rescored_champion)
    if not comparable:
        decision = Decision(
            promote=False, against="champion", reasons=[f"keep the champion: {how}"]
        )
    else:
        decision = promotion_gate(candidate, champion, baselines, params.register_.gate)
        decision.reasons.insert(1, how)
    if decision.promote:
        promote(client, model, version, by="gate")
    return decision


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    reg = params.register_
    metrics_path = params.paths.evaluate_metrics
    systems = read_system_metrics(metrics_path)
    candidate, baselines = gate_inputs(systems, params, metrics_path)
    rescored = systems.get(RESCORED_CHAMPION)
    test_file = params.paths.retrieval_qa_dir / "test.jsonl"
    test_split = file_digest(test_file)
    folders = {name: folder for name, folder in reg.models.items()}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise InputError(f"{folder}: no model folder for {name!r} (did its stage run?)")

    with stage_run("register", params) as run:
        if run.run_id is None:
            raise InputError("register: the registry lives in MLflow; set tracking.enabled: true")
        run.set_tags({TEST_SPLIT_TAG: test_split})
        run.log_metrics(candidate)
        run.log_metrics(baselines, prefix="baseline.")
        client = registry_client(params)
        pin_into = pin_components if is_bundle(folders[reg.judged]) else None
        versions = register_models(client, run.run_id, folders, reg.judged, pin_into)
        decision = judge(
            client,
            reg.judged,
            versions[reg.judged],
            candidate,
            baselines,
            rescored,
            test_split,
            params,
        )
        run.log_metrics(decision.metrics())
        run.set_tags({"gate.decision": "promote" if decision.promote else "keep"})
        report = decision.to_dict() | {"model": reg.judged, "versions": versions}
        with atomic_path(reg.decision_file) as out:
            write_json(out, report)
        run.log_artifact(reg.decision_file)

    print(f"register: versions {versions} (alias challenger)")
    for reason in decision.reasons:
        print(f"register: {reason}")
    verdict = "promoted to champion" if decision.promote else "not promoted"
    print(f"register: {reg.judged} v{versions[reg.judged]} {verdict}")


if __name__ == "__main__":
    run_stage(main)
