"""Benchmark: the default pipeline cold, seconds per stage, against a baseline.

It clones this repository at a git ref into a scratch folder (no DVC cache, no MLflow store,
no embedding cache: what a newcomer's `make pipeline` meets after set-up), runs `dvc repro`
with this virtualenv's tools, and times each stage from DVC's "Running stage" line to the next
one (so a stage's time includes DVC hashing its outputs). The `stage_seconds` each stage run
logs to MLflow (its own process's wall time) are printed beside. The profile is written as
JSON; given a baseline profile (`--baseline`, recorded by an earlier run of this script, or
measured in the same run with `--baseline-ref`), it prints the ratio per stage and in total.

    python bench/pipeline_profile.py [--ref HEAD] [--baseline-ref REF | --baseline FILE]
        [--out profile.json] [--keep] [STAGE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def git_commit(ref: str) -> str:
    """The full commit a ref names, so a recorded profile says exactly what it measured."""
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", ref], check=True, capture_output=True, text=True
    ).stdout.strip()


def stage_seconds_from_store(project: Path) -> dict[str, float]:
    """Each stage run's own `stage_seconds` metric, read back from the clone's MLflow store."""
    db = project / "mlflow.db"
    if not db.exists():
        return {}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    found: dict[str, float] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            seconds = run.data.metrics.get("stage_seconds")
            if seconds is not None:
                found[run.info.run_name] = seconds
    return found


def profile(ref: str, keep: bool, targets: list[str]) -> dict[str, Any]:
    """Clone `ref`, run `dvc repro [targets]` cold, and return its seconds per stage."""
    commit = git_commit(ref)
    scratch = Path(tempfile.mkdtemp(prefix=f"ragloop-profile-{commit[:8]}-"))
    project = scratch / "project"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "checkout", "--quiet", commit], check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"profile: {ref} ({commit[:10]}) in {project}", flush=True)
    starts: list[tuple[str, float]] = []
    t0 = time.monotonic()
    with (
        subprocess.Popen(
            ["dvc", "repro", *targets],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
        (scratch / "dvc_repro.log").open("w") as log,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)  # what a user would have seen, kept with the clone (--keep)
            match = STAGE_LINE.match(line)
            if match:
                starts.append((match.group(1), time.monotonic() - t0))
                print(f"  [{starts[-1][1]:7.1f} s] {match.group(1)}", flush=True)
        returncode = proc.wait()
    total = time.monotonic() - t0
    if returncode != 0:
        sys.exit(
            f"error: dvc repro failed in {project} (exit {returncode}): its output is in "
            f"{scratch / 'dvc_repro.log'}; fix the stage and rerun"
        )
    ends = [start for _, start in starts[1:]] + [total]
    stages = {name: round(end - start, 1) for (name, start), end in zip(starts, ends, strict=True)}
    result = {
        "ref": ref,
        "commit": commit,
        "targets": targets,
        "total_seconds": round(total, 1),
        "stages": stages,
        "stage_seconds_logged": stage_seconds_from_store(project),
        "cpu": os.cpu_count(),
    }
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def print_table(current: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    """Seconds per stage, slowest first, beside the baseline's and their ratio."""
    base = baseline["stages"] if baseline else {}
    logged = current.get("stage_seconds_logged", {})
    names = sorted(set(current["stages"]) | set(base), key=lambda n: -current["stages"].get(n, 0))
    head = f"{'stage':<28}{'now s':>9}{'logged s':>10}"
    if baseline:
        head += f"{'before s':>10}{'now/before':>12}"
    print(head)
    for name in names:
        now = current["stages"].get(name)
        row = f"{name:<28}{_num(now):>9}{_num(logged.get(name)):>10}"
        if baseline:
            before = base.get(name)
            ratio = f"{now / before:.2f}" if now and before else "-"
            row += f"{_num(before):>10}{ratio:>12}"
        print(row)
    total = current["total_seconds"]
    row = f"{'total':<28}{total:>9.1f}{'':>10}"
    if baseline:
        row += f"{baseline['total_seconds']:>10.1f}{total / baseline['total_seconds']:>12.2f}"
    print(row)
    print(f"total: {total / 60:.1f} min ({current['commit'][:10]})", end="")
    if baseline:
        print(f" vs {baseline['total_seconds'] / 60:.1f} min ({baseline['commit'][:10]})", end="")
    print()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ref", default="HEAD", help="git ref to profile (default HEAD)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--baseline", type=Path, help="a profile JSON an earlier run wrote")
    group.add_argument("--baseline-ref", help="profile this ref first, in the same run")
    parser.add_argument("--out", type=Path, help="write this run's profile here (JSON)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch clones (dvc_repro.log beside each)"
    )
    parser.add_argument(
        "targets", nargs="*", help="stages to reproduce (with what they need); default all"
    )
    args = parser.parse_args()
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(args.baseline.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            sys.exit(f"error: cannot read the baseline profile {args.baseline}: {exc}")
    elif args.baseline_ref:
        baseline = profile(args.baseline_ref, args.keep, args.targets)
    current = profile(args.ref, args.keep, args.targets)
    if args.out:
        args.out.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
    print_table(current, baseline)


if __name__ == "__main__":
    main()
