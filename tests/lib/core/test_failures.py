"""The error contract on real faults: every failure of a stage or a command is one `error:` line
and exit 1 (130 for Ctrl-C), the traceback only with RAGLOOP_DEBUG=1; and atomic writes that a
killed run cannot leave half-swapped or littered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.lib.core.config import load_params
from tasks.lib.core.io import (
    DEBUG_ENV,
    DEBUG_HINT,
    InputError,
    atomic_path,
    run_stage,
    user_error_reported,
)
from tests.support.projects import REPO, make_project


def stage_process(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ingest stage as `dvc repro` runs it in `project`."""
    return subprocess.run(
        [sys.executable, "-m", "tasks.ingest"],
        cwd=project,
        env=os.environ | {"PYTHONPATH": str(REPO)} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stage_writing_under_a_file_fails_with_the_path_and_the_fix(tmp_path: Path) -> None:
    """A real OS refusal (a file where the output's folder should be; chmod would not stop
    root, who runs CI), then the same with RAGLOOP_DEBUG=1."""
    params_file = make_project(tmp_path)
    out_folder = load_params(params_file).paths.kb_docs.parent
    out_folder.parent.mkdir(parents=True, exist_ok=True)
    out_folder.write_text("in the way\n", encoding="utf-8")
    result = stage_process(tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: cannot write {out_folder}: File exists: a file stands where a folder is "
        "needed: move it away"
    ]
    debug = stage_process(tmp_path, **{DEBUG_ENV: "1"})
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith(result.stderr.rstrip())
    assert out_folder.read_text(encoding="utf-8") == "in the way\n"


def test_disk_full_and_unexpected_failures_and_interrupts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fill_disk() -> None:
        Path("/dev/full").write_text("more than fits\n", encoding="utf-8")

    def crash() -> None:
        raise ValueError("no such mode 'dense2'")

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    cases = [(crash, 1), (interrupted, 130)]
    if Path("/dev/full").exists():  # the kernel's always-full device: a real ENOSPC
        cases.append((fill_disk, 1))
    errors = {}
    for main, code in cases:
        with pytest.raises(SystemExit) as exited:
            run_stage(main)
        assert exited.value.code == code
        errors[main.__name__] = capsys.readouterr().err
    assert errors["crash"] == (
        f"error: test_failures failed: ValueError: no such mode 'dense2' {DEBUG_HINT}\n"
    )
    assert (
        errors["interrupted"]
        == "error: test_failures interrupted; its earlier outputs are intact\n"
    )
    if "fill_disk" in errors:
        assert errors["fill_disk"].startswith("error: cannot write: No space left on device: free")

    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(SystemExit):
        run_stage(crash)
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("no such mode' in err


def test_only_crashes_are_worth_a_retry(capsys: pytest.CaptureFixture[str]) -> None:
    """Every failure prints `error:` now: the flow retries a stage only for a crash's line."""

    def reported(main: Callable[[], None]) -> list[str]:
        with pytest.raises(SystemExit):
            run_stage(main)
        return capsys.readouterr().err.splitlines()

    def bad_input() -> None:
        raise InputError("data/kb/docs.jsonl:3: malformed JSON")

    def crash() -> None:
        raise ZeroDivisionError("division by zero")

    assert user_error_reported(["ingest: 9 docs", *reported(bad_input)])

    def crash_of_many_lines() -> None:
        raise RuntimeError("the server said:\n  503 Service Unavailable")

    assert not user_error_reported(reported(crash))
    assert not user_error_reported(reported(crash_of_many_lines))
    assert not user_error_reported(["Killed"])  # no line at all: the process died


def test_cli_own_exits_pass_through_and_crashes_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ask` exits by itself when a bundle cannot load; a bundle that loads and then breaks is
    an unexpected failure, reported as one."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    params_file = make_project(tmp_path)
    missing = CliRunner().invoke(
        app, ["ask", "q?", "--bundle", str(tmp_path / "none"), "--params", str(params_file)]
    )
    assert missing.exit_code == 1
    assert missing.stderr == f"error: {tmp_path / 'none'}: not a bundle folder (no MLmodel file)\n"
    assert "failed: Exit" not in missing.stderr
    usage = CliRunner().invoke(app, ["search", "q", "--mode", "dense2"])
    assert usage.exit_code == 2 and "must be one of dense, bm25, hybrid" in usage.stderr


@pytest.mark.parametrize("command", [["status"], ["ask", "what is a glacier?"], ["history"]])
def test_cli_outside_a_project_is_one_error_line(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no params.yaml in {tmp_path}; run inside the project folder or pass "
        "--params PATH\n"
    )


def test_cli_on_an_unreachable_server_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` asked the registry outside the error handling: a traceback, before."""
    params_file = make_project(tmp_path, tracked=True)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    result = CliRunner().invoke(app, ["status", "--params", str(params_file)])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: MLflow tracking server http://127.0.0.1:{port} is not reachable "
        "(connection refused): start it"
    )


# --- atomic_path after killed runs ----------------------------------------------------------


def killed_writer(target: Path) -> int:
    """Run a real process that starts an atomic write of `target` and is killed in it; its pid."""
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tasks.lib.core.io import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.mkdir()\n"
        "    (tmp / 'part.jsonl').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code, str(target)], env=os.environ | {"PYTHONPATH": str(REPO)}
    )
    assert process.returncode == -signal.SIGKILL
    (left,) = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    return int(left.name.split(".")[2])


def test_dead_runs_temporaries_go_and_live_ones_stay(tmp_path: Path) -> None:
    target = tmp_path / "index"
    dead_pid = killed_writer(target)
    live = tmp_path / f".index.{os.getpid()}.keepme.tmp"  # a live writer's (this process)
    live.mkdir()
    other = tmp_path / f".index.v2.{dead_pid}.abc.tmp"  # a sibling target's, not ours
    other.mkdir()
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "docs.jsonl").write_text("whole")
    assert (target / "docs.jsonl").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index", live.name, other.name])


def test_a_swap_killed_between_its_renames_is_put_back(tmp_path: Path) -> None:
    """What a kill between the two renames leaves: the output only as `.index.old`."""
    target = tmp_path / "index"
    old = tmp_path / ".index.old"
    old.mkdir()
    (old / "docs.jsonl").write_text("previous")
    with atomic_path(target) as tmp:
        assert (target / "docs.jsonl").read_text() == "previous"  # readable again meanwhile
        tmp.mkdir()
        (tmp / "docs.jsonl").write_text("new")
    assert (target / "docs.jsonl").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]

    # Killed after the second rename: the output is whole, `.old` is a stale copy.
    old.mkdir()
    (old / "docs.jsonl").write_text("stale")
    with pytest.raises(RuntimeError), atomic_path(target):
        raise RuntimeError("the stage failed")
    assert (target / "docs.jsonl").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
