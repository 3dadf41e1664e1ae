"""The parent run of a plain `dvc repro` (or `dvc exp run`): one per dvc process.

DVC starts each stage as its own process and has no hook around a whole run, so the first
stage to log creates the parent, tagged with its dvc ancestor's pid and start time, and the
stages after it find it by that tag. The parent spans the dvc process's start to the end of the
last stage that ran, and stays FAILED once a stage failed. mlflow is imported inside the
functions, as in `tracking`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import psutil

DVC_PROCESS_TAG = "dvc_process"  # "<pid>:<start time>" of the `dvc repro` a parent run spans


def millis(seconds: float) -> int:
    """MLflow's timestamps are integer milliseconds."""
    return int(seconds * 1000)


def dvc_ancestor() -> psutil.Process | None:
    """The `dvc repro` / `dvc exp run` process this one runs under (dvc starts a stage through
    a shell), or None."""
    for process in psutil.Process().parents():
        try:
            words = process.cmdline()
        except psutil.Error:  # a parent that ended or that we may not read
            continue
        if "dvc" in {Path(word).name for word in words} and {"repro", "exp"} & set(words):
            return process
    return None


def dvc_parent(experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The parent run of the `dvc repro` this stage runs under, created by its first stage; None
    outside dvc. Created with `tags`, found by the tag holding the dvc process's pid and start
    time (a pid alone is reused): the stages of one `dvc repro` run one after the other, so no
    two create it."""
    dvc = dvc_ancestor()
    if dvc is None:
        return None
    from mlflow import MlflowClient

    client = MlflowClient()
    started = dvc.create_time()
    key = f"{dvc.pid}:{started}"
    found = client.search_runs([experiment_id], f"tags.{DVC_PROCESS_TAG} = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    command = "dvc exp run" if "exp" in dvc.cmdline() else "dvc repro"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    parent = client.create_run(
        experiment_id,
        start_time=millis(started),
        tags=dict(tags) | {"stage": "pipeline", DVC_PROCESS_TAG: key},
        run_name=f"{command} {when}",
    )
    return parent.info.run_id


def set_dvc_parent_state(parent_id: str, running: bool, failed: bool) -> None:
    """RUNNING while a stage runs; then FINISHED ending at this stage's end, or FAILED for good
    once a stage failed (`dvc repro --keep-going` runs the others)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if client.get_run(parent_id).info.status == "FAILED":
        return
    if running:
        client.update_run(parent_id, status="RUNNING")
    else:
        client.set_terminated(parent_id, "FAILED" if failed else "FINISHED", millis(time.time()))
