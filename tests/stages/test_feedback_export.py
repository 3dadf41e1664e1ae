"""Stage `feedback_export`, and kb_questions taking its records into the train split only.

Real sqlite feedback on real recorded answers: the export's bytes depend on the feedback alone,
a question an evaluated split holds never reaches train, and without feedback kb_questions'
outputs are the bytes they were without the feature.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks import feedback_export, kb_questions
from tasks.lib.core.config import load_params
from tasks.lib.core.io import read_jsonl
from tasks.lib.core.records import QARecord, read_qa
from tasks.lib.serving.feedback import FeedbackStore
from tests.stages.test_kb_questions import described_docs, make_kb_project
from tests.support.projects import dvc, init_dvc_project, ran_stages
from tests.support.retrieval import tiny_docs, tiny_qa


@pytest.fixture
def params_file(tmp_path: Path, tiny_encoders: tuple[Path, Path], tiny_generator_dir: Path) -> Path:
    """The kb_questions test project, with a feedback database and an export folder of its own."""
    path = make_kb_project(
        tmp_path, tiny_encoders[0], tiny_generator_dir, described_docs(), tiny_qa()
    )
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params["paths"] |= {"feedback_export_dir": "fbx", "feedback_export": "fbx/train.jsonl"}
    params["feedback"]["database"] = "sqlite:///feedback/feedback.db"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def give_feedback(params_file: Path) -> None:
    """Feedback of every kind; the comments say what the export and kb_questions make of it."""
    params = load_params(params_file)
    known = {d.id for d in tiny_docs()} | {"retired"}  # `retired` left the KB since
    store = FeedbackStore.open(params.feedback, params.project_dir)

    def served(question: str, answer: str, sources: list[str]) -> str:
        return store.record_answer(question, answer, sources, "rag", "1")

    dev = served("which planet has  BRIGHT rings?", "Saturn", ["saturn"])  # dev, respelled
    test = served("What art folds paper into animals?", "Kirigami", ["origami"])  # a test one
    train = served("What slow river of ice forms from snow?", "A glacier", ["glacier"])  # train
    new = served("What is brewed from cured leaves?", "Coffee", ["cheese"])
    other = served("What points north?", "A river", ["desert"])
    store.add_feedback(dev, True, None, None, known)  # 1: exported, dropped by kb_questions
    store.add_feedback(test, False, "Origami", "origami", known)  # 2: the same
    store.add_feedback(train, True, None, None, known)  # 3: the same (already in train)
    store.add_feedback(new, True, None, None, known)  # 4: superseded by 5
    store.add_feedback(new, False, "Tea", "tea", known)  # 5: the one train gains
    store.add_feedback(other, False, None, None, known)  # 6: bad, nothing to learn
    store.add_feedback(other, False, "A compass", "retired", known)  # 7: its doc is gone
    store.close()


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


def test_the_export_is_the_accepted_feedback_as_qa_records_and_its_bytes_are_stable(
    params_file: Path,
) -> None:
    give_feedback(params_file)
    paths = load_params(params_file).paths
    feedback_export.main(params_file)
    first = outputs(paths.feedback_export_dir)
    feedback_export.main(params_file)
    assert outputs(paths.feedback_export_dir) == first  # same feedback, same bytes

    records = read_qa(paths.feedback_export)
    assert [(r.id, r.answers, r.doc_ids) for r in records] == [
        ("feedback-1", ["Saturn"], ["saturn"]),
        ("feedback-2", ["Origami"], ["origami"]),
        ("feedback-3", ["A glacier"], ["glacier"]),
        ("feedback-5", ["Tea"], ["tea"]),
    ]
    metrics = json.loads((paths.feedback_export_dir / "metrics.json").read_text("utf-8"))
    assert metrics == {
        "feedback": 7,
        "exported": 4,
        "corrections": 3,
        "good_answers": 3,
        "bad_without_correction": 1,
        "not_exported": {
            "correction_without_doc": 0,
            "good_without_source": 0,
            "doc_not_in_kb": 1,
            "blank_question": 0,
            "superseded": 1,
        },
        "max_feedback_id": 7,
    }


def test_feedback_joins_train_only_and_never_a_question_dev_or_test_holds(
    params_file: Path,
) -> None:
    paths = load_params(params_file).paths
    kb_questions.main(params_file)  # no export file: feedback was never given
    without = outputs(paths.kb_questions_dir)
    assert "feedback_records" not in json.loads(without["metrics.json"])

    feedback_export.main(params_file)  # an empty database: nothing exported
    assert paths.feedback_export.read_text(encoding="utf-8") == ""
    kb_questions.main(params_file)
    assert outputs(paths.kb_questions_dir) == without  # byte for byte

    give_feedback(params_file)
    feedback_export.main(params_file)
    kb_questions.main(params_file)
    qa = paths.retrieval_qa_dir
    dedup_train = (paths.dedup_qa_dir / "train.jsonl").read_bytes()
    train = (qa / "train.jsonl").read_bytes()
    assert train.startswith(dedup_train)  # the real records first, as they were
    added = read_jsonl(qa / "train.jsonl", QARecord)[len(tiny_qa()["train"]) :]
    assert [(r.question, r.answers, r.doc_ids) for r in added] == [
        ("What is brewed from cured leaves?", ["Tea"], ["tea"])
    ]
    for split in ("dev", "test"):
        assert (qa / f"{split}.jsonl").read_bytes() == (
            paths.dedup_qa_dir / f"{split}.jsonl"
        ).read_bytes()
    sources = json.loads((qa / "source.json").read_text(encoding="utf-8"))
    assert sources["train"] == {"kind": "real", "size": 3}
    metrics = json.loads((paths.kb_questions_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["feedback_records"] == 1
    for name in ("train", "dev", "heldout"):  # the KB's own sets are untouched
        assert (paths.kb_questions_dir / f"{name}.jsonl").read_bytes() == without[f"{name}.jsonl"]


def test_without_real_qa_feedback_is_the_train_split_and_kb_eval_questions_stay_out(
    tmp_path: Path, tiny_encoders: tuple[Path, Path], tiny_generator_dir: Path
) -> None:
    """No QA set: dev and test are the KB's description questions, which feedback may not ask."""
    params_file = make_kb_project(
        tmp_path, tiny_encoders[0], tiny_generator_dir, described_docs(), {}
    )
    params = load_params(params_file)
    kb_questions.main(params_file)
    dev = read_qa(params.paths.retrieval_qa_dir / "dev.jsonl")
    store = FeedbackStore.open(params.feedback, params.project_dir)
    asked = store.record_answer(dev[0].question.upper(), "x", dev[0].doc_ids, "rag", "1")
    fresh = store.record_answer("What is brewed from cured leaves?", "Tea", ["tea"], "rag", "1")
    store.add_feedback(asked, True, None, None, set())
    store.add_feedback(fresh, True, None, None, set())
    store.close()
    feedback_export.main(params_file)
    kb_questions.main(params_file)
    train = read_qa(params.paths.retrieval_qa_dir / "train.jsonl")
    assert [(r.question, r.doc_ids) for r in train] == [
        ("What is brewed from cured leaves?", ["tea"])
    ]


def test_dvc_reruns_kb_questions_only_when_the_feedback_changed(params_file: Path) -> None:
    """feedback_export runs on every repro; what follows it, only when its bytes moved."""
    root = params_file.parent
    init_dvc_project(root, ["feedback_export", "kb_questions"])
    assert ran_stages(dvc(root, "repro").stdout) == ["feedback_export", "kb_questions"]
    assert ran_stages(dvc(root, "repro").stdout) == ["feedback_export"]
    give_feedback(params_file)
    assert ran_stages(dvc(root, "repro").stdout) == ["feedback_export", "kb_questions"]
    train = read_qa(load_params(params_file).paths.retrieval_qa_dir / "train.jsonl")
    assert train[-1].question == "What is brewed from cured leaves?"
    assert ran_stages(dvc(root, "repro").stdout) == ["feedback_export"]
