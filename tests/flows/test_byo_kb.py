"""A user's own KB, end to end: docs with no description and no QA file run every stage.

The KB is the retrieval fixtures' 24 docs, title and text only; the QA folder is empty. The
encoder is a tiny random BERT; the generator is the packaged SmolLM2-135M (a random one writes
no usable question, and the generated questions are the whole point here), every other knob
shrunk. The retrain flow runs each stage through `dvc repro`: kb_questions generates the
(question, answer, passage) triples, its held-out ones become the test split every evaluation
and the gate use, and the retriever trains on synthetic questions alone. Then a QA file is
added: the watcher retrains, and the real questions take over the test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.retrain import retrain
from flows.watch import watch
from tasks.lib.core.answers import answer_in_text
from tasks.lib.core.config import load_params
from tasks.lib.core.records import read_docs, read_qa, read_qa_splits
from tests.support.pipeline import make_pipeline_project
from tests.support.projects import REPO, project_mlflow_client
from tests.support.retrieval import tiny_docs, tiny_qa

REASONS = {
    "not_a_question",
    "duplicate",
    "evaluation_question",
    "source_not_in_top_10",
    "answer_not_in_passage",
    "answer_too_long",
    "answer_is_title",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("byo_kb")
    docs = [doc.model_dump(exclude_none=True) for doc in tiny_docs()]
    assert not any("description" in doc for doc in docs)
    (root / "my_kb").mkdir()
    (root / "my_kb/docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), "utf-8")
    (root / "my_qa").mkdir()  # no questions at all
    return make_pipeline_project(
        root,
        "packaged",
        kb_questions__source="auto",
        kb_questions__generated_docs=24,
        kb_questions__n_train=8,
        kb_questions__n_dev=3,
        kb_questions__n_heldout=5,
        synthesize_queries__max_new_tokens=32,  # room for a whole question
        synthesize_queries__n_docs=24,
        generator__max_new_tokens=16,
        finetune_generator__lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
    )


@pytest.fixture(scope="module")
def first_run(project: Path, flow_harness: None) -> dict[str, Any]:
    return retrain(str(project))


def test_a_kb_without_descriptions_or_questions_runs_every_stage(
    project: Path, first_run: dict[str, Any]
) -> None:
    root, paths = project.parent, load_params(project).paths
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    assert first_run["ran"] == stages

    # kb_questions generated the triples and wrote the QA splits from them.
    metrics = json.loads((paths.kb_questions_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["source"] == "generated" and metrics["docs_sampled"] == 24
    rejected = [json.loads(line) for line in (paths.kb_questions_dir / "rejected.jsonl").open()]
    assert metrics["kept"] + len(rejected) == 24
    assert {row["reason"] for row in rejected} <= REASONS
    sources = json.loads((paths.retrieval_qa_dir / "source.json").read_text(encoding="utf-8"))
    assert sources["train"] == {"kind": "real", "size": 0}
    assert sources["dev"]["kind"] == sources["test"]["kind"] == "generated"
    splits = read_qa_splits(paths.retrieval_qa_dir)
    kb_train = read_qa(paths.kb_questions_dir / "train.jsonl", allow_empty=True)
    assert splits["test"] and splits["dev"] and kb_train
    text = {doc.id: doc.text for doc in read_docs(paths.retrieval_docs)}
    for record in splits["test"] + splits["dev"] + kb_train:
        (answer,) = record.answers
        assert answer_in_text(answer, text[record.doc_ids[0]])  # a span of its own passage

    # No held-out (test) or dev doc was trained on, by either model.
    evaluation_docs = {d for s in ("dev", "test") for r in splits[s] for d in r.doc_ids}
    positives = json.loads(paths.retriever_positives.read_text(encoding="utf-8"))
    assert not evaluation_docs & set(positives)
    assert not evaluation_docs & {d for r in kb_train for d in r.doc_ids}
    trained = json.loads((paths.retriever_dir / "train_metrics.json").read_text(encoding="utf-8"))
    assert trained["pairs"]["real"] == 0 and trained["pairs"]["synthetic"] > 0

    # The evaluations and the gate judged on the generated held-out questions, and say so.
    n_test = len(splits["test"])
    label = f"test: generated held-out questions ({n_test})"
    assert label in (paths.evaluate_dir / "report.md").read_text(encoding="utf-8")
    assert label in (paths.retriever_comparison_dir / "report.md").read_text(encoding="utf-8")
    decision = json.loads(load_params(project).register_.decision_file.read_text("utf-8"))
    assert decision["questions"] == {"test": n_test}
    client = project_mlflow_client(project)
    assert client.get_model_version("ragloop-rag", "1").tags["gate.decision"] in {"promote", "keep"}
    assert (root / "data/bundle").is_dir()


def test_a_qa_file_added_later_is_picked_up_by_the_watcher(
    project: Path, first_run: dict[str, Any]
) -> None:
    root, paths = project.parent, load_params(project).paths
    assert watch(str(project))["changed"] is False  # the retrain consumed this KB
    rows = [row for split in tiny_qa().values() for row in split]
    (root / "my_qa/qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")

    result = watch(str(project))
    assert result["changed"] and result["flow"] == "retrain"
    assert {"ingest", "kb_questions", "finetune_retriever", "evaluate", "register"} <= set(
        result["result"]["ran"]
    )
    sources = json.loads((paths.retrieval_qa_dir / "source.json").read_text(encoding="utf-8"))
    assert {split: s["kind"] for split, s in sources.items()} == dict.fromkeys(
        ("train", "dev", "test"), "real"
    )
    real_test = read_qa(paths.retrieval_qa_dir / "test.jsonl")
    assert {r.id for r in real_test} <= {row["id"] for row in rows}
    label = f"test: real questions ({len(real_test)})"
    assert label in (paths.evaluate_dir / "report.md").read_text(encoding="utf-8")
    trained = json.loads((paths.retriever_dir / "train_metrics.json").read_text(encoding="utf-8"))
    assert trained["pairs"]["real"] > 0
    assert watch(str(project))["changed"] is False
