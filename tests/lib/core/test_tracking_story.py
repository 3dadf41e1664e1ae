"""What a person sees in the MLflow UI after a pipeline run, on real stores: stage runs that
start with the stage and fail with it, one parent run per plain `dvc repro`, an experiment that
opens on its runs, headline metrics, and registry versions that carry their verdict."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tasks import register
from tasks.lib.core.config import load_params
from tasks.lib.core.dvc_parent import DVC_PROCESS_TAG
from tasks.lib.core.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    METRICS_ARTIFACT,
    PARENT_RUN_ENV,
    stage_run,
)
from tasks.lib.serving.registry import registry_client
from tests.support.projects import (
    REPO,
    dvc,
    make_project,
    project_mlflow_client,
    write_evaluation,
    write_jsonl,
)

STAGE_SCRIPT = """
import os, sys, time
from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import stage_run

name, out = sys.argv[1:]
with stage_run(name, load_params(Path("params.yaml"))) as run:
    Path(f"{name}.run_id").write_text(run.run_id)
    Path(f"{name}.work_started").write_text(str(time.time()))
    time.sleep(0.5)
    if os.environ.get("FAIL_STAGE") == name:
        raise RuntimeError(f"{name} broke")
    Path(out).write_text(name)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tracked project that is also a 2-stage DVC project of small scripts using stage_run."""
    root = tmp_path_factory.mktemp("story")
    params_file = make_project(root, tracked=True)
    (root / "stage.py").write_text(STAGE_SCRIPT, "utf-8")
    stages = {
        "first": {
            "cmd": "python stage.py ingest one.txt",
            "deps": ["stage.py"],
            "outs": ["one.txt"],
        },
        "second": {
            "cmd": "python stage.py dedup two.txt",
            "deps": ["stage.py", "one.txt"],
            "outs": ["two.txt"],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}), "utf-8")
    dvc(root, "init", "--no-scm", "-q")
    (root / ".dvc/config").write_text("[core]\n    no_scm = True\n    analytics = false\n", "utf-8")
    with pytest.MonkeyPatch.context() as env:
        for name in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV):
            env.delenv(name, raising=False)
        env.setenv("PYTHONPATH", str(REPO))
        yield params_file


def experiment_id(client: MlflowClient, params_file: Path) -> str:
    return client.get_experiment_by_name(load_params(params_file).tracking.experiment).experiment_id


def repro(project: Path, fail: str | None = None) -> subprocess.CompletedProcess[str]:
    if fail:
        os.environ["FAIL_STAGE"] = fail
    try:
        return dvc(project.parent, "repro", "-f", check=fail is None)
    finally:
        os.environ.pop("FAIL_STAGE", None)


def test_plain_dvc_repro_nests_its_stages_under_one_parent_spanning_them(project: Path) -> None:
    repro(project)
    client = project_mlflow_client(project)
    root = project.parent
    children = [client.get_run((root / f"{s}.run_id").read_text()) for s in ("ingest", "dedup")]
    (parent_id,) = {run.data.tags["mlflow.parentRunId"] for run in children}
    parent = client.get_run(parent_id)
    assert parent.data.tags["stage"] == "pipeline" and DVC_PROCESS_TAG in parent.data.tags
    assert parent.info.run_name.startswith("dvc repro ")
    assert parent.info.status == "FINISHED"
    assert parent.info.start_time <= min(r.info.start_time for r in children)
    assert parent.info.end_time >= max(r.info.end_time for r in children)
    assert [r.info.status for r in children] == ["FINISHED", "FINISHED"]

    # The next `dvc repro` is another dvc process: another parent, and this one failed.
    failed = repro(project, fail="dedup")
    assert failed.returncode != 0
    broken = client.get_run((root / "dedup.run_id").read_text())
    assert broken.info.status == "FAILED"
    second = client.get_run(broken.data.tags["mlflow.parentRunId"])
    assert second.info.run_id != parent_id and second.info.status == "FAILED"
    # The run opened when the stage process started, before its work: its duration is the
    # stage's, and a crash is on record.
    assert broken.info.start_time / 1000 <= float((root / "dedup.work_started").read_text())
    assert broken.info.end_time - broken.info.start_time >= 500


def test_stage_run_outside_dvc_stands_alone_and_fails_with_the_stage(project: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="broke"),
        stage_run("ingest", load_params(project)) as run,
    ):
        raise RuntimeError("broke")
    logged = project_mlflow_client(project).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert "mlflow.parentRunId" not in logged.data.tags


def test_the_experiment_opens_on_its_runs_not_the_genai_traces(project: Path) -> None:
    with stage_run("ingest", load_params(project)):
        pass
    client = project_mlflow_client(project)
    experiment = client.get_experiment(experiment_id(client, project))
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def interval(mean: float) -> dict[str, float]:
    return {"mean": mean, "low": mean - 0.05, "high": mean + 0.05}


def test_runs_log_headline_metrics_and_the_whole_dict_as_an_artifact(project: Path) -> None:
    """evaluate_generation's shape: 2 sets x (3 systems + 2 differences) x 3 metrics, each an
    interval, logged as 15 * 2 * 3 * 3 = 90 keys before; 18 means and the counts now."""
    metrics_names = ("answer_f1", "exact_match", "contains_answer")
    systems = ("closed_book", "base_rag", "tuned_rag", "tuned_rag - base_rag", "tuned_rag - cb")
    metrics = {
        split: {"n": 40, **{s: {m: interval(0.5) for m in metrics_names} for s in systems}}
        for split in ("real_test", "kb_heldout")
    }
    with stage_run("evaluate_generation", load_params(project)) as run:
        run.log_metrics(metrics)
        run.log_metrics({"generation_cache": {"hits": 3, "misses": 1}})
    client = project_mlflow_client(project)
    logged = dict(client.get_run(run.run_id).data.metrics)
    assert logged.pop("stage_seconds") > 0
    assert len(logged) == 2 * (1 + 3 * 3) + 2
    assert logged["real_test.tuned_rag.answer_f1"] == 0.5
    assert "real_test.n" in logged and "generation_cache.hits" in logged
    assert not any(" - " in key or key.endswith((".low", ".high")) for key in logged)
    folder = client.download_artifacts(run.run_id, METRICS_ARTIFACT, str(project.parent))
    full = json.loads(Path(folder).read_text())
    assert full["real_test"]["tuned_rag - base_rag"]["answer_f1"]["low"] == pytest.approx(0.45)
    assert full["generation_cache"] == {"hits": 3, "misses": 1}


def test_a_rerun_stage_logs_its_params_section(project: Path) -> None:
    """`index[tuned]` is the index stage on other outputs: it logs the `index` section."""
    with stage_run("index[tuned]", load_params(project)) as run:
        run.log_params({"encoder": "models/retriever"})
    params = project_mlflow_client(project).get_run(run.run_id).data.params
    assert params["index.encoder"] == load_params(project).index.encoder
    assert params["encoder"] == "models/retriever"


def scores(share: float) -> list[float]:
    return [1.0 if i < share * 100 else 0.0 for i in range(100)]


def test_registry_versions_carry_description_metrics_and_the_decision(project: Path) -> None:
    params = load_params(project)
    for name, folder in params.register_.models.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"name": name}), "utf-8")
    write_jsonl(
        params.paths.retrieval_qa_dir / "test.jsonl",
        [{"id": "q1", "question": "?", "answers": ["a"], "doc_ids": ["d"], "group": "g"}],
    )
    names = ("answer_f1", "exact_match", "recall_at_10", "ndcg_at_10")
    better = {m: scores(0.8) for m in names}
    baseline = {m: scores(0.4) for m in names}
    write_evaluation(
        project, {"tuned_rag": better} | dict.fromkeys(params.register_.gate.baselines, baseline)
    )
    register.main(project)

    client = registry_client(params)
    judged = params.register_.judged
    (version,) = client.search_model_versions(f"name = '{judged}'")
    assert version.description.startswith("Registered by the register run ")
    assert "promoted to champion" in version.description
    assert version.tags["gate.decision"] == "promote"
    assert float(version.tags["metric.answer_f1"]) == pytest.approx(0.8)
    assert float(version.tags["gate.answer_f1.low"]) > 0
    for name in params.register_.models:
        if name != judged:
            (component,) = client.search_model_versions(f"name = '{name}'")
            assert f"{judged} v{version.version} pins it" in component.description
