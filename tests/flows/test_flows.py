"""The real retrain, refresh and watch flows, through DVC, under Prefect's test harness, on a
tiny KB.

The project holds the repo's foundation stages plus two stages that exist only here: `probe`
shows that a stage added to dvc.yaml joins the flow with no code change, and that a stage run
by `dvc repro` nests its MLflow run under the flow's parent run; `refresh_register` stands in
for the refresh gate (it leaves the "nothing to refresh" marker), so the refresh flow runs
exactly the stages it needs and not `probe`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.retrain import pipeline_stages
from flows.watch import choose_flow, watch
from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import ensure_experiment
from tasks.lib.kb.source_state import STATE_FILE, SourceFingerprint, source_fingerprint
from tasks.lib.serving.registry import promote, register_folder, registry_client
from tests.support.projects import REPO, make_project, project_mlflow_client, write_jsonl

FOUNDATION = ("ingest", "validate", "dedup")
REFRESH_GATE = "refresh_register"
PROBE = '''"""A stage that exists only in this test project: it logs dedup's metrics."""
import json
from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.tracking import stage_run

with stage_run("probe", load_params(Path("params.yaml"))) as run:
    run.log_metrics(json.loads(Path("data/dedup/metrics.json").read_text()))
    Path("data/probe.json").write_text(json.dumps({"run_id": run.run_id}))
'''
REFRESH_PROBE = '''"""Stands in for the refresh gate: after dedup, it says why it did nothing."""
import json
from pathlib import Path

