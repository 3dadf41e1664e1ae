"""The metrics and plot files of dvc.yaml are committable; every other uncached out is not.

They are `cache: false`, so only git can hold their past values: `dvc metrics diff`,
`dvc plots diff` and `dvc exp show` read them from commits. The other uncached outs (data docs,
reports, bundles) stay out of git, and DVC ignores the cached ones itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from dvc.repo import Repo

REPO = Path(__file__).resolve().parent.parent
_INTERPOLATION = re.compile(r"\$\{\s*([\w.]+)\s*\}")


def git_ignored(paths: list[str]) -> set[str]:
    """Those of `paths` (relative to the repo) that the repo's .gitignore files ignore."""
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return set(done.stdout.split())


def plot_files() -> list[str]:
    """The data files of dvc.yaml's top-level plots, `${...}` resolved from params.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text("utf-8"))

    def resolve(match: re.Match[str]) -> str:
        value = params
        for key in match.group(1).split("."):
            value = value[key]
        return str(value)

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))["plots"]
    return [
        _INTERPOLATION.sub(resolve, path)
        for plot in plots
        for definition in plot.values()
        for path in definition["y"]
    ]


def test_metrics_and_plots_are_committable_other_uncached_outs_are_ignored() -> None:
    outs = [out for out in Repo(str(REPO)).index.outs if not out.use_cache]
    metrics = [out.def_path for out in outs if out.metric]
    plots = plot_files()
    others = [out.def_path for out in outs if out.def_path not in {*metrics, *plots}]
    assert metrics and plots and others
    assert git_ignored([*metrics, *plots]) == set()
    # a path inside each: a folder out (data/bundle) is only ignored as a folder
    inside = [f"{path}/file" for path in others]
    assert git_ignored(inside) == set(inside)
