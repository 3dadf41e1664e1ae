"""Small real projects for tests: the repo's params.yaml plus a tiny KB folder and QA file, and
the dvc command run in one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

if TYPE_CHECKING:
    from mlflow import MlflowClient

from tasks.lib.core.config import load_params
from tasks.lib.serving.scores import CHANGE_SET, TEST_SET, evaluation_files, score_rows

REPO = Path(__file__).resolve().parents[2]

TOPICS = [
    ("Widget", "The widget is a small blue device that measures river levels every hour."),
    ("Lighthouse", "A lighthouse guides ships along dangerous coasts with a rotating lamp."),
    ("Glacier", "A glacier is a slow river of ice formed from compacted snow over centuries."),
    ("Volcano", "A volcano vents molten rock, ash and gases from a chamber below the crust."),
    ("Orchard", "An orchard is a planting of fruit trees such as apples, pears and plums."),
    ("Telescope", "A telescope gathers light with lenses or mirrors to observe distant stars."),
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_kb_folder(folder: Path) -> None:
    """Markdown with a heading, plain text, and canonical JSONL docs."""
    (folder / "guides").mkdir(parents=True)
    (folder / "guides/install.md").write_text(
        "# Installing the widget\n\nRun the installer, then calibrate the sensor twice.\n",
        encoding="utf-8",
    )
    (folder / "faq.txt").write_text("The widget is waterproof down to ten metres.\n", "utf-8")
    write_jsonl(
        folder / "docs.jsonl",
        [
            {
                "id": "j1",
                "title": "J one",
                "text": "Jsonl docs keep their own fields.",
                "source": "jsonl source",
            }
        ]
        + [
            {"id": title.lower(), "title": title, "text": text, "source": "topics"}
            for title, text in TOPICS
        ],
    )


def qa_rows() -> list[dict[str, Any]]:
    rows = [
        {
            "id": "q0",
            "question": "How deep is the widget waterproof?",
            "answers": ["ten metres"],
            "doc_ids": ["faq"],
            "group": "g0",
        }
    ]
    rows += [
        {
            "id": f"q{i}",
            "question": f"What is a {title.lower()}?",
            "answers": [text.split(" ")[-1]],
            "doc_ids": [title.lower()],
            "group": f"g{i}",
        }
        for i, (title, text) in enumerate(TOPICS, start=1)
    ]
    return rows


def make_project(
    root: Path, source: str = "folder", tracked: bool = False, **overrides: Any
) -> Path:
    """Write params.yaml (the repo's, with `ingest` pointed at a tiny KB) and return its path.

    MLflow tracking is off unless `tracked`: opening a fresh sqlite store costs seconds per
    test, and the tracking tests switch it on where it is the behaviour under test.
    """
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["tracking"]["enabled"] = tracked
    if source == "folder":
        make_kb_folder(root / "my_kb")
        write_jsonl(root / "my_qa/qa.jsonl", qa_rows())
        params["ingest"].update(source="folder", kb_folder="my_kb", qa_folder="my_qa")
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (root / params["ingest"]["updates_folder"]).mkdir(parents=True, exist_ok=True)  # a dvc dep
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params_file


def make_tracked_project_on_kb(root: Path, **overrides: Any) -> Path:
    """A tracked project reading the KB and QA the caller wrote to `my_kb/` and `my_qa/qa.jsonl`
    (`source="packaged"` only keeps make_project from writing a KB of its own)."""
    return make_project(
        root,
        source="packaged",
        tracked=True,
        ingest__source="folder",
        ingest__kb_folder="my_kb",
        ingest__qa_folder="my_qa",
        **overrides,
    )


def project_mlflow_client(params_file: Path) -> MlflowClient:
    """A client on the store the project's params point at (its sqlite file by default)."""
    from mlflow import MlflowClient

    from tasks.lib.core.config import load_params
    from tasks.lib.core.tracking import tracking_uri

    return MlflowClient(tracking_uri(load_params(params_file)))


SystemsScores = Mapping[str, Mapping[str, Sequence[float]]]  # system -> metric -> per question


def write_evaluation(
    params_file: Path,
    test: SystemsScores,
    champion_version: str | None = None,
    change: SystemsScores | None = None,
    folder: Path | None = None,
) -> None:
    """What evaluate leaves for register in `folder` (default paths.evaluate_dir): the scores
    file (questions q0, q1, ...; the `champion` system tagged with `champion_version`) and
    metrics.json with their means."""
    metrics_file, scores_file = evaluation_files(load_params(params_file).paths, folder)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for question_set, systems in [(TEST_SET, test), (CHANGE_SET, change or {})]:
        for system, metrics in systems.items():
            n = len(next(iter(metrics.values())))
            per_question = [{m: float(v[i]) for m, v in metrics.items()} for i in range(n)]
            version = champion_version if system == "champion" else None
            ids = [f"{question_set}-q{i}" for i in range(n)]
            rows += score_rows(system, question_set, ids, per_question, version)
            means = {m: float(np.mean(v)) for m, v in metrics.items()}
            if question_set == TEST_SET:
                report[system] = means
            else:
                report.setdefault(CHANGE_SET, {})[system] = means
    if change is not None:
        sizes = [len(next(iter(m.values()))) for m in change.values()]
        report.setdefault(CHANGE_SET, {})["n"] = sizes[0] if sizes else 0
    write_jsonl(scores_file, rows)
    metrics_file.write_text(json.dumps(report), encoding="utf-8")


def init_dvc_project(root: Path, stages: Iterable[str]) -> None:
    """Make `root` a DVC project with the repo's code and these stages of its dvc.yaml."""
    shutil.copytree(REPO / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    every = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    wanted = set(stages)
    kept = {name: stage for name, stage in every.items() if name in wanted}  # the file's order
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": kept}, sort_keys=False), "utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # folder code deps skip __pycache__
    # What `dvc config` would write, without paying another dvc start-up.
    (root / ".dvc/config").write_text(
        "[core]\n    no_scm = True\n    analytics = false\n    site_cache_dir = site_cache\n",
        encoding="utf-8",
    )


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m dvc ...` in `project` with this interpreter's scripts first on PATH."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran, in order."""
    return re.findall(r"Running stage '([\w-]+)'", output)


@contextmanager
def moved_away(paths: Sequence[Path]) -> Iterator[None]:
    """The paths renamed for the duration and back afterwards: a stage run meanwhile proves it
    reads none of them."""
    for path in paths:
        path.rename(path.with_name(f"{path.name}.away"))
    try:
        yield
    finally:
        for path in paths:
            path.with_name(f"{path.name}.away").rename(path)


@contextmanager
def own_tracking_env() -> Iterator[None]:
    """No MLflow URI or parent run exported by the shell or an earlier test, and none left for a
    later one: a project's flows log to its own store (a module-scoped fixture cannot use the
    function-scoped monkeypatch)."""
    from tasks.lib.core.tracking import PARENT_RUN_ENV

    names = ("MLFLOW_TRACKING_URI", PARENT_RUN_ENV)
    with pytest.MonkeyPatch.context() as env:
        for name in names:
            env.delenv(name, raising=False)
        try:
            yield
        finally:  # what a flow exported meanwhile (mlflow.set_tracking_uri) must not outlive it
            for name in names:
                os.environ.pop(name, None)
