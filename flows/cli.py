"""The `ragloop` command: what people run besides `dvc repro`."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from prefect import Flow

    from tasks.lib.core.config import Params

app = typer.Typer(
    help="ragloop: keep a RAG system fine-tuned as its knowledge base changes.",
    no_args_is_help=True,
)


def _version(shown: bool) -> None:
    """`--version`: the installed distribution's version, then exit."""
    if not shown:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"ragloop {version('ragloop')}")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        typer.echo("ragloop (not installed: pip install . for a version)")
    raise typer.Exit()


@app.callback()
def _root(
    _: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """ragloop: keep a RAG system fine-tuned as its knowledge base changes."""


# --- registry and orchestration -------------------------------------------------------------
# mlflow and prefect are imported inside the commands: `ragloop --help` should not pay for them.

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="the project's params.yaml")


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Any failure of a command (bad params, a refused registry request, an unreachable store, a
    file the OS refused, a bug) is one `error:` line and exit 1; RAGLOOP_DEBUG=1 adds the
    traceback. typer's own exits and usage errors pass through."""
    from tasks.lib.core.io import reported_failures

    with reported_failures("ragloop", passthrough=(typer.Exit, typer.Abort, typer.TyperException)):
        yield


def _load(params_file: Path) -> Params:
    """The project's params, or a clear error and exit 1."""
    from tasks.lib.core.config import load_project_params

    with _user_errors():
        return load_project_params(params_file, "pass --params PATH")


def _actor() -> str:
    """Who moves an alias by hand, as the promotion history records it."""
    import getpass

    try:
        return f"manual: {getpass.getuser()}"
    except (KeyError, OSError):  # no login name in this environment
        return "manual"


def _registry(model: str | None, params_file: Path) -> tuple[MlflowClient, str, str]:
    """A client on the project's registry, the model asked for (default register.judged), and
    the serving bundle (register.judged), whose champion's pins its components follow."""
    from tasks.lib.serving.registry import registry_client

    settings = _load(params_file)
    bundle = settings.register_.judged
    with _user_errors():
        return registry_client(settings), model or bundle, bundle


def _notes(notes: Iterable[str]) -> None:
    """What a command reconciled or found out of line, one line each."""
    for note in notes:
        typer.echo(f"note: {note}")


