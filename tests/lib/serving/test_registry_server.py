"""Logging, registering, the gate and alias moves against a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks import register
from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import PARENT_RUN_ENV, stage_run
from tasks.lib.serving.integrity import verified_download
from tasks.lib.serving.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    RegistryError,
    aliases,
    champion_history,
    promote,
    rollback,
    status,
)
from tests.support.projects import make_project, write_evaluation, write_jsonl

SERVER_START_TIMEOUT = 90  # seconds; it answers /health after ~10 s on 2 cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server (sqlite backend, proxied artifacts) in a temp folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
        # No job runner (genai jobs): fewer processes, a faster start and stop.
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        start_new_session=True,  # its own process group: teardown stops all its workers
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start:\n{(root / 'server.log').read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def on_server(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    return MlflowClient(mlflow_server)


def make_model_folder(folder: Path, marker: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"marker": marker}), "utf-8")


def first(share: float, n: int = 100) -> list[float]:
    """1 on the first `share` of the questions, 0 elsewhere: nested, so gains are consistent."""
    return [1.0 if i < round(share * n) else 0.0 for i in range(n)]


def write_round(params_file: Path, marker: str, f1: float, recall: float) -> None:
    """What the training stages and evaluate (without a champion re-score) would leave."""
    project = params_file.parent
    params = load_params(params_file)
    for name, folder in params.register_.models.items():
        make_model_folder(project / folder, f"{name}-{marker}")
    flat = [0.5] * 100
    systems = {
        "tuned_rag": {"answer_f1": first(f1), "exact_match": first(0.3),
                      "recall_at_10": first(recall), "ndcg_at_10": flat},
        "closed_book": {"answer_f1": first(0.10), "exact_match": first(0.05)},
        "base_rag": {"answer_f1": first(0.20), "exact_match": first(0.1),
                     "recall_at_10": first(0.6), "ndcg_at_10": [0.4] * 100},
    }  # fmt: skip
    write_evaluation(params_file, systems)
    test_split = params.paths.retrieval_qa_dir / "test.jsonl"
    write_jsonl(test_split, [{"id": "q1", "question": "?", "answers": ["a"], "doc_ids": ["d"],
                             "group": "g"}])  # fmt: skip


def test_stage_run_logs_to_the_server(on_server: MlflowClient, tmp_path: Path) -> None:
    params_file = make_project(tmp_path, tracked=True)
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    with stage_run("dedup", load_params(params_file)) as run:
        run.log_metrics({"docs_out": 7})
        run.log_artifact(plot, "plots")
    logged = on_server.get_run(run.run_id)
    assert logged.data.metrics["docs_out"] == 7.0
    assert logged.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    assert [a.path for a in on_server.list_artifacts(run.run_id, "plots")] == ["plots/curve.png"]
    assert not (tmp_path / "mlflow.db").exists()  # the env URI won over the local default


def test_register_gate_promote_rollback_round_trip(on_server: MlflowClient, tmp_path: Path) -> None:
    params_file = make_project(tmp_path, tracked=True)
    bundle = load_params(params_file).register_.judged

    # Round 1: no champion; beats the baselines -> promoted; components pinned and promoted.
    write_round(params_file, "r1", f1=0.40, recall=0.70)
    register.main(params_file)
    decision = json.loads((tmp_path / "data/register/decision.json").read_text())
    assert decision["promote"] and decision["against"] == "baselines"
    v1 = decision["versions"][bundle]
    assert aliases(on_server, bundle) == {CHAMPION: v1, CHALLENGER: v1}
    retriever_v1 = decision["versions"]["ragloop-retriever"]
    assert aliases(on_server, "ragloop-retriever")[CHAMPION] == retriever_v1
    # The version is the folder, downloadable through the registry.
    local = mlflow.artifacts.download_artifacts(
        f"models:/{bundle}/{v1}", dst_path=str(tmp_path / "dl")
    )
    assert json.loads((Path(local) / "config.json").read_text())["marker"] == f"{bundle}-r1"
    # Checked against its registered sha256 manifest through the server's artifact proxy too.
    checked = verified_download(on_server, bundle, v1, tmp_path / "checked")
    assert (checked / "config.json").read_text() == (Path(local) / "config.json").read_text()
    # Its run carries the candidate metrics, and the gate's numbers; so do the version's tags.
    run_metrics = on_server.get_run(on_server.get_model_version(bundle, v1).run_id).data.metrics
    assert run_metrics["recall_at_10"] == 0.70 and run_metrics["gate.promote"] == 1.0
    assert run_metrics["gate.answer_f1.diff"] == pytest.approx(0.20)  # vs base_rag
    assert run_metrics["gate.answer_f1.low"] > 0.01
    tags = on_server.get_model_version(bundle, v1).tags
    assert tags["gate.decision"] == "promote"
    assert json.loads(tags["gate.summary"])["intervals"]["answer_f1"]["vs"] == "base_rag"

    # Round 2: worse on the primary metric -> challenger only, champion kept.
    write_round(params_file, "r2", f1=0.39, recall=0.70)
    register.main(params_file)
    decision = json.loads((tmp_path / "data/register/decision.json").read_text())
    v2 = decision["versions"][bundle]
    assert not decision["promote"] and decision["against"] == "champion"
    assert aliases(on_server, bundle) == {CHAMPION: v1, CHALLENGER: v2}

    # Round 3: better everywhere -> promoted; v1 becomes the previous champion. Not
    # re-scored: the gate pairs it with the scores v1 was judged on (same test split).
    write_round(params_file, "r3", f1=0.60, recall=0.71)
    register.main(params_file)
    decision = json.loads((tmp_path / "data/register/decision.json").read_text())
    v3 = decision["versions"][bundle]
    assert decision["promote"] and f"champion v{v1}: the scores it was judged on" in str(
        decision["reasons"]
    )
    assert aliases(on_server, bundle) == {CHAMPION: v3, CHALLENGER: v3, PREVIOUS: v1}

    # A new test split: the champion's numbers no longer compare; without a re-score, refuse.
    write_round(params_file, "r5", f1=0.90, recall=0.90)
    test_split = load_params(params_file).paths.retrieval_qa_dir / "test.jsonl"
    test_split.write_text(test_split.read_text().replace('"q1"', '"q2"'), "utf-8")
    register.main(params_file)
    decision = json.loads((tmp_path / "data/register/decision.json").read_text())
    assert not decision["promote"] and "another test split" in decision["reasons"][0]

    # People: status, rollback, manual promote, through the CLI.
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    assert f"{bundle:20s} champion          v{v3:<4s} answer_f1=0.6000" in result.output
    result = runner.invoke(app, ["rollback", "--params", str(params_file)])
    assert result.exit_code == 0 and f"v{v1} is champion again" in result.output
    assert aliases(on_server, bundle)[CHAMPION] == v1 and PREVIOUS not in aliases(on_server, bundle)
    assert aliases(on_server, "ragloop-retriever")[CHAMPION] == retriever_v1  # pins follow
    result = runner.invoke(app, ["rollback", "--params", str(params_file)])
    assert result.exit_code == 1 and "no earlier champion" in result.output
    result = runner.invoke(app, ["promote", "--version", v2, "--params", str(params_file)])
    assert result.exit_code == 0 and f"v{v2} is champion (was v{v1})" in result.output
    assert champion_history(on_server, bundle) == [v1, v2]
    tags = on_server.get_model_version(bundle, v2).tags
    assert tags["promoted_by"].startswith("manual")
    result = runner.invoke(app, ["promote", "--version", "99", "--params", str(params_file)])
    assert result.exit_code == 1 and "no version 99" in result.output


def test_alias_moved_by_hand_is_kept_in_history(on_server: MlflowClient, tmp_path: Path) -> None:
    name = "hand-moved"
    with mlflow.start_run() as run:
        pass
    folder = tmp_path / "m"
    make_model_folder(folder, "x")
    from tasks.lib.serving.registry import register_folder

    versions = [register_folder(on_server, name, folder, run.info.run_id) for _ in range(3)]
    on_server.set_registered_model_alias(name, CHAMPION, versions[0])  # e.g. in the UI
    assert promote(on_server, name, versions[2], by="manual").replaced == versions[0]
    back = rollback(on_server, name, by="test")
    assert (back.replaced, back.version) == (versions[2], versions[0])
    with pytest.raises(RegistryError):
        rollback(on_server, name, by="test")
    assert [row.alias for row in status(on_server, [name, "never-registered"])] == [CHAMPION]
