"""Ingest: the packaged default data, a user's own KB folder, and the group split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks import dedup, ingest, validate
from tasks.lib.core.config import SplitParams, load_params
from tasks.lib.core.records import Doc, QARecord, read_docs, read_qa_splits
from tasks.lib.kb import sources
from tasks.lib.kb.folder import NAMES_SHOWN, Skip, SkippedPath, skip_summary
from tests.support.projects import make_project, project_mlflow_client, write_jsonl


def test_packaged_default_builds_kb_and_leak_free_splits(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, source="packaged")
    ingest.main(params_file)

    docs = read_docs(tmp_path / "data/kb/docs.jsonl")
    splits = read_qa_splits(tmp_path / "data/qa")
    assert len(docs) == 10_033
    doc_ids = {d.id for d in docs}
    records = [r for split in splits.values() for r in split]
    assert len(records) == len({r.id for r in records}) == 546
    assert all(set(r.doc_ids) <= doc_ids for r in records)
    groups = {name: {r.group for r in split} for name, split in splits.items()}
    assert not groups["train"] & groups["test"]
    assert not groups["train"] & groups["dev"]
    assert not groups["dev"] & groups["test"]
    answerable = [r for r in records if r.answerable]
    assert 60 < len(answerable) < 120
    by_id = {d.id: d for d in docs}
    sample = answerable[0]
    assert sample.answers[0].lower() in by_id[sample.doc_ids[0]].text.lower()


def test_ingest_is_deterministic(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, source="packaged")
    ingest.main(params_file)
    first = (tmp_path / "data/qa/test.jsonl").read_bytes()
    ingest.main(params_file)
    assert (tmp_path / "data/qa/test.jsonl").read_bytes() == first


def test_shared_subquestion_merges_its_top_level_groups() -> None:
    capital = {
        "id": "s1",
        "question": "Capital of China?",
        "answer": "Beijing",
        "evidence": {"title": "China"},
    }
    questions = [
        {
            "id": "t2",
            "decomposition": [
                capital,
                {"id": "s2", "question": "Q?", "answer": 3, "evidence": {"title": "India"}},
            ],
        },
        {"id": "t1", "decomposition": [dict(capital)]},
        {
            "id": "t3",
            "decomposition": [
                {
                    "id": "s3",
                    "question": "Is it?",
                    "answer": True,
                    "evidence": {"title": "Not in KB"},
                }
            ],
        },
    ]
    records = sources.qa_from_fanout(questions, {"China", "India"})
    assert [(r.id, r.group) for r in records] == [("s1", "t1"), ("s2", "t1")]
    assert records[1].answers == ["3"]


def test_answer_strings_cover_fanout_types() -> None:
    assert sources.answer_strings(True) == ["yes"]
    assert sources.answer_strings(680000.0) == ["680000"]
    assert sources.answer_strings(2.5) == ["2.5"]
    assert sources.answer_strings(["a", "b"]) == ["a, b"]
    assert sources.answer_strings({"x": 1}) == ["x: 1"]


def test_split_by_group_keeps_groups_whole_and_follows_fractions() -> None:
    records = [
        QARecord(id=f"q{i}", question="?", answers=["a"], doc_ids=["d"], group=f"g{i // 2}")
        for i in range(40)
    ]
    splits = ingest.split_by_group(records, SplitParams(train=0.6, dev=0.2, seed=0))
    assert [len({r.group for r in splits[s]}) for s in ("train", "dev", "test")] == [12, 4, 4]
    seen = [r.group for split in splits.values() for r in split]
    assert sorted(seen) == sorted(r.group for r in records)


def test_user_folder_kb_reads_markdown_text_and_jsonl(tmp_path: Path) -> None:
    params_file = make_project(tmp_path)
    ingest.main(params_file)

    docs = {d.id: d for d in read_docs(tmp_path / "data/kb/docs.jsonl")}
    assert docs["guides/install"].title == "Installing the widget"
    assert docs["guides/install"].text.startswith("Run the installer")
    assert docs["faq"].title == "faq"
    assert docs["j1"].source == "jsonl source"
    records = [r for split in read_qa_splits(tmp_path / "data/qa").values() for r in split]
    assert {r.id: r.answerable for r in records}["q0"] is True


def test_extra_doc_fields_survive_the_round_trip(tmp_path: Path) -> None:
    doc = Doc(id="x", title="X", text="t", source="s", topic="Arts")
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps(doc.model_dump()) + "\n", encoding="utf-8")
    assert read_docs(path)[0].model_dump()["topic"] == "Arts"


def test_updates_folder_adds_edits_and_deletes_packaged_docs(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, source="packaged", ingest__updates_folder="feed")
    (tmp_path / "feed/solar_sail.md").write_text(
        "# Solar sail\n\nA solar sail propels a spacecraft with the pressure of sunlight.\n",
        encoding="utf-8",
    )
    ingest.main(params_file)
    docs = {d.id: d for d in read_docs(tmp_path / "data/kb/docs.jsonl")}
    assert len(docs) == 10_034
    assert docs["solar_sail"].title == "Solar sail"

    # The packaged KB cannot be edited where it is installed: a doc of the same id replaces it,
    # and the deletions file removes one, with it the questions that cite only that doc.
    cited = [r for split in read_qa_splits(tmp_path / "data/qa").values() for r in split]
    gone = cited[0].doc_ids[0]
    edit = {"id": "Krakatoa", "title": "Krakatoa", "text": "A second Krakatoa.", "source": "x"}
    (tmp_path / "feed/more.jsonl").write_text(json.dumps(edit) + "\n", encoding="utf-8")
    (tmp_path / "feed/deleted.txt").write_text(f"{gone}\n", encoding="utf-8")
    ingest.main(params_file)
    docs = {d.id: d for d in read_docs(tmp_path / "data/kb/docs.jsonl")}
    assert len(docs) == 10_034 - 1 and gone not in docs
    assert docs["Krakatoa"].text == "A second Krakatoa." and docs["Krakatoa"].source == "x"
    records = [r for split in read_qa_splits(tmp_path / "data/qa").values() for r in split]
    assert all(gone not in r.doc_ids for r in records)
    assert len(records) == len(cited) - sum(r.doc_ids == [gone] for r in cited)


@pytest.mark.parametrize("qa_folder", ["empty", "absent"])
def test_no_qa_set_writes_empty_splits_that_validate_and_dedup_pass(
    qa_folder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = make_project(tmp_path)
    shutil.rmtree(tmp_path / "my_qa")
    if qa_folder == "empty":
        (tmp_path / "my_qa").mkdir()
    ingest.main(params_file)
    assert "the pipeline will evaluate on generated questions" in capsys.readouterr().out
    assert all(
        (tmp_path / f"data/qa/{split}.jsonl").read_text(encoding="utf-8") == ""
        for split in ("train", "dev", "test")
    )
    validate.main(params_file)
    dedup.main(params_file)
    summary = json.loads((tmp_path / "data/validate/summary.json").read_text())
    assert summary["success"] and summary["rows"]["qa"] == 0
    paths = load_params(params_file).paths
    assert len(read_docs(paths.retrieval_docs)) == 9
    assert read_qa_splits(paths.dedup_qa_dir) == {"train": [], "dev": [], "test": []}


def test_qa_folder_reads_every_file_in_sorted_order(tmp_path: Path) -> None:
    params_file = make_project(tmp_path)
    extra = {"id": "q-extra", "question": "?", "answers": ["a"], "doc_ids": ["j1"], "group": "gx"}
    write_jsonl(tmp_path / "my_qa/more/extra.jsonl", [extra])
    ingest.main(params_file)
    records = [r for split in read_qa_splits(tmp_path / "data/qa").values() for r in split]
    assert len(records) == 8 and "q-extra" in {r.id for r in records}


def test_suffixes_in_any_case_and_markdown_spellings_are_read(tmp_path: Path) -> None:
    params_file = make_project(tmp_path)
    kb = tmp_path / "my_kb"
    (kb / "Notes.MD").write_text("# Release notes\n\nVersion two adds a sensor.\n", "utf-8")
    (kb / "Setup.Md").write_text("# Setting up\n\nPlug the widget in first.\n", "utf-8")
    (kb / "guides/calibrate.markdown").write_text("# Calibration\n\nTurn the dial.\n", "utf-8")
    (kb / "LICENSE.TXT").write_text("Free to use for any purpose.\n", "utf-8")
    row = {"id": "loud", "title": "Loud", "text": "From a .JSONL file.", "source": "s"}
    (kb / "MORE.JSONL").write_text(json.dumps(row) + "\n", encoding="utf-8")
    ingest.main(params_file)
    docs = {d.id: d for d in read_docs(tmp_path / "data/kb/docs.jsonl")}
    assert {i: docs[i].title for i in ("Notes", "Setup", "guides/calibrate", "LICENSE")} == {
        "Notes": "Release notes",
        "Setup": "Setting up",
        "guides/calibrate": "Calibration",
        "LICENSE": "LICENSE",
    }
    assert docs["guides/calibrate"].text == "Turn the dial."
    assert docs["loud"].text == "From a .JSONL file."
    assert len(docs) == 9 + 5
    assert load_params(params_file).paths.ingest_skipped.read_text(encoding="utf-8") == ""


def test_a_byte_order_mark_is_not_text(tmp_path: Path) -> None:
    """Windows editors start UTF-8 files with U+FEFF: it must not hide the heading, nor break
    the JSON of the first line of a KB or QA file."""
    params_file = make_project(tmp_path)
    bom = "\ufeff"
    kb, qa = tmp_path / "my_kb", tmp_path / "my_qa/qa.jsonl"
    (kb / "bom.md").write_text(f"{bom}# Saved on Windows\n\nNotepad adds a mark.\n", "utf-8")
    (kb / "plain_bom.txt").write_text(f"{bom}No heading here.\n", "utf-8")
    (kb / "docs.jsonl").write_text(bom + (kb / "docs.jsonl").read_text("utf-8"), "utf-8")
    qa.write_text(bom + qa.read_text("utf-8"), "utf-8")
    ingest.main(params_file)
    docs = {d.id: d for d in read_docs(tmp_path / "data/kb/docs.jsonl")}
    assert (docs["bom"].title, docs["bom"].text) == ("Saved on Windows", "Notepad adds a mark.")
    assert docs["plain_bom"].text == "No heading here."
    assert docs["j1"].title == "J one"
    assert not any(bom in d.id + d.title + d.text for d in docs.values())
    records = [r for split in read_qa_splits(tmp_path / "data/qa").values() for r in split]
    assert "q0" in {r.id for r in records}


def test_a_kb_folder_that_is_itself_a_link_is_read(tmp_path: Path) -> None:
    params_file = make_project(tmp_path)
    (tmp_path / "my_kb").rename(tmp_path / "real_kb")
    (tmp_path / "my_kb").symlink_to(tmp_path / "real_kb", target_is_directory=True)
    ingest.main(params_file)
    assert len(read_docs(tmp_path / "data/kb/docs.jsonl")) == 9


def test_skip_summary_names_the_first_few_and_counts_the_rest() -> None:
    hidden = [SkippedPath(f".copy{i}", Skip.IGNORED, ".*") for i in range(NAMES_SHOWN + 2)]
    (line,) = skip_summary(hidden, "convert them")
    assert line == (
        f"skipped {NAMES_SHOWN + 2} hidden or ignored paths (ingest.ignore): "
        + ", ".join(f".copy{i}" for i in range(NAMES_SHOWN))
        + " and 2 more"
    )


def test_skipped_paths_are_logged_to_mlflow(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, tracked=True)
    kb = tmp_path / "my_kb"
    (kb / "manual.pdf").write_bytes(b"%PDF-1.4")
    (kb / ".notes.md").write_text("# Hidden\nA hidden doc.\n", "utf-8")
    (kb / "outside.md").symlink_to(tmp_path / "params.yaml")
    ingest.main(params_file)
    client = project_mlflow_client(params_file)
    experiment = client.get_experiment_by_name(load_params(params_file).tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'ingest'")
    metrics = run.data.metrics
    assert {k: v for k, v in metrics.items() if k.startswith("skipped_")} == {
        "skipped_outside": 1,
        "skipped_unsupported": 1,
        "skipped_unsupported_pdf": 1,
        "skipped_ignored": 1,
        "skipped_duplicate": 0,
        "skipped_loop": 0,
        "skipped_broken": 0,
    }
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"skipped.jsonl", "metrics.json"}  # metrics.json: every logged metric


def test_updates_folder_skips_like_the_kb_folder(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, ingest__updates_folder="feed")
    feed = tmp_path / "feed"
    (feed / ".ipynb_checkpoints").mkdir()
    (feed / ".ipynb_checkpoints/faq-checkpoint.md").write_text("# FAQ\nOld copy.\n", "utf-8")
    (feed / "Brochure.PDF").write_bytes(b"%PDF-1.4")
    (feed / "faq.TXT").write_text("The widget is waterproof down to twenty metres.\n", "utf-8")
    (feed / "deleted.txt").write_text("# nothing deleted yet\n", encoding="utf-8")
    ingest.main(params_file)
    docs = {d.id: d for d in read_docs(tmp_path / "data/kb/docs.jsonl")}
    assert len(docs) == 9 and "twenty metres" in docs["faq"].text  # the edit replaced the doc
    skipped = load_params(params_file).paths.ingest_skipped.read_text(encoding="utf-8")
    assert [json.loads(line) for line in skipped.splitlines()] == [
        {
            "folder": "updates_folder",
            "path": ".ipynb_checkpoints",
            "reason": "ignored",
            "detail": ".*",
        },
        {
            "folder": "updates_folder",
            "path": "Brochure.PDF",
            "reason": "unsupported",
            "detail": ".pdf",
        },
    ]


def test_unicode_line_breaks_in_text_pass_ingest_validate_and_dedup(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are line breaks to str.splitlines, text inside JSON."""
    params_file = make_project(tmp_path)
    prose = "The beacon turns once a minute and is seen twenty miles out at sea on clear nights."
    text = f"{prose}\u2028Second line.\u2029Next paragraph.\u0085End of the text, after all."
    (tmp_path / "my_kb/beacon.md").write_text(f"# Beacon\u2028light\n\n{text}\n", "utf-8")
    row = {"id": "j2", "title": "J two", "text": f"Raw in JSONL:\u2028{prose}", "source": "s"}
    write_jsonl(tmp_path / "my_kb/more.jsonl", [row])
    ingest.main(params_file)
    validate.main(params_file)
    dedup.main(params_file)
    paths = load_params(params_file).paths
    for path in (paths.kb_docs, paths.retrieval_docs):
        docs = {d.id: d for d in read_docs(path)}
        assert docs["beacon"].title == "Beacon\u2028light" and docs["beacon"].text == text
        assert docs["j2"].text == row["text"]
