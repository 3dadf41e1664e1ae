"""Tracking on a real local sqlite store: where runs go, what a stage run records, nesting; and
the store checked before a stage works (a refused, a hung, a damaged store)."""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from tasks.lib.core.config import load_params
from tasks.lib.core.io import run_stage
from tasks.lib.core.store_health import bound_http_client, store_problem
from tasks.lib.core.tracking import (
    METRICS_ARTIFACT,
    PARENT_RUN_ENV,
    STAGE_SECONDS,
    ensure_experiment,
    flatten,
    git_commit,
    kb_docs_digest,
    metric_key,
    pipeline_run,
    stage_run,
    tracking_uri,
)
from tests.support.projects import REPO, make_project, project_mlflow_client


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
        run.log_params({"precision.train_retriever": "bf16"})
        run.log_artifact(report)
        run.log_artifact(project.parent / "my_kb")
    logged = project_mlflow_client(project).get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["dedup.threshold"] == "0.8"
    assert logged.data.params["precision.train_retriever"] == "bf16"  # beside the section
    metrics = dict(logged.data.metrics)
    assert metrics.pop(STAGE_SECONDS) > 0
    assert metrics == {"docs_in": 9.0, "nested.ratio": 0.5}
    tags = logged.data.tags
    assert tags["stage"] == "dedup" and "mlflow.parentRunId" not in tags
    docs = project.parent / load_params(project).paths.kb_docs
    assert tags["kb_docs_sha256"] == kb_docs_digest(docs)
    # Artifacts land beside the store, not in ./mlruns of the working directory.
    assert logged.info.artifact_uri.startswith((project.parent / "mlartifacts").resolve().as_uri())
    names = {a.path for a in project_mlflow_client(project).list_artifacts(run.run_id)}
    assert names == {"report.json", "my_kb", METRICS_ARTIFACT}


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
    # This process started long before the stage did: its age would not be the stage's time.
    assert STAGE_SECONDS not in client.get_run(child.run_id).data.metrics


TIMED_STAGE = """
import sys, time
from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import stage_run

params_file, run_id_file, work_s, outcome = sys.argv[1:]
time.sleep(float(work_s))  # work before the run opens, as most stages read their inputs first
with stage_run("dedup", load_params(Path(params_file))) as run:
    Path(run_id_file).write_text(run.run_id)
    time.sleep(float(work_s))
    if outcome == "fail":
        raise RuntimeError("stage broke")
"""


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
def test_stage_seconds_times_the_stage_process_from_its_start(
    project: Path, tmp_path: Path, outcome: str
) -> None:
    """A stage process that works a second before opening its run and a second inside it: the
    run's `stage_seconds` covers both (and the start-up before them), failed or not."""
    work_s = 1.0
    run_id_file = tmp_path / "run_id"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV)}
    result = subprocess.run(
        [sys.executable, "-c", TIMED_STAGE, str(project), str(run_id_file), str(work_s), outcome],
        cwd=project.parent,
        env=env | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode == 0) == (outcome == "succeed"), result.stderr
    logged = project_mlflow_client(project).get_run(run_id_file.read_text())
    assert logged.info.status == ("FINISHED" if outcome == "succeed" else "FAILED")
    assert logged.data.metrics[STAGE_SECONDS] >= 2 * work_s


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


# --- the store checked before a stage works -------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers: a hung tracking server."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


@contextlib.contextmanager
def healthy_then_silent_server() -> Iterator[str]:
    """A server whose /health answers but whose API never does: one that hangs mid-stage."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                time.sleep(60)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def ingest(project: Path, uri: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """The real ingest stage as `dvc repro` runs it, on the tracking server `uri`; and seconds."""
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "tasks.ingest"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, time.perf_counter() - started


def stage_body(params_file: Path, ran: list[str]) -> Callable[[], None]:
    """A stage's `main`: its work (noting that it ran) inside its MLflow run."""

    def main() -> None:
        with stage_run("dedup", load_params(params_file)):
            ran.append("dedup")

    return main


HEALTH_TIMEOUT_S = 2  # the tests' own, to stay fast; params.yaml's default is larger