Path("data/refresh").mkdir(exist_ok=True)
Path("data/refresh/decision.json").write_text(json.dumps({"nothing_to_refresh": "a probe"}))
'''


@pytest.fixture(scope="module", autouse=True)
def _prefect(prefect_api: None) -> None:
    """Every flow here runs on the session's temporary Prefect API."""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project: tiny KB, the repo's code and foundation stages, plus `probe`."""
    root = tmp_path_factory.mktemp("flow_project")
    params_file = make_project(root, tracked=True)
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["retrain"]["retry_delay_seconds"] = 0
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    shutil.copytree(REPO / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "probe.py").write_text(PROBE, encoding="utf-8")
    (root / "refresh_probe.py").write_text(REFRESH_PROBE, encoding="utf-8")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    kept = {name: stage for name, stage in stages.items() if name in FOUNDATION}
    kept["probe"] = {
        "cmd": "python probe.py",
        "deps": ["probe.py", "data/dedup/metrics.json"],
        "outs": [{"data/probe.json": {"cache": False}}],
    }
    kept[REFRESH_GATE] = {
        "cmd": "python refresh_probe.py",
        "deps": ["refresh_probe.py", "data/dedup/metrics.json"],
        "outs": [{"data/refresh/decision.json": {"cache": False}}],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": kept}, sort_keys=False), "utf-8")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    # What `dvc config` would write, without paying another dvc start-up.
    (root / ".dvc/config").write_text(
        "[core]\n    no_scm = True\n    analytics = false\n    site_cache_dir = site_cache\n",
        encoding="utf-8",
    )
    return params_file


def parent_runs(params_file: Path) -> list:
    client = project_mlflow_client(params_file)
    experiment = client.get_experiment_by_name(load_params(params_file).tracking.experiment)
    return client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")


def test_stage_order_comes_from_dvc(project: Path) -> None:
    assert pipeline_stages(project.parent) == [*FOUNDATION, "probe", REFRESH_GATE]
    assert pipeline_stages(project.parent, REFRESH_GATE) == [*FOUNDATION, REFRESH_GATE]
    with pytest.raises(ValueError, match="no stage 'nope'"):
        pipeline_stages(project.parent, "nope")


def test_watch_retrains_a_new_kb_end_to_end_then_rests(project: Path) -> None:
    root = project.parent
    result = watch(str(project))
    assert result["changed"]
    assert result["flow"] == "retrain"  # no champion yet: nothing to refresh
    retrain = result["result"]
    assert retrain["ran"] == [*FOUNDATION, "probe", REFRESH_GATE]
    assert json.loads((root / "data/dedup/metrics.json").read_text())["docs_out"] == 9

    # MLflow and Prefect point at each other; the probe stage nested under the parent run.
    client = project_mlflow_client(project)
    parent = client.get_run(retrain["mlflow_run_id"])
    assert parent.data.tags["prefect.flow_run_id"] == retrain["flow_run_id"]
    assert parent.data.tags["stages_ran"] == f"ingest,validate,dedup,probe,{REFRESH_GATE}"
    probe_run = client.get_run(json.loads((root / "data/probe.json").read_text())["run_id"])
    assert probe_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert probe_run.data.metrics["docs_out"] == 9.0
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(retrain["flow_run_id"]))
    assert f"mlflow-run:{parent.info.run_id}" in flow_run.tags
    state = json.loads((root / STATE_FILE).read_text())
    assert state["fingerprint"] == asdict(source_fingerprint(load_params(project).ingest))

    # Same KB: no retrain flow, no MLflow run, nothing touched.
    lock = (root / "dvc.lock").read_bytes()
    again = watch(str(project))
    assert again == {
        "changed": False,
        "fingerprint": state["fingerprint"],
        "flow": None,
        "result": None,
    }
    assert len(parent_runs(project)) == 1
    assert (root / "dvc.lock").read_bytes() == lock


def test_new_bad_doc_triggers_retrain_that_stops_at_validate(project: Path) -> None:
    root = project.parent
    dedup_docs = (root / "data/dedup/docs.jsonl").read_bytes()
    probe = (root / "data/probe.json").read_bytes()
    recorded = (root / STATE_FILE).read_bytes()
    new_doc = root / "my_kb/blank.md"
    new_doc.write_text("# Blank\n\n \n", encoding="utf-8")  # a doc with no text fails validate
    try:
        state = watch(str(project), return_state=True)
        assert state.is_failed()
        assert "stage 'validate' failed" in str(state.result(raise_on_failure=False))
        # Nothing downstream ran or changed; the fingerprint of the bad KB was not recorded.
        assert (root / "data/dedup/docs.jsonl").read_bytes() == dedup_docs
        assert (root / "data/probe.json").read_bytes() == probe
        assert (root / STATE_FILE).read_bytes() == recorded
        failed = next(r for r in parent_runs(project) if r.info.status == "FAILED")
        flow_run_id = UUID(failed.data.tags["prefect.flow_run_id"])
        with get_client(sync_client=True) as prefect:
            task_runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        by_name = {t.name: t for t in task_runs}
        assert set(by_name) == {"ingest", "validate"}
        assert by_name["validate"].state.is_failed()
        assert by_name["validate"].run_count == 1  # bad input is not retried (retries: 1)
    finally:
        new_doc.unlink()
    # The KB is back to what the last success consumed: the watcher rests.
    assert not watch(str(project))["changed"]


def test_with_a_champion_a_kb_change_starts_the_refresh_path_only(project: Path) -> None:
    root = project.parent
    params = load_params(project)
    client = registry_client(params)
    run_id = client.create_run(ensure_experiment(params)).info.run_id
    judged = params.register_.judged
    promote(client, judged, register_folder(client, judged, root / "my_kb", run_id), by="test")
    probe = (root / "data/probe.json").read_bytes()
    (root / "my_kb/comet.md").write_text("# Comet\n\nA comet has a bright tail.\n", "utf-8")

    result = watch(str(project))
    assert result["changed"] and result["flow"] == "refresh"
    refresh = result["result"]
    assert refresh["stages"] == refresh["ran"] == [*FOUNDATION, REFRESH_GATE]
    assert refresh["gate"] == {"nothing_to_refresh": "a probe"}
    assert (root / "data/probe.json").read_bytes() == probe  # not upstream of the gate
    assert json.loads((root / "data/dedup/metrics.json").read_text())["docs_out"] == 10
    parent = project_mlflow_client(project).get_run(refresh["mlflow_run_id"])
    assert parent.data.tags["gate.decision"] == "skipped"
    assert parent.data.tags["stages_ran"] == f"ingest,validate,dedup,{REFRESH_GATE}"
    # The refresh consumed this KB: the watcher rests.
    assert watch(str(project))["changed"] is False


def test_new_questions_retrain_even_with_a_champion(project: Path) -> None:
    """Runs after the refresh test: a champion exists and the watcher rests."""
    root = project.parent
    before = source_fingerprint(load_params(project).ingest)
    question = {
        "id": "q-comet",
        "question": "What does a comet have?",
        "answers": ["a bright tail"],
        "doc_ids": ["comet"],
        "group": "g-comet",
    }
    write_jsonl(root / "my_qa/more.jsonl", [question])
    after = source_fingerprint(load_params(project).ingest)
    assert after.docs == before.docs and after.qa != before.qa

    result = watch(str(project))
    assert result["changed"] and result["flow"] == "retrain"
    retrain = result["result"]
    assert retrain["stages"] == [*FOUNDATION, "probe", REFRESH_GATE]
    assert retrain["ran"] == [*FOUNDATION, "probe"]  # the refresh had left probe behind
    records = [
        json.loads(line)["id"]
        for split in ("train", "dev", "test")
        for line in (root / f"data/dedup/qa/{split}.jsonl").read_text().splitlines()
    ]
    assert "q-comet" in records
    assert watch(str(project))["changed"] is False


def test_choose_flow_by_the_part_that_changed() -> None:
    last = SourceFingerprint(docs="d1", qa="q1")
    docs_changed, qa_changed = SourceFingerprint("d2", "q1"), SourceFingerprint("d1", "q2")
    assert choose_flow(last, last, champion=True)[0] is None
    assert choose_flow(docs_changed, last, champion=True)[0] == "refresh"
    assert choose_flow(qa_changed, last, champion=True)[0] == "retrain"
    assert choose_flow(SourceFingerprint("d2", "q2"), last, champion=True)[0] == "retrain"
    assert choose_flow(docs_changed, last, champion=False)[0] == "retrain"
    assert choose_flow(docs_changed, None, champion=True)[0] == "retrain"
