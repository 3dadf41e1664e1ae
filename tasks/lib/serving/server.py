"""`ragloop serve`: the bundle an alias names, over HTTP, following the alias as it moves.

FastAPI rather than MLflow's scoring server: the scoring server serves one fixed model URI per
process and knows no request ids, feedback or page, and it cannot swap to a new version; it
still serves the same bundle (`mlflow models serve -m models:/ragloop-rag@champion`) for
anyone who wants MLflow's protocol.

The bundle is loaded once, its components from the component cache. A poller (every
`serve.poll_seconds`, and on `POST /reload`) asks the registry which version the alias names;
when it moved, the new version loads beside the old one and replaces it in one assignment:
a request in flight finishes with the bundle it started with, the next one gets the new one,
and none is refused. A failed load keeps the old version serving and is reported by `/health`.
Generation runs in one thread, in batches: the questions that arrived while a batch was being
answered are answered together next (up to `bundle.batch_size`), so concurrent clients share
one forward pass instead of queueing one by one, and two generations never compete for the two
cores. Every answer is recorded in the feedback store, under the request id the answer carries.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from tasks.lib.serving.feedback import FeedbackRejected, FeedbackStore
from tasks.lib.serving.served import ServedBundle

if TYPE_CHECKING:
    from tasks.lib.core.config import ServeParams

PAGE = Path(__file__).with_name("page.html")


class AskRequest(BaseModel):
    question: str


class Source(BaseModel):
    id: str
    title: str
    snippet: str  # the passage's first serve.snippet_chars characters


class AskResponse(BaseModel):
    request_id: str  # what feedback on this answer names
    answer: str
    sources: list[Source]  # the cited passages, in prompt order
    model: str
    version: str


class FeedbackRequest(BaseModel):
    request_id: str
    good: bool
    answer: str | None = Field(default=None, description="a corrected answer")
    doc_id: str | None = Field(default=None, description="the KB doc that holds the answer")


class FeedbackResponse(BaseModel):
    feedback_id: int
    request_id: str


class ReloadResponse(BaseModel):
    reloaded: bool
    version: str


@dataclass
class Served:
    """The bundle being served with its passages by id; replaced whole, never edited."""

    bundle: ServedBundle
    docs: dict[str, dict[str, str]]

    @classmethod
    def of(cls, bundle: ServedBundle) -> Served:
        return cls(bundle, bundle.docs())


class Champion:
    """The served bundle, and the swap to the version the alias names now."""

    def __init__(self, load: Callable[[str], ServedBundle], version_now: Callable[[], str]) -> None:
        self._load, self._version_now = load, version_now
        self._swap = threading.Lock()  # one reload at a time; serving never waits for it
        self.current = Served.of(load(version_now()))
        self.last_error: str | None = None

    def refresh(self) -> bool:
        """Load and swap in the alias's version if it moved; whether it did."""
        with self._swap:
            version = self._version_now()
            if version == self.current.bundle.version:
                return False
            self.current = Served.of(self._load(version))
            return True

    def poll(self, seconds: float, stop: threading.Event) -> None:
        """Refresh every `seconds` until `stop`; a failure keeps the old version serving."""
        while not stop.wait(seconds):
            try:
                if self.refresh():
                    print(f"serve: now serving {self.current.bundle.uri}", flush=True)
                self.last_error = None
            except Exception as err:  # an unreachable registry must not stop the serving
                self.last_error = f"{type(err).__name__}: {err}"
                print(f"serve: alias check failed, still serving the old version: {err}")


Answered = tuple[dict[str, Any], Served]  # an answer, and the bundle (version) that gave it


class Batcher:
    """One thread answering the waiting questions together, with the bundle serving then."""

    def __init__(self, champion: Champion, batch_size: int) -> None:
        self._champion, self._batch_size = champion, batch_size
        self._waiting: queue.Queue[tuple[str, Future[Answered]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._waiting.put(None)
        self._thread.join()

    def answer(self, question: str) -> Answered:
        """Wait for this question's turn (its batch) and its answer."""
        future: Future[Answered] = Future()
        self._waiting.put((question, future))
        return future.result()

    def _run(self) -> None:
        while (first := self._waiting.get()) is not None:
            batch = [first]
            while len(batch) < self._batch_size and not self._waiting.empty():
                item = self._waiting.get()
                if item is None:
                    self._waiting.put(None)  # stop after this batch
                    break
                batch.append(item)
            served = self._champion.current
            try:
                answers = served.bundle.answer([question for question, _ in batch])
            except Exception as err:  # a failed batch fails its requests, not the server
                for _, future in batch:
                    future.set_exception(err)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                future.set_result((answer, served))


def source_list(
    answer: dict[str, Any], docs: dict[str, dict[str, str]], chars: int
) -> list[Source]:
    return [
        Source(id=doc_id, title=title, snippet=docs.get(doc_id, {}).get("text", "")[:chars])
        for doc_id, title in zip(answer["sources"], answer["source_titles"], strict=True)
    ]


def create_app(
    champion: Champion, store: FeedbackStore, settings: ServeParams, batch_size: int
) -> FastAPI:
    """The app over a loaded `champion`, answering up to `batch_size` questions together;
    polls the alias while it runs if poll_seconds > 0."""
    batcher = Batcher(champion, batch_size)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        batcher.start()
        if settings.poll_seconds > 0:
            threading.Thread(
                target=champion.poll, args=(settings.poll_seconds, stop), daemon=True
            ).start()
        yield
        stop.set()
        batcher.stop()

    app = FastAPI(title="ragloop", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict[str, Any]:
        bundle = champion.current.bundle
        return {
            "status": "ok",
            "model": bundle.model,
            "version": bundle.version,
            "alias": bundle.alias,
            "alias_check_error": champion.last_error,
        }

    @app.post("/ask")
    def ask(request: AskRequest) -> AskResponse:
        question = request.question.strip()
        if not question:
            raise HTTPException(422, "question: empty; ask a question")
        if len(question) > settings.max_question_chars:
            raise HTTPException(
                422,
                f"question: {len(question)} characters, more than serve.max_question_chars "
                f"({settings.max_question_chars}); shorten it",
            )
        started = time.perf_counter()
        answer, served = batcher.answer(question)  # with the version serving when it ran
        sources = source_list(answer, served.docs, settings.snippet_chars)
        request_id = store.record_answer(
            question,
            answer["answer"],
            answer["sources"],
            served.bundle.model,
            served.bundle.version,
        )
        elapsed = time.perf_counter() - started
        print(f"serve: answered {request_id} with v{served.bundle.version} in {elapsed:.2f} s")
        return AskResponse(
            request_id=request_id,
            answer=answer["answer"],
            sources=sources,
            model=served.bundle.model,
            version=served.bundle.version,
        )

    @app.post("/feedback")
    def feedback(request: FeedbackRequest) -> FeedbackResponse:
        try:
            feedback_id = store.add_feedback(
                request.request_id,
                request.good,
                request.answer,
                request.doc_id,
                champion.current.docs,
            )
        except FeedbackRejected as err:
            raise HTTPException(err.status, str(err)) from err
        return FeedbackResponse(feedback_id=feedback_id, request_id=request.request_id)

    @app.post("/reload")
    async def reload() -> ReloadResponse:
        try:
            reloaded = await run_in_threadpool(champion.refresh)
        except Exception as err:
            detail = f"reload failed, still serving the old version: {err}"
            raise HTTPException(503, detail) from err
        return ReloadResponse(reloaded=reloaded, version=champion.current.bundle.version)

    return app
