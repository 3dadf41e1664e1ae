"""Prefect flow `retrain`: every DVC stage as a Prefect task, in pipeline order, then the gate.

Each task runs `dvc repro --single-item <stage>` in the project folder, so DVC skips a stage
whose deps and params are unchanged and Prefect retries one that crashed. The stage list is
read from dvc.yaml through DVC's own graph: a stage added there joins the flow with no code
change, in the order DVC would run it, and no second list can drift from the pipeline. The
`refresh` flow (flows/refresh.py) runs the same way the stages its target needs.

The flow opens the MLflow parent run; the stages nest under it (their `dvc repro` subprocess
inherits `RAGLOOP_PARENT_RUN_ID`). The two runs point at each other: MLflow tags carry the
Prefect flow-run id, the Prefect run carries the MLflow run id as a tag and a link artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from tasks.lib.core.config import Params, load_params, load_project_params
from tasks.lib.core.io import reported_failures, user_error_reported
from tasks.lib.core.skipped import skipped_reason
from tasks.lib.core.tracking import pipeline_run, run_url, tracking_uri
from tasks.lib.kb.source_state import record_consumed_fingerprint, source_fingerprint
from tasks.lib.serving.feedback import EXPORT_METRICS_FILE, record_consumed_feedback

GATE_STAGE = "register"
OUTPUT_TAIL = 40  # lines of a failed stage's output quoted in the error


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message quotes the end of its output."""


class StageInputError(StageFailed):
    """A stage reported a failure its user must fix (bad data or params, an unreachable store, a
    full disk): retrying cannot help."""


def pipeline_stages(project: Path, target: str | None = None) -> list[str]:
    """The stages of the project's dvc.yaml, upstream first, ties in file order: all of them,
    or those `target` needs (itself included), exactly the ones `dvc repro target` considers."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        stages = [s for s in repo.index.stages if getattr(s, "cmd", None)]
        position = {s.addressing: i for i, s in enumerate(stages)}
        graph = repo.index.graph  # DVC's edges point from a stage to its deps
        if target is not None:
            named = [s for s in stages if s.name == target]
            if not named:
                raise ValueError(f"{project}/dvc.yaml: no stage {target!r}")
            graph = graph.subgraph({named[0], *nx.descendants(graph, named[0])})
        ordered = nx.lexicographical_topological_sort(
            graph.reverse(), key=lambda s: f"{position.get(s.addressing, len(position)):06d}"
        )
        return [s.name for s in ordered if s.addressing in position]


def stage_env() -> dict[str, str]:
    """This process's environment, with this interpreter first on PATH.

    dvc.yaml says `python -m tasks.x`; without this a flow started as `.venv/bin/python ...`
    from a shell without the venv activated would run the stages with another Python.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def retry_unless_input_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry crashes, not rejected input: bad data fails the same way every time."""
    try:
        state.result()
    except StageInputError:
        return False
    except Exception:
        return True
    return True


@task(name="dvc-stage", task_run_name="{stage}")
def run_dvc_stage(stage: str, project: Path) -> dict[str, Any]:
    """`dvc repro --single-item stage`; its output streams into the Prefect log."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    with subprocess.Popen(
        command,
        cwd=project,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.info("%s", line)
    output = "\n".join(tail)
    if process.returncode != 0:
        kind = StageInputError if user_error_reported(tail) else StageFailed
        raise kind(f"stage {stage!r} failed (exit {process.returncode}):\n{output}")
    skipped = f"Stage '{stage}' didn't change, skipping" in output
    return {"stage": stage, "ran": not skipped}


def link_prefect_and_mlflow(params: Params, experiment_id: str, run_id: str) -> str:
    """Tag the Prefect run with the MLflow run and add a link artifact; return the run URL."""
    url = run_url(tracking_uri(params), experiment_id, run_id)
    flow_run_id = flow_run.get_id()
    if flow_run_id:
        with get_client(sync_client=True) as client:
            tags = {*flow_run.get_tags(), f"mlflow-run:{run_id}"}
            client.update_flow_run(flow_run_id, tags=sorted(tags))
        create_link_artifact(
            link=url,
            link_text=f"MLflow run {run_id}",
            key="mlflow-run",
            description="The MLflow parent run of this pipeline run (stages nest under it)",
        )
    return url


def gate_report(
    outcomes: list[dict[str, Any]], stage: str, decision_file: Path, key: str
) -> dict[str, Any] | None:
    """The decision of the gate `stage` if it ran in this pipeline run (also as the Prefect
    artifact `key`), else None."""
    ran = {o["stage"] for o in outcomes if o["ran"]}
    if stage not in ran:
        return None
    decision = json.loads(decision_file.read_text(encoding="utf-8"))
    skipped = skipped_reason(decision_file)
    if skipped is not None:
        lines = [f"nothing to refresh: {skipped}"]
    else:
        verdict = "promoted" if decision["promote"] else "kept champion"
        lines = [f"**{decision['model']}**: {verdict}"]
        lines += [f"- {reason}" for reason in decision["reasons"]]
    create_markdown_artifact("\n".join(lines), key=key, description="Gate decision")
    return decision


