"""The real `dvc repro` on a tiny project: reruns only what changed, stops on a failed suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.projects import dvc, init_dvc_project, make_project, ran_stages

FOUNDATION = ("ingest", "validate", "dedup")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project with the repo's stages, code and dvc.yaml, and a tiny KB."""
    root = tmp_path_factory.mktemp("dvc_project")
    make_project(root)
    init_dvc_project(root, FOUNDATION)
    return root


def test_repro_runs_then_skips_then_reruns_only_dedup(project: Path) -> None:
    first = dvc(project, "repro")
    assert ran_stages(first.stdout) == list(FOUNDATION)
    assert json.loads((project / "data/dedup/metrics.json").read_text())["docs_out"] == 9

    again = dvc(project, "repro")
    assert ran_stages(again.stdout) == []

    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["dedup"]["threshold"] = 0.7
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    changed = dvc(project, "repro")
    assert ran_stages(changed.stdout) == ["dedup"]


def test_failed_suite_stops_repro_and_keeps_downstream_outputs(project: Path) -> None:
    dvc(project, "repro")
    dedup_docs = (project / "data/dedup/docs.jsonl").read_bytes()
    kb = project / "my_kb/docs.jsonl"
    good = kb.read_text(encoding="utf-8")
    row = {"id": "blank", "title": "Blank", "text": "   ", "source": "s"}
    kb.write_text(good + json.dumps(row) + "\n", encoding="utf-8")
    try:
        failed = dvc(project, "repro", check=False)
    finally:
        kb.write_text(good, encoding="utf-8")

    assert failed.returncode != 0
    message = failed.stdout + failed.stderr
    assert "suite 'docs'" in message and "'blank'" in message
    assert "Running stage 'dedup'" not in message
    assert (project / "data/dedup/docs.jsonl").read_bytes() == dedup_docs
    summary = json.loads((project / "data/validate/summary.json").read_text())
    assert summary["success"] is False
