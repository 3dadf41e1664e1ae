"""The probe's faults: an unreachable or hanging tracking server, a corrupt store, unwritable
or full outputs, a killed stage, concurrent runs, registry commands asked the impossible, a
malicious bundle (see bench/probe_failures.py)."""

from __future__ import annotations

import os
import pickle
import resource
import signal
import socket
import sys
import threading
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

from bench.probe_harness import (
    AS_A_USER,
    INGEST,
    Case,
    Outcome,
    data_snapshot,
    finish,
    ragloop,
    spawn,
    stages,
)
from bench.probe_inputs import LONG, chain, doc_line, edit_params, nothing
from tests.support.projects import dvc


def closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SilentServer:
    """Accepts every connection and never answers: a tracking server that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


def tracked(root: Path) -> None:
    edit_params("tracking.enabled", True)(root)


def corrupt_db(root: Path) -> None:
    (root / "mlflow.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))


def unwritable(root: Path) -> None:
    (root / "data/kb").chmod(0o555)


def unwritable_run(root: Path, timeout: float) -> Outcome:
    wrap = tuple(AS_A_USER) if os.geteuid() == 0 else ()
    outcome = stages("ingest", wrap=wrap)(root, timeout)
    (root / "data/kb").chmod(0o755)
    return outcome


def blocked_parent(root: Path) -> None:
    (root / "data/blocker").write_text("a file where a folder should be\n", encoding="utf-8")
    edit_params("paths.kb_docs", "data/blocker/docs.jsonl")(root)


def small_files() -> None:
    """Every file the process writes stops at 512 bytes (EFBIG, as a full disk gives ENOSPC):
    a real write failure without root tricks (Python ignores SIGXFSZ)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def big_kb(root: Path) -> None:
    rows = (doc_line(id=f"big{i}", text=f"{LONG} {i} " + "x" * 4000) for i in range(4000))
    (root / "my_kb/big.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")


def killed_mid_write(root: Path, timeout: float) -> Outcome:
    """SIGKILL ingest once its temporary docs file has bytes, check the outputs, then drop the
    big file and rerun: the rerun must succeed and give the earlier bytes back."""
    before = data_snapshot(root)
    proc = spawn([sys.executable, "-m", "tasks.ingest"], root)
    kb_dir, written, deadline = root / "data/kb", 0, time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not written:
        for tmp in kb_dir.glob(".docs.jsonl.*/docs.jsonl"):
            with suppress(FileNotFoundError):  # renamed into place meanwhile
                written = tmp.stat().st_size
        if written:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.001)
    proc.wait()
    killed = f"killed with {written} bytes written" if written else "kill missed (ingest ended)"
    after_kill = data_snapshot(root)
    lost = [p for p, d in before.items() if after_kill.get(p) != d]
    left = sorted({p.split("/")[2] for p in after_kill if p not in before})
    (root / "my_kb/big.jsonl").unlink()
    outcome = INGEST(root, timeout)
    outcome.lost = [f"{p} (after the kill)" for p in lost]
    rerun = data_snapshot(root)
    outcome.lost += [f"{p} (after the rerun)" for p, d in before.items() if rerun.get(p) != d]
    outcome.ok_stages = ()  # the rerun reads the earlier inputs: same bytes or a loss
    outcome.note = f"{killed}; rerun exit {outcome.rc}; temp left: {left or 'none'}"
    return outcome


def concurrent_repro(root: Path, timeout: float) -> Outcome:
    """Two `dvc repro -f ingest` at once; the same inputs, so the outputs must end as before."""
    argv = [sys.executable, "-m", "dvc", "repro", "-f", "ingest"]
    procs = [spawn(argv, root), spawn(argv, root)]
    outcomes = [finish(p, timeout) for p in procs]
    status = dvc(root, "status", "ingest", check=False)
    clean = "up to date" in status.stdout or not status.stdout.strip()
    codes = ["hung" if o.rc is None else str(o.rc) for o in outcomes]
    failing = [o for o in outcomes if o.rc != 0]
    return Outcome(
        failing[0].rc if failing else 0,
        "\n".join(o.out for o in outcomes),
        "\n".join(o.err for o in outcomes),
        shown_rc="/".join(codes),
        note=f"dvc status afterwards: {'clean' if clean else status.stdout.strip()[:60]}",
    )