def gate_tag(decision: dict[str, Any] | None, decision_file: Path) -> str:
    """The parent run's `gate.decision`: none (the gate did not run), skipped, promote or keep."""
    if decision is None:
        return "none"
    if skipped_reason(decision_file) is not None:
        return "skipped"
    return "promote" if decision["promote"] else "keep"


def run_pipeline(
    name: str,
    params_file: str,
    target: str | None,
    gate_stage: str,
    decision_of: Callable[[Params], Path],
) -> dict[str, Any]:
    """Inside a flow: run the stages `target` needs (all when None) through DVC under one MLflow
    parent run, report the gate's decision, and record the KB fingerprint for the watcher.

    A failing stage fails the flow: nothing downstream runs and nothing is promoted; the
    fingerprint is recorded only on success, so the watcher tries again.
    """
    params = load_params(Path(params_file).resolve())
    project = params.project_dir
    settings = params.retrain
    fingerprint = source_fingerprint(params.ingest)
    stages = pipeline_stages(project, target)
    print(f"{name}: stages {stages}")
    stage_task = run_dvc_stage.with_options(
        retries=settings.retries,
        retry_delay_seconds=settings.retry_delay_seconds,
        retry_condition_fn=retry_unless_input_error,
    )
    prefect_tags = {
        "prefect.flow_run_id": str(flow_run.get_id()),
        "prefect.flow_run_name": str(flow_run.get_name()),
        "kb_source_fingerprint.docs": fingerprint.docs,
        "kb_source_fingerprint.qa": fingerprint.qa,
    }
    ui_url = flow_run.get_flow_run_ui_url()  # only a real Prefect server has a UI
    if ui_url and ui_url.startswith("http"):
        prefect_tags["prefect.flow_run_url"] = ui_url
    decision_path = decision_of(params)
    with pipeline_run(params, f"{name} {flow_run.get_name()}", prefect_tags) as parent:
        url = None
        if parent.run_id:
            import mlflow

            experiment_id = mlflow.get_run(parent.run_id).info.experiment_id
            url = link_prefect_and_mlflow(params, experiment_id, parent.run_id)
            print(f"{name}: MLflow parent run {parent.run_id} ({url})")
        outcomes = [stage_task(stage, project) for stage in stages]
        decision = gate_report(outcomes, gate_stage, decision_path, key=f"{name}-gate")
        ran = [o["stage"] for o in outcomes if o["ran"]]
        verdict = gate_tag(decision, decision_path)
        parent.set_tags({"stages_ran": ",".join(ran) or "none", "gate.decision": verdict})
    record_consumed_fingerprint(project, fingerprint, str(flow_run.get_id()))
    print(f"{name}: ran {ran or 'nothing (all stages up to date)'}")
    return {
        "flow_run_id": str(flow_run.get_id()),
        "stages": stages,
        "ran": ran,
        "mlflow_run_id": parent.run_id,
        "mlflow_run_url": url,
        "gate": decision,
        "kb_source_fingerprint": asdict(fingerprint),
    }


@flow(name="retrain", log_prints=True)
def retrain(params_file: str = "params.yaml") -> dict[str, Any]:
    """Run the whole pipeline through DVC, stage by stage, and report the gate's decision.

    The refresh stages run first (a KB change is served before any training starts), then the
    training stages and the retrain gate. `params_file` is a plain str: a served flow is loaded
    from its file without its imports, so Prefect cannot resolve a `Path` annotation when it
    validates the parameters of a scheduled run.
    """
    result = run_pipeline(
        "retrain", params_file, None, GATE_STAGE, lambda params: params.register_.decision_file
    )
    # Only a retrain trains on the feedback its export read: the watcher counts newer feedback.
    params = load_params(Path(params_file).resolve())
    export = params.project_dir / params.paths.feedback_export_dir / EXPORT_METRICS_FILE
    record_consumed_feedback(params.project_dir, export, result["flow_run_id"])
    return result


def flow_main(target: Flow[[str], Any], module: str) -> None:
    """`python -m <module> [PARAMS]`: run the flow once on a params file; `--help` prints usage
    (a bare argv read would take it for the params path)."""
    summary = " ".join((target.description or "").split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=summary)
    parser.add_argument(
        "params_file", nargs="?", default="params.yaml", help="the project's params.yaml"
    )
    params_file = Path(parser.parse_args().params_file)
    with reported_failures(target.name):
        # Checked before the flow starts a temporary Prefect API, which takes seconds.
        load_project_params(params_file, f"pass its path: python -m {module} PATH")
        target(str(params_file))


if __name__ == "__main__":
    flow_main(retrain, "flows.retrain")
