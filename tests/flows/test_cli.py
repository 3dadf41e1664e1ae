"""The `ragloop` command as a user meets it: every verb's usage, `--version`, one `error:` line
outside the project folder, the flows' own `--help`, BM25 search without the encoder, and the
KB fingerprint a plain `dvc repro` leaves for the watcher. No Prefect API and no training: the
flows are reached only up to their checks, or through their plain functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.watch import watch
from tasks import ingest, register
from tasks.lib.core.config import load_params
from tasks.lib.kb.source_state import last_consumed_fingerprint, source_fingerprint
from tests.support.projects import REPO, make_project, moved_away, write_evaluation, write_jsonl
from tests.support.retrieval import build_tiny_index, make_retrieval_project

VERBS = {
    "run": ["--params"],
    "retrain": ["--params"],
    "refresh": ["--params"],
    "watch": ["--params"],
    "schedule": ["--cron", "--on-change", "--params"],
    "search": ["--mode", "--k", "--index", "--params"],
    "ask": ["--alias", "--bundle", "--params"],
    "status": ["--params"],
    "history": ["--model", "--params"],
    "promote": ["--version", "--model", "--params"],
    "rollback": ["--model", "--params"],
}
ARGUMENTS = {"search": ["a question"], "ask": ["a question"], "promote": ["--version", "1"]}
ARGUMENTS["schedule"] = ["--cron", "0 3 * * *"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_prints_its_usage_with_its_options(verb: str) -> None:
    shown = invoke(verb, "--help")
    assert shown.exit_code == 0, shown.output
    assert all(option in shown.output for option in VERBS[verb])


def test_version_is_the_installed_distributions() -> None:
    shown = invoke("--version")
    assert shown.exit_code == 0
    assert shown.output.strip() == f"ragloop {version('ragloop')}"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_outside_the_project_folder_every_verb_says_so_in_one_line(
    verb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    failed = invoke(verb, *ARGUMENTS.get(verb, []))
    assert failed.exit_code == 1
    assert failed.stderr.splitlines() == [
        f"error: no params.yaml in {tmp_path}; run inside the project folder or pass --params PATH"
    ]
    assert "Traceback" not in failed.output


@pytest.mark.parametrize("flow", ["retrain", "watch", "refresh"])
def test_a_flow_module_prints_usage_and_never_takes_help_for_a_params_file(
    flow: str, tmp_path: Path
) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", f"flows.{flow}", "--help"],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: python -m flows.{flow} [-h] [params_file]")
    assert not (tmp_path / ".state").exists()  # no flow ran


def test_bm25_search_loads_no_encoder_and_names_the_index_it_fell_back_to(
    tmp_path: Path, tiny_encoders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = tmp_path / "encoder"
    encoder.symlink_to(tiny_encoders[0], target_is_directory=True)
    params_file = make_retrieval_project(tmp_path, encoder)
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["tracking"]["enabled"] = False
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    build_tiny_index(encoder, tmp_path / "index")
    monkeypatch.chdir(tmp_path)
    with moved_away([encoder]):  # the manifest's encoder cannot load
        found = invoke("search", "bright rings", "--mode", "bm25", "-k", "2")
    assert found.exit_code == 0, found.output
    assert "note: tracking is off: searching the base index" in found.output
    assert "Saturn" in found.output


def test_a_plain_pipeline_run_leaves_the_watcher_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dvc repro` runs ingest first and register last: after both, the watcher sees the KB as
    consumed; after ingest alone (a run that failed later) it does not."""
    params_file = make_project(tmp_path, tracked=True)
    params = load_params(params_file)
    ingest.main(params_file)
    assert last_consumed_fingerprint(tmp_path) is None
    for name, folder in params.register_.models.items():  # what the training stages leave
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"name": name}), "utf-8")
    write_jsonl(
        params.paths.retrieval_qa_dir / "test.jsonl",
        [{"id": "q1", "question": "?", "answers": ["a"], "doc_ids": ["d"], "group": "g"}],
    )
    gate = params.register_.gate
    metrics = [*gate.primary, *gate.tracked]
    write_evaluation(
        params_file,
        {s: {m: [0.5] * 20 for m in metrics} for s in [gate.candidate, *gate.baselines]},
    )
    register.main(params_file)
    assert last_consumed_fingerprint(tmp_path) == source_fingerprint(params.ingest)
    checked = watch.fn(str(params_file))  # the flow's body: no Prefect API needed to rest
    assert checked["changed"] is False and checked["flow"] is None
    assert "KB unchanged since the last successful run" in capsys.readouterr().out