MARKER = "pickle_ran.marker"
ASK = ("ask", "What is a widget?", "--bundle")


class Payload:
    """Unpickling this runs code: it writes the marker file (what a malicious bundle would do
    with a shell instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def malicious_bundle(root: Path) -> None:
    """A real pyfunc folder whose python_model.pkl was swapped for the payload."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any) -> Any:
            return model_input

    folder = root / "evil_bundle"
    mlflow.pyfunc.save_model(str(folder), python_model=Echo(), pip_requirements=[])
    (folder / "python_model.pkl").write_bytes(pickle.dumps(Payload(root / MARKER)))


def marker_absent(root: Path, outcome: Outcome) -> str | None:
    return "the bundle's pickle ran code (marker written)" if (root / MARKER).exists() else None


def outside(root: Path) -> None:
    (root / "elsewhere").mkdir()


def nothing_created(root: Path, outcome: Outcome) -> str | None:
    made = sorted(p.name for p in (root / "elsewhere").iterdir())
    outcome.note = f"created there: {made}" if made else "created nothing there"
    return None


def fault_cases() -> list[Case]:
    refused = f"http://127.0.0.1:{closed_port()}"
    silent = f"http://127.0.0.1:{SilentServer().port}"
    return [
        Case(
            "status, tracking URI refused",
            "fault",
            nothing,
            ragloop("status", env={"MLFLOW_TRACKING_URI": refused}),
        ),
        Case(
            "tracked ingest, URI refused",
            "fault",
            tracked,
            stages("ingest", env={"MLFLOW_TRACKING_URI": refused}),
        ),
        Case(
            "status, server never answers",
            "fault",
            nothing,
            ragloop("status", env={"MLFLOW_TRACKING_URI": silent}),
        ),
        Case("status, corrupt mlflow.db", "fault", corrupt_db, ragloop("status")),
        Case("tracked ingest, corrupt mlflow.db", "fault", chain(tracked, corrupt_db), INGEST),
        Case("output folder unwritable", "fault", unwritable, unwritable_run),
        Case("output's parent is a file", "fault", blocked_parent, INGEST),
        Case(
            "disk full (512-byte file limit)",
            "fault",
            nothing,
            stages("ingest", preexec=small_files),
        ),
        Case("SIGKILL mid-write, rerun", "fault", big_kb, killed_mid_write, expect="accept"),
        Case("concurrent dvc repro ingest", "fault", nothing, concurrent_repro, expect="either"),
        Case(
            "status outside a project",
            "fault",
            outside,
            ragloop("status", folder="elsewhere"),
            check=nothing_created,
        ),
        Case(
            "ask --bundle, malicious pickle",
            "fault",
            malicious_bundle,
            ragloop(*ASK, "evil_bundle"),
            check=marker_absent,
        ),
        Case(
            "malicious pickle, unpickling allowed",
            "fault",
            malicious_bundle,
            ragloop(*ASK, "evil_bundle", env={"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}),
            check=marker_absent,
        ),
        Case(
            "ask --bundle, no such folder",
            "fault",
            nothing,
            ragloop(*ASK, "no_bundle"),
        ),
        Case("rollback, no previous champion", "fault", nothing, ragloop("rollback")),
        Case("promote --version 999", "fault", nothing, ragloop("promote", "--version", "999")),
        Case(
            "promote --model unknown",
            "fault",
            nothing,
            ragloop("promote", "--version", "1", "--model", "nope"),
        ),
    ]
