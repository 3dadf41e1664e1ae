"""Probe: every bad input and fault of the error contract, run for real, one table.

The contract: a failure a user can cause or meet prints `error: <what, where, how to fix>` on
stderr and exits non-zero, never a traceback, and the earlier outputs and the registry stay
byte-identical. This script measures it, so the same figures can be taken before and after a
fix. It builds a scratch project (the tests' tiny KB folder and QA file, the repo's params.yaml
and tasks/, a DVC project), runs ingest, validate and dedup once with `dvc repro`, registers one
champion version, then for each case copies that project, applies the bad input or the fault,
runs the command and records:

- the first `error:` line of stderr (or "(none)") and the exit code ("hung" past `--timeout`);
- traceback: "Traceback" on stdout or stderr;
- silent accept: exit 0 on wrong input, or a wrong result behind an exit 0 (a doc silently
  dropped or mangled, a pickle's code run);
- outputs intact: every file under data/ and the registry rows of mlflow.db as before, except
  the outputs of the stages that succeeded in the run and the report a failing validate writes
  by design (its summary is how the failed run is read);
- refused: exit non-zero on input that is valid (reported beside the three totals).

An input case runs ingest, validate and dedup in turn (`python -m tasks.<stage>`, as dvc.yaml
does), stopping at the first failure, so a wrong input caught by validate counts as caught.
No stage that loads a model or trains is run.

    python -m bench.probe_failures [--only CLASS] [--keep] [--timeout 60]

Run it from the repository root with `-m`, so the code measured is this checkout's.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.probe_faults import fault_cases
from bench.probe_harness import (
    STAGES,
    TRACEBACK,
    Case,
    data_snapshot,
    error_line,
    lost_outputs,
    registry_snapshot,
    stage_outs,
)
from bench.probe_inputs import input_cases
from tests.support.projects import dvc, init_dvc_project, make_project

CLASSES = ("jsonl", "qa", "kb", "params", "fault")
EXCEPTION = re.compile(r"[\w.]*(Error|Exception|Exit)\b.*:")  # a traceback's "Name: message" line


def build_project(root: Path) -> None:
    """The tests' tiny project as a DVC project, its early stages run, one champion registered."""
    make_project(root)
    init_dvc_project(root, STAGES)
    dvc(root, "repro", "dedup")
    from tasks.lib.core.config import load_params
    from tasks.lib.serving.registry import promote, register_folder, registry_client

    params = load_params(root / "params.yaml")
    client = registry_client(params)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    run = client.create_run(experiment.experiment_id, run_name="probe")
    model = root / "probe_model"
    model.mkdir()
    (model / "weights.txt").write_text("a registered version to protect\n", encoding="utf-8")
    version = register_folder(client, params.register_.judged, model, run.info.run_id)
    client.set_terminated(run.info.run_id)
    promote(client, params.register_.judged, version, by="probe")


@dataclass
class Row:
    case: Case
    error: str
    exit: str
    traceback: bool
    silent: str | None
    refused: bool
    hung: bool
    intact: str
    note: str


def probe(
    case: Case, base: Path, outs: dict[str, list[str]], scratch: Path, timeout: float, index: int
) -> Row:
    """Apply the case to a fresh copy of `base`, run it, judge it (`outs`: each stage's
    outputs, read from the unbroken project)."""
    root = scratch / f"case{index:02d}"
    shutil.copytree(base, root, symlinks=True)
    case.apply(root)
    before, registry = data_snapshot(root), registry_snapshot(root)
    outcome = case.run(root, timeout)
    lost, extra = lost_outputs(root, before, outcome, outs)
    lost += outcome.lost
    if registry_snapshot(root) != registry:
        lost.append("registry rows")
    silent = case.check(root, outcome) if case.check else None
    if outcome.rc == 0 and case.expect == "reject":
        silent = silent or "exit 0"
    traceback = TRACEBACK in outcome.out + outcome.err
    raised = (
        [ln for ln in outcome.err.splitlines() if EXCEPTION.match(ln)][-1:] if traceback else []
    )
    notes = [outcome.note, *raised, f"new under data/: {extra}" if extra else ""]
    return Row(
        case=case,
        error=error_line(outcome).replace(f"{root}/", ""),
        exit=outcome.shown_rc or ("hung" if outcome.rc is None else str(outcome.rc)),
        traceback=traceback,
        silent=silent,
        refused=case.expect == "accept" and outcome.rc not in (0, None),
        hung=outcome.rc is None,
        intact="yes" if not lost else "NO: " + ", ".join(lost),
        note="; ".join(n.replace(f"{root}/", "")[:160] for n in notes if n),
    )


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def print_table(rows: list[Row]) -> None:
    print(
        "| # | case | class | expect | first error line | exit | traceback | silent accept "
        "| outputs intact | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, start=1):
        silent = f"YES: {r.silent}" if r.silent else "no"
        refused = " (valid input refused)" if r.refused else ""
        print(
            f"| {i} | {cell(r.case.name)} | {r.case.kind} | {r.case.expect} | `{cell(r.error)}` "
            f"| {r.exit}{refused} | {'YES' if r.traceback else 'no'} | {cell(silent)} "
            f"| {cell(r.intact)} | {cell(r.note)} |"
        )
    inputs = sum(r.case.kind != "fault" for r in rows)
    print(f"\n{inputs} bad inputs, {len(rows) - inputs} faults.")
    print(f"tracebacks: {sum(r.traceback for r in rows)}")
    print(f"silent accepts: {sum(r.silent is not None for r in rows)}")
    print(f"outputs lost: {sum(r.intact != 'yes' for r in rows)}")
    hung, refused = sum(r.hung for r in rows), sum(r.refused for r in rows)
    print(f"also: hung {hung}, valid input refused {refused}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=CLASSES, help="run one class of cases")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before 'hung'")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ragloop-probe."))
    try:
        base = scratch / "base"
        base.mkdir()
        started = time.monotonic()
        build_project(base)
        cases = [c for c in input_cases() + fault_cases() if args.only in (None, c.kind)]
        outs, rows = stage_outs(base), []
        for i, case in enumerate(cases, start=1):
            rows.append(probe(case, base, outs, scratch, args.timeout, i))
            print(
                f"[{time.monotonic() - started:5.0f} s] {case.name}: {rows[-1].exit}",
                file=sys.stderr,
            )
        print_table(rows)
    finally:
        if args.keep:
            print(f"scratch folder kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