@app.command()
def promote(
    version: str = typer.Option(..., help="the registered version to make champion"),
    model: str = typer.Option(None, help="registered model (default: register.judged)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Make a version the champion by hand (the gate is bypassed; the old one stays restorable)."""
    from tasks.lib.serving.registry import promote as promote_version

    client, name, bundle = _registry(model, params)
    with _user_errors():
        move = promote_version(client, name, version, by=_actor(), bundle=bundle)
    _notes(move.notes)
    if move.replaced == move.version:
        typer.echo(f"{name}: v{move.version} is champion already (aliases checked)")
    else:
        was = f" (was v{move.replaced})" if move.replaced else ""
        typer.echo(f"{name}: v{move.version} is champion{was}")


@app.command()
def rollback(
    model: str = typer.Option(None, help="registered model (default: register.judged)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Put the previous champion back."""
    from tasks.lib.serving.registry import rollback as rollback_model

    client, name, bundle = _registry(model, params)
    with _user_errors():
        move = rollback_model(client, name, by=_actor(), bundle=bundle)
    _notes(move.notes)
    retired = f"v{move.replaced} retired" if move.replaced else "no champion alias before"
    typer.echo(f"{name}: v{move.version} is champion again ({retired})")


@app.command()
def status(params: Path = PARAMS_OPTION) -> None:
    """Champion, challenger and previous champion of each registered model, with metrics."""
    from tasks.lib.core.tracking import metric_key
    from tasks.lib.serving.registry import registry_client, serving_notes
    from tasks.lib.serving.registry import status as registry_status

    settings = _load(params)
    gate = settings.register_.gate
    shown = [metric_key(m) for m in [*gate.primary, *gate.tracked]]
    with _user_errors():
        client = registry_client(settings)
        rows = registry_status(client, settings.register_.models)
        notes = serving_notes(client, settings.register_.judged)
    if not rows:
        typer.echo("no registered versions yet: run the pipeline (`dvc repro` or the flow)")
        return
    # One plain line per alias: readable in any terminal width, and greppable.
    for row in rows:
        values = " ".join(f"{m}={row.metrics[m]:.4f}" for m in shown if m in row.metrics)
        run = f"run {row.run_id[:12]}" if row.run_id else "no run"
        typer.echo(f"{row.model:20s} {row.alias:17s} v{row.version:<4s} {values}  ({run})")
    _notes(notes)


def _decision_text(decision: dict | None) -> str:
    """The gate's numbers behind a move: each deciding interval and its question count."""
    if not decision:
        return ""
    intervals = "; ".join(
        f"{metric} {i['diff']:+.4f} [{i['low']:+.4f}, {i['high']:+.4f}] n={i['n']} vs {i['vs']}"
        for metric, i in decision["intervals"].items()
    )
    return f"  {decision['rule']} rule: {intervals or 'no interval'}"


@app.command()
def history(
    model: str = typer.Option(None, help="registered model (default: register.judged)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Every champion move, oldest first: which version served from when, who moved it, and the
    gate's numbers."""
    from tasks.lib.serving.registry import (
        CHAMPION,
        aliases,
        named_versions,
        promotion_events,
        registry_client,
        served_history,
        serving_notes,
    )

    settings = _load(params)
    name = model or settings.register_.judged
    with _user_errors():
        client = registry_client(settings)
        events = promotion_events(client, name)
        champion = aliases(client, name).get(CHAMPION)
        champions, _ = served_history(client, name)
        notes = serving_notes(client, name)
    if not events:
        typer.echo(f"{name}: no champion moves recorded yet")
        return
    typer.echo(f"{name}: {len(events)} champion moves, oldest first")
    for event in events:
        was = f"v{event['previous']}" if event["previous"] else "none"
        typer.echo(
            f"#{event['n']} {event['at']}  v{event['version']} champion (was {was})  "
            f"{event['action']} by {event['by']}" + _decision_text(event["decision"])
        )
        for note in event.get("notes", []):
            typer.echo(f"    reconciled: {note}")
    typer.echo(f"champions, oldest first: {named_versions(champions)}")
    _notes(notes)
    typer.echo(f"champion now: v{champion}" if champion else "no champion now")


BUNDLE_OPTION = typer.Option(
    None, "--bundle", help="a local bundle folder instead of the registry (e.g. data/bundle)"
)


@app.command()
def ask(
    question: str = typer.Argument(..., help="the question to answer"),
    alias: str = typer.Option("champion", help="registry alias to serve (champion, challenger)"),
    bundle: Path = BUNDLE_OPTION,
    local: bool = typer.Option(
        False, "--local", help="load the bundle here even if `ragloop serve` serves the alias"
    ),
    params: Path = PARAMS_OPTION,
) -> None:
    """Answer a question with the champion RAG bundle from the registry, citing its sources.

    When `ragloop serve` runs at serve.host:serve.port and serves that alias, it answers (in
    about a second, with a request id for `ragloop feedback`); otherwise the bundle is loaded
    here. A registered bundle is checked file by file against the sha256 manifest the registry
    holds, and any bundle against running other code than ragloop's, before it is loaded.
    Registered versions are downloaded once into paths.component_cache and reused."""
    settings = _load(params)
    with _user_errors():
        if bundle is None and not local:
            from tasks.lib.serving.client import served_answer, server_url

            url = server_url(settings.serve.host, settings.serve.port)
            served = served_answer(url, settings.register_.judged, alias, question)
            if served is not None:
                uri = f"models:/{served['model']}/{served['version']} (@{alias})"
                typer.echo(served["answer"])
                typer.echo(f"sources ({uri} via {url}, request {served['request_id']}):")
                for rank, source in enumerate(served["sources"], start=1):
                    typer.echo(f"  [{rank}] {source['title']} ({source['id']})")
                return
        from tasks.lib.serving.bundle import load_bundle
        from tasks.lib.serving.served import load_served_bundle

        if bundle is not None:
            uri = str(bundle)
            model = load_bundle(bundle)
        else:
            loaded = load_served_bundle(settings, alias)
            uri, model = loaded.uri, loaded.pyfunc
        (result,) = model.predict([question])
    typer.echo(result["answer"])
    typer.echo(f"sources ({uri}):")
    for rank, (doc_id, title) in enumerate(
        zip(result["sources"], result["source_titles"], strict=True), start=1
    ):
        typer.echo(f"  [{rank}] {title} ({doc_id})")


@app.command()
def serve(
    alias: str = typer.Option(None, help="registry alias to follow [default: serve.alias]"),
    host: str = typer.Option(None, help="address to listen on [default: serve.host]"),
    port: int = typer.Option(None, help="port to listen on [default: serve.port]"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Serve the champion over HTTP until Ctrl-C: POST /ask, POST /feedback, GET /health,
    POST /reload, and a page at / to ask and rate answers.

    The bundle loads once (its components from paths.component_cache); when the alias moves
    (checked every serve.poll_seconds, or on POST /reload) the new version is loaded and
    swapped in without a restart or a dropped request. Answers and feedback are stored in
    feedback.database."""
    import uvicorn

    from tasks.lib.serving.feedback import FeedbackStore
    from tasks.lib.serving.served import alias_version, load_served_bundle
    from tasks.lib.serving.server import Champion, create_app

    settings = _load(params)
    followed = alias or settings.serve.alias
    with _user_errors():
        champion = Champion(
            lambda version: load_served_bundle(settings, followed, version),
            lambda: alias_version(settings, followed),
        )
        store = FeedbackStore.open(settings.feedback, settings.project_dir)
    address = f"http://{host or settings.serve.host}:{port or settings.serve.port}"
    typer.echo(f"serve: {champion.current.bundle.uri} on {address} (Ctrl-C stops)")
    app_ = create_app(champion, store, settings.serve, settings.bundle.batch_size)
    try:
        uvicorn.run(app_, host=host or settings.serve.host, port=port or settings.serve.port)
    finally:
        store.close()


@app.command()
def feedback(
    request_id: str = typer.Argument(..., help="the request id the answer was served with"),
    good: bool = typer.Option(..., "--good/--bad", help="whether the answer was right"),
    answer: str = typer.Option(None, "--answer", help="the right answer (with --bad)"),
    doc: str = typer.Option(None, "--doc", help="id of the KB doc that holds the right answer"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Say whether a served answer was right, and correct it: accepted feedback joins the next
    training set (the feedback_export stage), and enough of it makes `watch` retrain."""
    from tasks.lib.core.io import InputError
    from tasks.lib.serving.champion import champion_state
    from tasks.lib.serving.feedback import FeedbackStore
    from tasks.lib.serving.registry import registry_client

    settings = _load(params)
    name = settings.register_.judged
    with _user_errors():
        known_docs: set[str] = set()
        if doc is not None:  # only a named doc needs the served KB, which the registry holds
            state = champion_state(registry_client(settings), name)
            if state is None:
                raise InputError(
                    f"feedback: --doc {doc!r}: {name} has no champion whose KB could hold it: "
                    "leave out --doc, or promote a version first (`ragloop promote`)"
                )
            known_docs = {d["id"] for d in state.docs}
        store = FeedbackStore.open(settings.feedback, settings.project_dir)
        try:
            feedback_id = store.add_feedback(request_id, good, answer, doc, known_docs)
        finally:
            store.close()
    said = ("good" if good else "bad") + (", corrected" if answer else "")
    where = f", doc {doc}" if doc else ""
    typer.echo(f"feedback #{feedback_id} on {request_id} stored ({said}{where})")


def _run_flow(target: Flow, params: Path) -> None:
    """Run a flow once in this process (Prefect's temporary local API unless PREFECT_API_URL
    names a server); its failure is one `error:` line like any command's."""
    _load(params)  # a bad params file fails here, before Prefect starts
    with _user_errors():
        target(str(params.resolve()))


@app.command()
def run(params: Path = PARAMS_OPTION) -> None:
    """Run the whole pipeline once through the retrain flow: every DVC stage as a Prefect task
    (DVC skips what is unchanged), then the gate; records the KB the watcher compares with."""
    from flows.retrain import retrain as retrain_flow

    _run_flow(retrain_flow, params)


app.command(
    "retrain", help="The same as `run`, under the retrain flow's name (`schedule` serves it)."
)(run)


@app.command()
def refresh(params: Path = PARAMS_OPTION) -> None:
    """Serve a changed KB without retraining: the champion's models re-index it, and the
    refresh gate promotes the refreshed bundle or keeps the champion."""
    from flows.refresh import refresh as refresh_flow

    _run_flow(refresh_flow, params)


@app.command()
def watch(params: Path = PARAMS_OPTION) -> None:
    """One KB watcher check: nothing if the KB source is unchanged since the last successful
    run, else the refresh flow (only docs changed) or the retrain flow."""
    from flows.watch import watch as watch_flow

    _run_flow(watch_flow, params)


@app.command()
def schedule(
    cron: str = typer.Option(..., help='cron expression, e.g. "0 3 * * *" (daily at 03:00)'),
    on_change: bool = typer.Option(
        False,
        "--on-change",
        help="serve the KB watcher: refresh the champion (no retraining) only if the KB changed",
    ),
    params: Path = PARAMS_OPTION,
) -> None:
    """Serve the retrain flow (or the KB watcher, which starts the refresh flow on a KB change)
    on a cron schedule; needs a Prefect server."""
    from prefect.settings import PREFECT_API_URL

    _load(params)

    if not PREFECT_API_URL.value():
        typer.echo(
            "error: schedules need a Prefect server (the temporary local API cannot schedule).\n"
            "  start one:  prefect server start\n"
            "  then:       export PREFECT_API_URL=http://127.0.0.1:4200/api",
            err=True,
        )
        raise typer.Exit(2)
    from flows.retrain import retrain
    from flows.watch import watch

    target = watch if on_change else retrain
    target.serve(
        name=f"{target.name}-scheduled",
        cron=cron,
        parameters={"params_file": str(params.resolve())},
    )


# --- retrieval ------------------------------------------------------------------------------

INDEX_OPTION = typer.Option(
    None, "--index", help="an index folder (default: the champion's, else paths.index_dir)"
)


@app.command()
def search(
    query: str = typer.Argument(..., help="the question or keywords"),
    mode: str = typer.Option("hybrid", help="dense | bm25 | hybrid (weighted RRF, tuned if tuned)"),
    k: int = typer.Option(5, "-k", "--k", min=1, help="hits to show"),
    index: Path = INDEX_OPTION,
    params: Path = PARAMS_OPTION,
) -> None:
    """Search the KB: ranked titles, scores and snippets.

    Without --index it searches what the champion serves (its bundle's index, fusion and
    encoder, from the registry), or, before there is a champion, the project's base index.
    """
    from rich.console import Console
    from rich.table import Table

    from tasks.lib.core.config import RETRIEVAL_MODES
    from tasks.lib.retrieval.encoder import encode_precision
    from tasks.lib.retrieval.retriever import Retriever, load_fusion
    from tasks.lib.serving.champion import champion_retriever
    from tasks.lib.serving.registry import registry_client

    if mode not in RETRIEVAL_MODES:
        raise typer.BadParameter(
            f"must be one of {', '.join(RETRIEVAL_MODES)}", param_hint="--mode"
        )
    settings = _load(params)
    dense = mode != "bm25"  # BM25 alone needs no encoder: none is downloaded or loaded
    with _user_errors(), tempfile.TemporaryDirectory(prefix="ragloop-search.") as tmp:
        served = None
        if index is None and settings.tracking.enabled:
            client = registry_client(settings)
            served = champion_retriever(client, settings.register_.judged, Path(tmp), dense)
        if served is not None:
            version, retriever = served
            fusion, fusion_source = retriever.fusion, f"champion v{version}"
        else:
            fusion, fusion_source = load_fusion(settings)
            folder = index or settings.paths.index_dir
            if index is None:
                why = "no champion yet" if settings.tracking.enabled else "tracking is off"
                _notes([f"{why}: searching the base index {folder}"])
            retriever = Retriever.load(
                folder,
                fusion,
                base=settings.project_dir,
                precision=encode_precision(settings),
                dense=dense,
            )
        hits = retriever.search(query, k=k, mode=mode)  # type: ignore[arg-type]
    table = Table("#", "title", "score", "snippet", title=f"{mode}: {query}")
    for rank, hit in enumerate(hits, start=1):
        snippet = hit.text if len(hit.text) <= 160 else hit.text[:157].rsplit(" ", 1)[0] + "..."
        table.add_row(str(rank), hit.title, f"{hit.score:.4f}", snippet)
    Console(width=max(Console().width, 120)).print(table)
    if mode == "hybrid":
        typer.echo(
            f"fusion: rrf_k={fusion.rrf_k:g}, dense {fusion.dense_weight:g} / bm25 "
            f"{fusion.bm25_weight:g}, {fusion.candidates} candidates a side ({fusion_source})"
        )
    if not hits:
        typer.echo("no hits (BM25 needs a word of the query in a doc)")
