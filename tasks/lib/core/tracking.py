"""MLflow tracking shared by every stage and flow: where runs go, and one run per stage.

A pipeline run is one MLflow parent run with one nested run per stage. Stages run as `dvc repro`
subprocesses. Under the Prefect flow the parent is the flow's, and its id reaches them through
the environment (`RAGLOOP_PARENT_RUN_ID`); under a plain `dvc repro` (or `dvc exp run`) the first
stage creates the parent, tagged with that dvc process's id, and the next stages find it by the
tag (`dvc_parent`). A stage run outside dvc (`python -m tasks.<stage>`) stands alone.

A stage opens its run when it starts, so the run's duration is the stage's and a crash leaves
a FAILED run. Its metrics are the headline numbers (`headline`): an interval's mean and no
paired differences; everything it logged, nested, is the run's `metrics.json` artifact.

Every entry to the store (`ensure_experiment`) first checks it in seconds (`store_health`): a
server that does not answer or a damaged sqlite file fails there, before any work, and
`tracking.required: false` lets a stage run unlogged instead.

Every stage run logs `stage_seconds`, the stage process's wall time from its start (the
interpreter and every import included) to the run's end, which is the stage's end, whether it
succeeded or failed; the run's start time is the process's start too.

mlflow is imported inside the functions, never at module level: importing it and opening its
store are slow, and a stage with `tracking.enabled: false` should not pay for either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tasks.lib.core.config import Params
from tasks.lib.core.dvc_parent import dvc_parent, millis, set_dvc_parent_state
from tasks.lib.core.store_health import StoreUnavailable, bound_http_client, store_problem

PARENT_RUN_ENV = "RAGLOOP_PARENT_RUN_ID"
STAGE_SECONDS = "stage_seconds"  # the metric every stage run logs (see the module docstring)
SERVER_SCHEMES = ("http://", "https://", "databricks")
METRICS_ARTIFACT = "metrics.json"  # every metric a stage logged, nested, beside the headline
# MLflow 3 opens an experiment on its GenAI traces page unless it is tagged as ML work.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(params: Params) -> str:
    """`MLFLOW_TRACKING_URI` > `tracking.uri` > sqlite `mlflow.db` in the project folder.

    The default is absolute so a stage, the flow, `mlflow ui` and the registry commands all
    open the same store whatever their working directory.
    """
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    if params.tracking.uri:
        return params.tracking.uri
    return f"sqlite:///{(params.project_dir / 'mlflow.db').resolve()}"


def artifact_location(params: Params, uri: str) -> str | None:
    """Where a local store keeps artifacts; None for a server, which decides that itself.

    Without this, MLflow puts a sqlite store's artifacts in `./mlruns` of whatever folder the
    process happens to run in.
    """
    if uri.startswith(SERVER_SCHEMES):
        return None
    return params.tracking.artifacts_dir.resolve().as_uri()


def open_store(params: Params) -> str:
    """Point mlflow at the project's store once it proved usable, and return its URI."""
    import mlflow

    uri = tracking_uri(params)
    bound_http_client(params.tracking)
    problem = store_problem(params, uri)
    if problem is not None:
        raise problem
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(params: Params) -> str:
    """Point mlflow at the project's store and return the experiment id, creating it once."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = open_store(params)
    name = params.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        # Another process may create it between our lookup and our create.
        with contextlib.suppress(MlflowException):
            mlflow.create_experiment(name, artifact_location=artifact_location(params, uri))
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise MlflowException(f"experiment {name!r} could not be created")
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store made before
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment.experiment_id


def logging_experiment(params: Params, who: str) -> str | None:
    """The experiment `who` logs to; None when tracking is off, or when the store is down and
    `tracking.required` is false (then `who` runs unlogged, after a warning)."""
    if not params.tracking.enabled:
        return None
    try:
        return ensure_experiment(params)
    except StoreUnavailable as err:
        if params.tracking.required:
            raise
        print(
            f"warning: {err.problem}; {who} runs without MLflow logging (tracking.required: false)",
            file=sys.stderr,
        )
        return None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (a KB file can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_manifest(folder: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file under `folder`."""
    return {
        path.relative_to(folder).as_posix(): file_digest(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def kb_docs_digest(docs_path: Path) -> str:
    """Fingerprint of the canonical docs file: ingest writes it sorted, so equal KB, equal hash."""
    return file_digest(docs_path)


def git_commit(start: Path) -> str | None:
    """HEAD's commit of the repository holding `start`, read from `.git` without running git.

    A stage must not depend on a git binary, and a project copied without `.git` simply has no
    commit tag.
    """
    for folder in [start.resolve(), *start.resolve().parents]:
        git_dir = folder / ".git"
        if git_dir.is_file():  # a worktree: ".git" names the real folder
            git_dir = (folder / git_dir.read_text().partition(":")[2].strip()).resolve()
        if not git_dir.is_dir():
            continue
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # detached HEAD
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        ref = head.removeprefix("ref: ")
        for base in (git_dir, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha
        return None  # a fresh repository with no commit yet
    return None


def run_tags(params: Params) -> dict[str, str]:
    """What identifies the inputs of a run: code (git), pipeline state (dvc.lock), and the KB."""
    project = params.project_dir
    tags = {}
    commit = git_commit(project)
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # the MLflow UI shows this one
    lock = project / "dvc.lock"
    if lock.is_file():
        tags["dvc_lock_hash"] = file_digest(lock)
    docs = params.paths.kb_docs
    if docs.is_file():
        tags["kb_docs_sha256"] = kb_docs_digest(docs)
    return tags


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys `dvc params diff` shows too."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else value
    return flat


def metric_key(name: str) -> str:
    """An MLflow-safe metric name: `recall@5` -> `recall_at_5` (MLflow rejects '@')."""
    safe = name.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in safe)


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flattened numeric entries of a metrics dict (e.g. a stage's metrics.json), safe keys."""
    return {
        metric_key(key): float(value)
        for key, value in flatten(metrics, prefix).items()
        if isinstance(value, int | float)
    }


PAIRED = " - "  # in a system's name: a paired difference of two systems ("tuned_rag - base_rag")


def headline(metrics: Mapping[str, float]) -> dict[str, float]:
    """The flattened metrics worth a column in the MLflow UI: an interval (`x.mean`, `x.low`,
    `x.high`) becomes its mean under `x`, paired differences are dropped. Other keys stay,
    the gate's `gate.<metric>.diff/low/high` included (no `.mean` beside them)."""
    kept: dict[str, float] = {}
    for key, value in metrics.items():
        if any(PAIRED in part for part in key.split(".")):
            continue
        base, _, end = key.rpartition(".")
        interval = base and all(f"{base}.{k}" in metrics for k in ("mean", "low", "high"))
        if interval and end in ("low", "high"):
            continue
        kept[base if interval and end == "mean" else key] = value
    return kept


def merge(into: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Deep-merge `values` into `into`: two calls logging `a.b` and `a.c` keep both."""
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class StageRun:
    """The MLflow run of one stage; every method is a no-op when tracking is disabled."""

    run_id: str | None
    # Everything `log_metrics` was given, nested: the run's `metrics.json` artifact.
    logged: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def log_metrics(
        self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None
    ) -> None:
        """Log the headline numeric leaves of a (nested) metrics dict (strings and lists are
        skipped), and the whole dict, merged with earlier calls, as the `metrics.json`
        artifact. A stepped series (a training curve) is logged whole, as metrics only."""
        if self.run_id is None:
            return
        import mlflow

        values = numeric_metrics(metrics, prefix)
        if step is not None:
            mlflow.log_metrics(values, step=step, run_id=self.run_id)
            return
        shown = headline(values)
        mlflow.log_metrics(shown, run_id=self.run_id)
        nested: dict[str, Any] = dict(metrics)
        for part in reversed([p for p in prefix.split(".") if p]):
            nested = {part: nested}
        merge(self.logged, nested)
        mlflow.log_dict(self.logged, METRICS_ARTIFACT, run_id=self.run_id)

    def log_params(self, values: Mapping[str, Any]) -> None:
        """Params beside the stage's section, such as what a setting resolved to on this machine
        (`precision.train_retriever: bf16` for `auto`)."""
        if self.run_id is None:
            return
        import mlflow

        mlflow.log_params(dict(values), run_id=self.run_id)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Log a file, or a folder's content under `artifact_path` (default: the folder name)."""
        if self.run_id is None:
            return
        import mlflow

        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path or path.name, run_id=self.run_id)
        else:
            mlflow.log_artifact(str(path), artifact_path, run_id=self.run_id)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact (the MLflow UI previews it)."""
        if self.run_id is None:
            return
        from mlflow import MlflowClient

        MlflowClient().log_figure(self.run_id, figure, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow import MlflowClient

        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(self.run_id, key, str(value))


def process_seconds() -> float:
    """Wall seconds since this process started, by the kernel's record of its start: a timer
    the stage started itself would miss the interpreter's start-up and the imports."""
    return time.time() - psutil.Process().create_time()


def run_name(stage: str, out: Path | None) -> str:
    """A stage run a second time on other outputs (e.g. the tuned-encoder index) names them."""
    return stage if out is None else f"{stage}[{out.name}]"


@contextlib.contextmanager
def stage_run(stage: str, params: Params) -> Iterator[StageRun]:
    """The MLflow run of `stage`: nested under the pipeline's parent run when there is one.

    Parent, in order: the run active in this process (a stage called from the flow itself),
    then `RAGLOOP_PARENT_RUN_ID` (a stage that `dvc repro` started for the flow), then the
    parent run of the plain `dvc repro` running this stage (`dvc_parent`); else the run stands
    alone. The run starts when this process started, unless it nests under another run of this
    process (whose start is not the stage's); `stage_seconds` is logged last, under the same
    condition. Logs the stage's params section and the input tags; the KB fingerprint is
    tagged on exit, so it names the KB the stage produced or read. An exception marks the run
    FAILED (and a plain `dvc repro`'s parent) and propagates. The store is checked before the
    stage does any work (see `logging_experiment`).
    """
    experiment_id = logging_experiment(params, stage)
    if experiment_id is None:
        yield StageRun(None)
        return
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    active = mlflow.active_run()
    parent_id, dvc_parent_id = None, None
    if active is not None:
        parent_id = active.info.run_id
    elif os.environ.get(PARENT_RUN_ENV):
        parent_id = os.environ[PARENT_RUN_ENV]
        experiment_id = mlflow.get_run(parent_id).info.experiment_id
    else:
        # The lock hash is left out: the stages change dvc.lock, and no stage sees its end state.
        parent_tags = {k: v for k, v in run_tags(params).items() if k != "dvc_lock_hash"}
        parent_id = dvc_parent_id = dvc_parent(experiment_id, parent_tags)
    tags = {"stage": stage} | run_tags(params)
    if parent_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_id
    start = None if active else millis(psutil.Process().create_time())
    created = mlflow.MlflowClient().create_run(
        experiment_id, start_time=start, tags=tags, run_name=stage
    )
    if dvc_parent_id:
        set_dvc_parent_state(dvc_parent_id, running=True, failed=False)
    failed = True
    try:
        with mlflow.start_run(run_id=created.info.run_id, nested=active is not None) as run:
            name = stage.partition("[")[0]  # `index[tuned]` runs with the `index` section
            section = params.model_dump(mode="json", by_alias=True).get(name)
            if isinstance(section, Mapping):
                mlflow.log_params(flatten(section, f"{name}."))
            print(f"{stage}: MLflow run {run.info.run_id} ({mlflow.get_tracking_uri()})")
            try:
                yield StageRun(run.info.run_id)
            finally:
                docs = params.paths.kb_docs
                if docs.is_file():
                    mlflow.set_tag("kb_docs_sha256", kb_docs_digest(docs))
                if active is None:
                    mlflow.log_metric(STAGE_SECONDS, process_seconds())
        failed = False
    finally:
        if dvc_parent_id:
            set_dvc_parent_state(dvc_parent_id, running=False, failed=failed)


@contextlib.contextmanager
def pipeline_run(
    params: Params, run_name: str, tags: Mapping[str, str] | None = None
) -> Iterator[StageRun]:
    """The parent run of a pipeline run; stage subprocesses started inside it nest under it.

    The id goes into this process's environment, which the `dvc repro` subprocesses inherit,
    and is removed on exit so a later stage run alone does not nest under a finished run.
    """
    experiment_id = logging_experiment(params, run_name)
    if experiment_id is None:
        yield StageRun(None)
        return
    import mlflow

    all_tags = {"stage": "pipeline"} | run_tags(params) | dict(tags or {})
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        previous = os.environ.get(PARENT_RUN_ENV)
        os.environ[PARENT_RUN_ENV] = run.info.run_id
        try:
            yield StageRun(run.info.run_id)
        finally:
            if previous is None:
                os.environ.pop(PARENT_RUN_ENV, None)
            else:
                os.environ[PARENT_RUN_ENV] = previous
            lock = params.project_dir / "dvc.lock"
            if lock.is_file():  # the pipeline's end state, after the stages updated it
                mlflow.set_tag("dvc_lock_hash", file_digest(lock))


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI: the server's own, or `mlflow ui`'s default address."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
