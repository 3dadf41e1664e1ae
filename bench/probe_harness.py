"""The probe's machinery: run a command in a project copy, bounded by a timeout, and tell what it
changed under data/ and in the registry (see bench/probe_failures.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.projects import REPO

STAGES = ("ingest", "validate", "dedup")
REGISTRY_TABLES = (
    "registered_models",
    "registered_model_tags",
    "registered_model_aliases",
    "model_versions",
    "model_version_tags",
)
# Root passes file modes by CAP_DAC_OVERRIDE: a command run without it meets them as a user would.
AS_A_USER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all", "--"]
TRACEBACK = "Traceback (most recent call last)"


# --- running a command ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one command did; `ok_stages` may rewrite their outputs, `lost` is found by the run."""

    rc: int | None  # None: still running at the timeout (killed)
    out: str
    err: str
    ok_stages: tuple[str, ...] = ()
    failed_stage: str | None = None
    shown_rc: str | None = None
    note: str = ""
    lost: list[str] = field(default_factory=list)


Command = Callable[[Path, float], Outcome]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This interpreter's scripts first on PATH, this checkout's code importable, no MLflow
    settings inherited from the shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "RAGLOOP_PARENT_RUN_ID")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    return env | (extra or {})


def spawn(
    argv: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,  # one process group: a hung run is killed with its children
        preexec_fn=preexec,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> Outcome:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Outcome(None, out, err)
    return Outcome(proc.returncode, out, err)


def execute(argv: list[str], cwd: Path, timeout: float, **kwargs: Any) -> Outcome:
    return finish(spawn(argv, cwd, **kwargs), timeout)


def stages(*names: str, wrap: tuple[str, ...] = (), **kwargs: Any) -> Command:
    """Run the stages in turn as dvc.yaml does, stopping at the first that fails; `wrap` is a
    command prefix (setpriv)."""

    def run(root: Path, timeout: float) -> Outcome:
        done: list[str] = []
        outcome = Outcome(0, "", "")
        for name in names:
            argv = [*wrap, sys.executable, "-m", f"tasks.{name}"]
            said = outcome
            outcome = execute(argv, root, timeout, **kwargs)
            # What every stage run said counts (ingest's warnings, not only the last stage's).
            outcome.out, outcome.err = said.out + outcome.out, said.err + outcome.err
            if outcome.rc != 0:
                outcome.failed_stage = name
                break
            done.append(name)
        outcome.ok_stages = tuple(done)
        return outcome

    return run


PIPELINE = stages(*STAGES)
INGEST = stages("ingest")
CLI = "import sys; from flows.cli import app; app(prog_name='ragloop')"


def ragloop(*args: str, folder: str = ".", env: dict[str, str] | None = None) -> Command:
    """The `ragloop` command of this checkout, run in `folder` of the project."""

    def run(root: Path, timeout: float) -> Outcome:
        return execute([sys.executable, "-c", CLI, *args], root / folder, timeout, env=env)

    return run


def error_line(outcome: Outcome) -> str:
    """The first `error:` line (DVC's own say `ERROR:`), with its indented continuation."""
    lines = (outcome.err + "\n" + outcome.out).splitlines()
    first = next((i for i, ln in enumerate(lines) if re.match(r"(error|ERROR):", ln)), None)
    if first is None:
        return "(none)"
    line = lines[first]
    if first + 1 < len(lines) and lines[first + 1].startswith(" "):
        line += " / " + lines[first + 1].strip()
    return line if len(line) <= 160 else line[:157] + "..."


# --- what must stay intact ------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under data/, by path relative to the project."""
    data = root / "data"
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(data.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def registry_snapshot(root: Path) -> str:
    """A digest of mlflow.db's registry rows; of its bytes when sqlite cannot read it."""
    db = root / "mlflow.db"
    if not db.is_file():
        return "absent"
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows = {
                t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}"))) for t in REGISTRY_TABLES
            }
    except sqlite3.DatabaseError:
        return "bytes " + sha256(db)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def stage_outs(root: Path) -> dict[str, list[str]]:
    """stage -> its outs and metrics under data/, from the project's dvc.yaml and params."""
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))

    def resolve(match: re.Match[str]) -> str:
        section, key = match.group(1).split(".")
        return str(params[section][key])

    every = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    outs: dict[str, list[str]] = {}
    for name, stage in every.items():
        entries = [*stage.get("outs", []), *stage.get("metrics", [])]
        keys = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
        outs[name] = [re.sub(r"\$\{([\w.]+)\}", resolve, k) for k in keys]
    return outs


def lost_outputs(
    root: Path, before: dict[str, str], outcome: Outcome, outs: dict[str, list[str]]
) -> tuple[list[str], list[str]]:
    """(earlier outputs changed or gone, new files left under data/), the allowed ones aside."""
    allowed = [o for s in outcome.ok_stages for o in outs.get(s, [])]
    if outcome.failed_stage == "validate":
        allowed += outs["validate"]
    after = data_snapshot(root)

    def free(path: str) -> bool:
        return any(path == o or path.startswith(o.rstrip("/") + "/") for o in allowed)

    lost = [p for p, digest in before.items() if not free(p) and after.get(p) != digest]
    extra = [p for p in after if p not in before and not free(p)]
    return lost, extra


@dataclass(frozen=True)
class Case:
    """One bad input or fault: `apply` changes a fresh copy of the project, `run` runs the
    command, `check` (always called) names a wrong result the exit code hides, or None."""

    name: str
    kind: str
    apply: Callable[[Path], None]
    run: Command = PIPELINE
    expect: str = "reject"  # reject | accept | either
    check: Callable[[Path, Outcome], str | None] | None = None
