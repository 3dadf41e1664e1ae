"""Tracking on a real local sqlite store: where runs go, what a stage run records, nesting."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import yaml

from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import (
    PARENT_RUN_ENV,
    flatten,
    git_commit,
    kb_docs_digest,
    metric_key,
    pipeline_run,
    stage_run,
    tracking_uri,
)
from tests.support.projects import make_project, project_mlflow_client


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project (and so one sqlite store: creating it costs ~3 s) for the module."""
    params_file = make_project(tmp_path_factory.mktemp("tracked"), tracked=True)
    docs = params_file.parent / load_params(params_file).paths.kb_docs
    docs.parent.mkdir(parents=True)
    docs.write_text('{"id": "a", "title": "A", "text": "alpha", "source": "s"}\n', "utf-8")
    return params_file


def test_uri_env_beats_params_beats_project_default(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = load_params(project)
    assert tracking_uri(params) == f"sqlite:///{project.parent.resolve()}/mlflow.db"
    elsewhere = params.tracking.model_copy(update={"uri": "sqlite:////elsewhere/m.db"})
    from_params = params.model_copy(update={"tracking": elsewhere})
    assert tracking_uri(from_params) == "sqlite:////elsewhere/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(from_params) == "http://127.0.0.1:5999"


def test_kb_docs_digest_is_deterministic_and_content_bound(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "1"}\n', "utf-8")
    b.write_text('{"id": "1"}\n', "utf-8")
    assert kb_docs_digest(a) == kb_docs_digest(b)
    b.write_text('{"id": "2"}\n', "utf-8")
    assert kb_docs_digest(a) != kb_docs_digest(b)


def test_git_commit_reads_refs_packed_refs_and_detached_heads(tmp_path: Path) -> None:
    git = tmp_path / "repo" / ".git"
    (git / "refs/heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs/heads/main").write_text("a" * 40 + "\n")
    inner = tmp_path / "repo" / "sub" / "dir"
    inner.mkdir(parents=True)
    assert git_commit(inner) == "a" * 40
    (git / "refs/heads/main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert git_commit(inner) == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_commit(inner) == "c" * 40
    (git / "HEAD").write_text("ref: refs/heads/unborn\n")  # `git init`, no commit yet
    assert git_commit(inner) is None


def test_flatten_and_metric_keys() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}}, "s.") == {"s.a.b": 1, "s.a.c": "[1, 2]"}
    assert metric_key("recall@5") == "recall_at_5"
    assert metric_key("ndcg(10)") == "ndcg_10_"


def test_stage_run_alone_logs_params_tags_metrics_artifacts(project: Path) -> None:
    report = project.parent / "report.json"
    report.write_text('{"ok": true}', "utf-8")
    with stage_run("dedup", load_params(project)) as run:
        run.log_metrics({"docs_in": 9, "nested": {"ratio": 0.5}, "note": "skipped"})
        run.log_artifact(report)
        run.log_artifact(project.parent / "my_kb")
    logged = project_mlflow_client(project).get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["dedup.threshold"] == "0.8"
    assert logged.data.metrics == {"docs_in": 9.0, "nested.ratio": 0.5}
    tags = logged.data.tags
    assert tags["stage"] == "dedup" and "mlflow.parentRunId" not in tags
    docs = project.parent / load_params(project).paths.kb_docs
    assert tags["kb_docs_sha256"] == kb_docs_digest(docs)
    # Artifacts land beside the store, not in ./mlruns of the working directory.
    assert logged.info.artifact_uri.startswith((project.parent / "mlartifacts").resolve().as_uri())
    names = {a.path for a in project_mlflow_client(project).list_artifacts(run.run_id)}
    assert names == {"report.json", "my_kb"}


def test_stage_run_nests_under_parent_from_env_and_fails_loudly(project: Path) -> None:
    """What a `dvc repro` subprocess started by the flow sees: only the env var."""
    client = project_mlflow_client(project)
    experiment = client.get_experiment_by_name(load_params(project).tracking.experiment)
    parent = client.create_run(experiment.experiment_id, run_name="pipeline")
    os.environ[PARENT_RUN_ENV] = parent.info.run_id
    try:
        with (
            pytest.raises(RuntimeError, match="stage broke"),
            stage_run("validate", load_params(project)),
        ):
            raise RuntimeError("stage broke")
    finally:
        del os.environ[PARENT_RUN_ENV]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert [(r.data.tags["stage"], r.info.status) for r in children] == [("validate", "FAILED")]


def test_pipeline_run_is_parent_of_stage_runs_and_cleans_env(project: Path) -> None:
    with pipeline_run(
        load_params(project), "retrain test", {"prefect.flow_run_id": "f-1"}
    ) as parent:
        assert os.environ[PARENT_RUN_ENV] == parent.run_id
        with stage_run("ingest", load_params(project)) as child:
            pass
    assert PARENT_RUN_ENV not in os.environ
    assert mlflow.active_run() is None
    client = project_mlflow_client(project)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).data.tags["prefect.flow_run_id"] == "f-1"


def test_disabled_tracking_creates_no_store(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, tracked=True)
    params = yaml.safe_load(params_file.read_text())
    params["tracking"]["enabled"] = False
    params_file.write_text(yaml.safe_dump(params))
    with stage_run("dedup", load_params(params_file)) as run:
        run.log_metrics({"x": 1})
        run.log_artifact(params_file)
    assert run.run_id is None
    assert not (tmp_path / "mlflow.db").exists()
