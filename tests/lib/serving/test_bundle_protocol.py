"""The bundle speaks MLflow's scoring protocol: a real `mlflow models serve` of the tiny bundle
answers every JSON form of a batch alike, an empty batch with no predictions and a batch without
usable questions with a 400 that says why; the folder records its output signature, its input
example and the pinned third-party requirements of its code, all without running the model."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from tasks.lib.serving.bundle import (
    MODEL_CODE,
    SIGNATURE,
    components_spec,
    load_bundle,
    questions_of,
    save_bundle,
)
from tasks.lib.serving.requirements import PROJECT_ROOT, pinned_requirements
from tests.support.bundle import GENERATOR, PRECISION, QUESTIONS, SERVING

MLFLOW_CLI = Path(sys.executable).with_name("mlflow")  # the venv's own, as a user runs it
READY_SECONDS = 240  # the server imports torch and loads the model before /ping answers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of a GET, or of a JSON POST when `body` is given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=120) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of `mlflow models serve` of the tiny bundle, one worker, this venv."""
    port = free_port()
    path = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),  # this checkout's ragloop
        # the venv activated, as a user serves from it: the CLI runs `uvicorn` from PATH
        "PATH": os.pathsep.join([str(MLFLOW_CLI.parent), os.environ.get("PATH", "")]),
    }
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    command = [str(MLFLOW_CLI), "models", "serve", "-m", str(bundle_dir)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    # its own session: the uvicorn worker it starts is stopped with it
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow models serve exited {process.returncode}: {log.name}")
            try:
                if request(f"{url}/ping")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve not ready in {READY_SECONDS}s: {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def in_process(bundle_dir: Path) -> list[dict[str, Any]]:
    """What a Python caller gets for QUESTIONS from the same folder."""
    return load_bundle(bundle_dir).predict(QUESTIONS)


def test_every_json_form_of_a_batch_gets_the_answers_a_python_caller_gets(
    server: str, in_process: list[dict[str, Any]]
) -> None:
    assert request(f"{server}/ping")[0] == 200
    forms = [
        {"inputs": QUESTIONS},
        {"inputs": {"question": QUESTIONS}},
        {"dataframe_records": [{"question": q} for q in QUESTIONS]},
        {"dataframe_split": {"columns": ["question"], "data": [[q] for q in QUESTIONS]}},
    ]
    for body in forms:
        assert request(f"{server}/invocations", body) == (200, {"predictions": in_process}), body


def test_an_empty_batch_gets_no_predictions(server: str) -> None:
    for body in (
        {"inputs": []},
        {"inputs": {"question": []}},
        {"dataframe_records": []},
        {"dataframe_split": {"columns": ["question"], "data": []}},
    ):
        assert request(f"{server}/invocations", body) == (200, {"predictions": []}), body


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"dataframe_records": [{"q": "Violin strings?"}]}, "no 'question' column"),
        ({"inputs": {"q": ["Violin strings?"]}}, "no 'question' key"),
        ({"inputs": ["Violin strings?", ""]}, "question 1 is '', not a non-empty string"),
        ({"inputs": [7]}, "question 0 is 7, not a non-empty string"),
        ({"dataframe_split": {"columns": ["question"], "data": [[None]]}}, "question 0 is None"),
    ],
)
def test_a_batch_without_usable_questions_is_a_400_saying_why(
    server: str, body: dict[str, Any], says: str
) -> None:
    status, error = request(f"{server}/invocations", body)
    assert status == 400
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert says in error["message"]
    assert '{"dataframe_records": [{"question": "..."}]}' in error["message"]  # the fix
    assert "stack_trace" not in error


def test_python_callers_pass_a_string_a_list_or_a_frame(
    bundle_dir: Path, in_process: list[dict[str, Any]]
) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.predict(QUESTIONS[0]) == in_process[:1]
    assert bundle.predict(pd.DataFrame({"question": QUESTIONS})) == in_process
    assert bundle.predict([]) == []


@pytest.mark.parametrize(
    "batch",
    [
        ["Violin strings?", "What grinds grain?"],
        ("Violin strings?", "What grinds grain?"),
        np.array(["Violin strings?", "What grinds grain?"]),  # {"inputs": [...]} as parsed
        {"question": np.array(["Violin strings?", "What grinds grain?"])},
        pd.DataFrame({"id": [1, 2], "question": ["Violin strings?", "What grinds grain?"]}),
        pd.Series(["Violin strings?", "What grinds grain?"]),
    ],
)
def test_questions_of_reads_each_shape_of_a_batch(batch: Any) -> None:
    questions = questions_of(batch)
    assert questions == ["Violin strings?", "What grinds grain?"]
    assert all(type(q) is str for q in questions)  # plain str, not numpy's


def test_questions_of_a_single_question_and_of_empty_batches() -> None:
    assert questions_of("Violin strings?") == questions_of(np.array("Violin strings?"))
    assert questions_of("Violin strings?") == ["Violin strings?"]
    for empty in (
        [],
        np.array([]),
        {"question": []},
        pd.DataFrame(),
        pd.DataFrame(columns=["question"]),
    ):
        assert questions_of(empty) == []


@pytest.mark.parametrize(
    ("batch", "says"),
    [
        (pd.DataFrame({"q": ["Violin strings?"]}), "no 'question' column (its columns: ['q'])"),
        ({"text": ["Violin strings?"]}, "no 'question' key (its keys: ['text'])"),
        (["Violin strings?", "  "], "question 1 is '  '"),
        ([None], "question 0 is None"),
        (np.array([["Violin strings?"]]), "question 0 is ['Violin strings?']"),
        (42, "unreadable input of type int"),
    ],
)
def test_questions_of_refuses_a_batch_without_usable_questions(batch: Any, says: str) -> None:
    with pytest.raises(MlflowException, match="predict: ") as refused:
        questions_of(batch)
    assert says in refused.value.message
    assert refused.value.get_http_status_code() == 400


def test_a_bundle_records_its_signature_example_and_pinned_requirements(
    bundle_dir: Path,
) -> None:
    meta = Model.load(str(bundle_dir / "MLmodel"))
    assert meta.signature == SIGNATURE
    example = json.loads((bundle_dir / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["question"]
    requirements = (bundle_dir / "requirements.txt").read_text().split()
    assert requirements == pinned_requirements(Path(MODEL_CODE))
    pins = dict(line.split("==") for line in requirements)
    for dist in ("mlflow", "torch", "transformers", "sentence-transformers", "faiss-cpu", "bm25s"):
        assert pins[dist] == importlib.metadata.version(dist).split("+")[0]
    assert "ragloop" not in pins  # on no index: served from the project's own venv


def test_saving_a_bundle_never_runs_it(parts: dict[str, Path]) -> None:
    """Its components are missing, so loading it would fail: saving succeeds all the same
    and records the declared signature, not one MLflow inferred by running the model."""
    missing = parts["root"] / "no-such-model"
    spec = components_spec(missing, missing, GENERATOR, SERVING, PRECISION)
    out = parts["root"] / "never-run"
    save_bundle(out, parts["index"], parts["fusion"], spec)
    assert Model.load(str(out / "MLmodel")).signature == SIGNATURE
    assert (out / "input_example.json").is_file()