@pytest.mark.parametrize("required", [True, False])
def test_refused_and_hung_servers_fail_fast_or_run_unlogged(tmp_path: Path, required: bool) -> None:
    """Before the check a refused server cost minutes of retries and a hung one longer."""
    params_file = make_project(
        tmp_path,
        tracked=True,
        tracking__health_timeout_s=HEALTH_TIMEOUT_S,
        tracking__required=required,
    )
    docs = load_params(params_file).paths.kb_docs
    with silent_server() as hung:
        cases = {
            "connection refused": f"http://127.0.0.1:{closed_port()}",
            f"no answer within {HEALTH_TIMEOUT_S} s": hung,
        }
        for reason, uri in cases.items():
            result, seconds = ingest(tmp_path, uri)
            assert seconds < 30, (reason, seconds)  # a bound, not a benchmark
            assert "Traceback" not in result.stderr
            problem = f"MLflow tracking server {uri} is not reachable ({reason})"
            if required:
                assert result.returncode == 1, result.stderr
                assert f"error: {problem}: start it (mlflow server ...)" in result.stderr
                assert "tracking.required: false" in result.stderr
                assert not docs.exists()
            else:
                assert result.returncode == 0, result.stderr
                assert f"warning: {problem}; ingest runs without MLflow logging" in result.stderr
                assert docs.is_file()
                docs.unlink()


def test_mlflow_client_gives_up_in_seconds_on_a_server_that_hangs_after_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server answered /health and then hung: MLflow's own bounded client fails the stage."""
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)  # also removes what the stage exports
    params_file = make_project(
        tmp_path, tracked=True, tracking__request_timeout_s=1, tracking__request_retries=1
    )
    with healthy_then_silent_server() as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        started = time.perf_counter()
        ran: list[str] = []
        with pytest.raises(SystemExit) as exited:
            run_stage(stage_body(params_file, ran))
        seconds = time.perf_counter() - started
    assert exited.value.code == 1 and seconds < 30 and not ran
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "1"
    assert capsys.readouterr().err.startswith("error: MLflow: API request to ")


def test_user_exported_http_settings_win(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    bound_http_client(load_params(project).tracking)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # params.yaml's


def damage(store: Path) -> None:
    """Overwrite the middle third of the file's pages with random bytes: it still opens."""
    page = 4096
    pages = store.stat().st_size // page
    with store.open("r+b") as handle:
        for number in range(pages // 3, 2 * pages // 3):
            handle.seek(number * page)
            handle.write(random.Random(number).randbytes(page))


def test_damaged_sqlite_store_fails_before_any_work(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the check a damaged store was only noticed where MLflow read the bad page."""
    params_file = make_project(tmp_path, tracked=True)
    store = tmp_path / "mlflow.db"
    ensure_experiment(load_params(project))  # the module's store exists, whatever ran before
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # which mlflow exported: the copy is the store now
    capsys.readouterr()  # MLflow's own log of making that store
    shutil.copy(project.parent / "mlflow.db", store)  # a real store, as MLflow made it
    damage(store)
    ran: list[str] = []
    with pytest.raises(SystemExit) as exited:
        run_stage(stage_body(params_file, ran))
    assert exited.value.code == 1 and not ran
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLflow store {store.resolve()} is damaged (sqlite quick_check: ")
    assert "restore it from a backup, or move it aside (mv " in err

    unrequired = params_file.read_text().replace("required: true", "required: false")
    params_file.write_text(unrequired)
    with stage_run("dedup", load_params(params_file)) as run:
        run.log_metrics({"x": 1})  # a no-op: nothing is written to the damaged store
    assert run.run_id is None
    assert "warning: MLflow store" in capsys.readouterr().err


def test_sqlite_store_in_a_missing_folder_is_named(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, tracked=True)
    uri = f"sqlite:///{tmp_path}/no/such/folder/mlflow.db"
    problem = store_problem(load_params(params_file), uri)
    assert problem is not None and f"mkdir -p {tmp_path}/no/such/folder" in str(problem)
    assert store_problem(load_params(params_file), f"sqlite:///{tmp_path}/new.db") is None
