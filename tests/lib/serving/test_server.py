"""`ragloop serve`'s app over a real HTTP socket, a tiny registered bundle and a sqlite store."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks.lib.core.config import Params, load_params
from tasks.lib.serving.bundle import load_bundle
from tasks.lib.serving.feedback import FeedbackStore
from tasks.lib.serving.registry import promote
from tasks.lib.serving.served import alias_version, load_served_bundle
from tasks.lib.serving.server import Champion, create_app
from tests.support.bundle import QUESTIONS, RAG, register_bundle, serving_project
from tests.support.serving import free_port, running


@pytest.fixture
def champion_version(client: MlflowClient, store, parts, bundle_dir) -> str:
    version = register_bundle(client, store[1], parts, bundle_dir)[RAG]
    promote(client, RAG, version, by="test")
    return version


def project_params(root: Path, poll_seconds: float) -> Params:
    return load_params(serving_project(root, serve__poll_seconds=poll_seconds))


@pytest.fixture
def served(tmp_path: Path, champion_version: str) -> Iterator[tuple[str, Params]]:
    """The app on a real port, polling the alias every 0.2 s: (base URL, its params)."""
    params = project_params(tmp_path, poll_seconds=0.2)
    with serving(params) as url:
        yield url, params


def serving(params: Params, port: int | None = None):
    champion = Champion(
        lambda version: load_served_bundle(params, "champion", version),
        lambda: alias_version(params, "champion"),
    )
    feedback = FeedbackStore.open(params.feedback, params.project_dir)
    return running(create_app(champion, feedback, params.serve, params.bundle.batch_size), port)


def test_ask_answers_as_the_bundle_does_with_its_sources_and_a_request_id(
    served: tuple[str, Params], bundle_dir: Path, champion_version: str
) -> None:
    url, params = served
    expected = load_bundle(bundle_dir).predict(QUESTIONS[:1])[0]
    response = httpx.post(f"{url}/ask", json={"question": QUESTIONS[0]}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == expected["answer"]
    assert [s["id"] for s in body["sources"]] == expected["sources"]
    assert [s["title"] for s in body["sources"]] == expected["source_titles"]
    docs = load_served_bundle(params, "champion").docs()
    for source in body["sources"]:
        assert source["snippet"] == docs[source["id"]]["text"][: params.serve.snippet_chars]
    assert (body["model"], body["version"]) == (RAG, champion_version)
    assert len(body["request_id"]) >= 16
    health = httpx.get(f"{url}/health").json()
    assert (health["status"], health["version"], health["alias"]) == (
        "ok",
        champion_version,
        "champion",
    )
    assert "<form" in httpx.get(f"{url}/").text


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"question": "   "}, "question: empty"),
        ({"question": "x" * 1001}, "more than serve.max_question_chars"),
        ({}, "question"),
        ({"question": 3}, "question"),
    ],
)
def test_a_bad_question_is_a_422_that_says_why(
    served: tuple[str, Params], payload: dict, fragment: str
) -> None:
    response = httpx.post(f"{served[0]}/ask", json=payload, timeout=60)
    assert response.status_code == 422
    assert fragment in response.text


def test_feedback_is_accepted_or_refused_with_its_reason(served: tuple[str, Params]) -> None:
    url, _ = served
    asked = httpx.post(f"{url}/ask", json={"question": QUESTIONS[1]}, timeout=60).json()
    request_id, cited = asked["request_id"], asked["sources"][0]["id"]
    good = httpx.post(f"{url}/feedback", json={"request_id": request_id, "good": True})
    assert good.status_code == 200, good.text
    corrected = {"request_id": request_id, "good": False, "answer": "a windmill", "doc_id": cited}
    second = httpx.post(f"{url}/feedback", json=corrected)
    assert second.status_code == 200 and second.json()["feedback_id"] > good.json()["feedback_id"]
    refused = {
        "unknown request": ({**corrected, "request_id": "0" * 32}, 404),
        "unknown doc": ({**corrected, "doc_id": "no-such-doc"}, 422),
        "empty answer": ({**corrected, "answer": "  "}, 422),
        "oversized answer": ({**corrected, "answer": "x" * 1001}, 422),
    }
    for what, (payload, status) in refused.items():
        response = httpx.post(f"{url}/feedback", json=payload)
        assert response.status_code == status, (what, response.text)
        assert response.json()["detail"], what
    after = httpx.post(f"{url}/feedback", json=corrected).json()["feedback_id"]
    assert after == second.json()["feedback_id"] + 1  # nothing refused was stored


def test_the_server_follows_the_alias_without_dropping_a_request(
    served: tuple[str, Params], client: MlflowClient, store, parts, bundle_dir
) -> None:
    url, _ = served
    new = register_bundle(client, store[1], parts, bundle_dir)[RAG]
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def keep_asking() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.post(f"{url}/ask", json={"question": QUESTIONS[2]})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.add(response.json()["version"])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        promote(client, RAG, new, by="test")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").json()["version"] != new:
            assert time.monotonic() < deadline, "the server never followed the alias"
            time.sleep(0.1)
        time.sleep(0.5)  # a few answers from the new version
    finally:
        stop.set()
        asker.join()
    assert not failures
    assert new in versions


def test_reload_on_request_when_polling_is_off(
    tmp_path: Path, champion_version: str, client: MlflowClient, store, parts, bundle_dir
) -> None:
    params = project_params(tmp_path, poll_seconds=0)
    with serving(params) as url:
        assert httpx.post(f"{url}/reload", timeout=60).json() == {
            "reloaded": False,
            "version": champion_version,
        }
        new = register_bundle(client, store[1], parts, bundle_dir)[RAG]
        promote(client, RAG, new, by="test")
        assert httpx.get(f"{url}/health").json()["version"] == champion_version  # no polling
        assert httpx.post(f"{url}/reload", timeout=60).json() == {"reloaded": True, "version": new}
        answer = httpx.post(f"{url}/ask", json={"question": QUESTIONS[0]}, timeout=60).json()
        assert answer["version"] == new


def test_ask_goes_through_the_running_server_and_loads_the_bundle_itself_without_one(
    tmp_path: Path, champion_version: str, bundle_dir: Path
) -> None:
    port = free_port()
    params_file = serving_project(tmp_path, serve__port=port, serve__poll_seconds=0)
    params = load_params(params_file)
    expected = load_bundle(bundle_dir).predict(QUESTIONS[:1])[0]
    ask = ["ask", QUESTIONS[0], "--params", str(params_file)]
    with serving(params, port) as url:
        via_server = CliRunner().invoke(app, ask)
        assert via_server.exit_code == 0, via_server.output
        # (the server, in this process, prints its own `serve:` lines to the same stdout)
        lines = [line for line in via_server.stdout.splitlines() if not line.startswith("serve:")]
        assert lines[0] == expected["answer"]
        served_by = f"sources (models:/{RAG}/{champion_version} (@champion) via {url}, request "
        assert lines[1].startswith(served_by)
        assert [line.split("] ", 1)[1] for line in lines[2:]] == [
            f"{title} ({doc_id})"
            for title, doc_id in zip(expected["source_titles"], expected["sources"], strict=True)
        ]
        # The server serves the champion only: another alias, or --local, loads here.
        for extra in (["--alias", "challenger"], ["--local"]):
            here = CliRunner().invoke(app, [*ask, *extra])
            assert here.exit_code == 0, here.output
            assert " via " not in here.stdout
    alone = CliRunner().invoke(app, ask)  # no server any more: the bundle loads here
    assert alone.exit_code == 0, alone.output
    assert alone.stdout.splitlines()[0] == expected["answer"]
    assert f"sources (models:/{RAG}/{champion_version} (@champion)):" in alone.stdout


def test_concurrent_questions_are_answered_together_each_with_its_own_answer(
    served: tuple[str, Params], bundle_dir: Path
) -> None:
    url, _ = served
    bundle = load_bundle(bundle_dir)
    questions = QUESTIONS * 3
    expected = {question: bundle.predict([question])[0]["answer"] for question in QUESTIONS}
    with (
        httpx.Client(timeout=60) as http,
        concurrent.futures.ThreadPoolExecutor(len(questions)) as pool,
    ):
        responses = list(
            pool.map(lambda q: http.post(f"{url}/ask", json={"question": q}), questions)
        )
    assert [r.status_code for r in responses] == [200] * len(questions)
    assert [r.json()["answer"] for r in responses] == [expected[q] for q in questions]
    assert len({r.json()["request_id"] for r in responses}) == len(questions)
