"""Each class of bad input: a clear message naming file, line and field, exit 1, nothing lost."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tasks import dedup, ingest, validate
from tasks.lib.core.config import PROJECT_DIR, Params, load_params
from tasks.lib.core.io import run_stage
from tasks.lib.core.records import read_docs, read_qa_splits
from tests.support.projects import REPO, make_project


def outputs_snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in (root / "data").rglob("*") if p.is_file()
    }


@pytest.fixture
def ingested(tmp_path: Path) -> Path:
    """A project whose ingest, validate and dedup have run once: outputs to protect."""
    params_file = make_project(tmp_path)
    ingest.main(params_file)
    validate.main(params_file)
    dedup.main(params_file)
    return params_file


def fails_cleanly(
    params_file: Path,
    capsys: pytest.CaptureFixture[str],
    stage: Callable[[Path], None] = ingest.main,
) -> str:
    """Run a stage as its script would; return stderr, asserting exit 1 and intact outputs."""
    before = outputs_snapshot(params_file.parent)
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: stage(params_file))
    assert exit_info.value.code == 1
    assert outputs_snapshot(params_file.parent) == before
    return capsys.readouterr().err


def append_line(path: Path, line: bytes) -> None:
    path.write_bytes(path.read_bytes() + line + b"\n")


def test_malformed_json_line(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append_line(ingested.parent / "my_kb/docs.jsonl", b'{"id": "x", "title": ')
    err = fails_cleanly(ingested, capsys)
    assert "my_kb/docs.jsonl:8: malformed JSON" in err


def test_non_utf8_bytes(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append_line(ingested.parent / "my_qa/qa.jsonl", b'{"id": "bad", "question": "caf\xe9"}')
    err = fails_cleanly(ingested, capsys)
    assert "my_qa/qa.jsonl:8: not valid UTF-8 (byte 0xe9" in err


def test_missing_field(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "x", "title": "No text here", "source": "s"}
    append_line(ingested.parent / "my_kb/docs.jsonl", json.dumps(row).encode())
    err = fails_cleanly(ingested, capsys)
    assert "my_kb/docs.jsonl:8: field 'text' is missing" in err


def test_wrong_field_type(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "q9", "question": "?", "answers": "not a list", "doc_ids": [], "group": "g"}
    append_line(ingested.parent / "my_qa/qa.jsonl", json.dumps(row).encode())
    err = fails_cleanly(ingested, capsys)
    assert "my_qa/qa.jsonl:8: field 'answers'" in err


def test_duplicate_ids_within_a_file(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "widget", "title": "Again", "text": "A second widget doc.", "source": "s"}
    append_line(ingested.parent / "my_kb/docs.jsonl", json.dumps(row).encode())
    err = fails_cleanly(ingested, capsys)
    assert "my_kb/docs.jsonl:8: field 'id': duplicate id 'widget' (first at line 2)" in err


def test_duplicate_ids_across_files(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ingested.parent / "my_kb/faq.md").write_text("# FAQ\nSame id as faq.txt.\n", encoding="utf-8")
    err = fails_cleanly(ingested, capsys)
    assert "field 'id': duplicate id 'faq'" in err
    assert "faq.md" in err and "faq.txt" in err


def test_qa_id_clash_across_qa_files(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "q3", "question": "Again?", "answers": ["a"], "doc_ids": ["faq"], "group": "g9"}
    (ingested.parent / "my_qa/later.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    err = fails_cleanly(ingested, capsys)
    assert "my_qa/qa.jsonl: field 'id': duplicate id 'q3' (also in " in err
    assert "my_qa/later.jsonl)" in err


def test_empty_file(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ingested.parent / "my_qa/qa.jsonl").write_text("\n", encoding="utf-8")
    err = fails_cleanly(ingested, capsys)
    assert "my_qa/qa.jsonl: no records (the file is empty)" in err


def test_qa_citing_unknown_doc(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "q9", "question": "?", "answers": ["a"], "doc_ids": ["nope"], "group": "g"}
    append_line(ingested.parent / "my_qa/qa.jsonl", json.dumps(row).encode())
    err = fails_cleanly(ingested, capsys)
    assert "record 'q9': field 'doc_ids': not in the KB: ['nope']" in err


def edit_params(params_file: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params[section][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def test_unknown_params_key(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_params(ingested, "dedup", "treshold", 0.5)
    err = fails_cleanly(ingested, capsys, stage=dedup.main)
    assert "params.yaml: invalid params" in err
    assert "dedup.treshold: Extra inputs are not permitted" in err


def test_out_of_range_params_value(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_params(ingested, "dedup", "threshold", 1.5)
    err = fails_cleanly(ingested, capsys, stage=dedup.main)
    assert "dedup.threshold: Input should be less than or equal to 1 (got 1.5)" in err


def test_inconsistent_split_fractions(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_params(ingested, "ingest", "split", {"train": 0.7, "dev": 0.3, "seed": 0})
    err = fails_cleanly(ingested, capsys)
    assert "ingest.split: Value error, train + dev must be < 1" in err


def validate_fails(params_file: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run validate as its script would; return stderr, asserting exit 1 and a failed summary
    (validate writes its report either way: the failed run's is the one the user opens)."""
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: validate.main(params_file))
    assert exit_info.value.code == 1
    summary = load_params(params_file).paths.validate_summary
    assert json.loads(summary.read_text(encoding="utf-8"))["success"] is False
    return capsys.readouterr().err


def short_doc_project(root: Path, **overrides: object) -> Path:
    """The tiny project (9 docs) with one 5-character doc added."""
    params_file = make_project(root, **overrides)
    row = {"id": "stub", "title": "Stub", "text": "Stub.", "source": "s"}
    (root / "my_kb/stub.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    ingest.main(params_file)
    return params_file


def test_more_quarantined_docs_than_the_bound_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = short_doc_project(tmp_path)  # 1 of 10 docs > max_quarantined_share 0.05
    err = validate_fails(params_file, capsys)
    assert "quarantine: 1 of 10 docs (doc_min_chars 1), more than" in err
    assert "validate.max_quarantined_share 0.05, e.g. 'stub'" in err


def test_stop_policy_still_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = yaml.safe_load((REPO / "params.yaml").read_text())["validate"]["on_failure"]
    params_file = short_doc_project(
        tmp_path,
        validate__on_failure=policy | {"doc_min_chars": "stop"},
        validate__max_quarantined_share=0.5,
    )
    err = validate_fails(params_file, capsys)
    assert (
        "expectation expect_column_value_lengths_to_be_between (column text, min_value 20)" in err
    )
    assert "1 of 10 docs, e.g. 'stub'" in err and "quarantine:" not in err


def skipped_rows(params_file: Path) -> list[dict[str, str]]:
    path = load_params(params_file).paths.ingest_skipped
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ingest_skips(params_file: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ingest again on a project whose source gained paths it must not read: the docs and
    QA splits are byte for byte the first run's; return what it printed."""
    outputs = load_params(params_file).paths
    kept = [outputs.kb_docs, *sorted(outputs.qa_dir.iterdir())]
    before = {p: p.read_bytes() for p in kept}
    capsys.readouterr()
    run_stage(lambda: ingest.main(params_file))  # no SystemExit: skipping is not an error
    assert {p: p.read_bytes() for p in kept} == before
    return capsys.readouterr().out


def test_links_out_of_the_kb_folder_are_skipped_and_named(
    ingested: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ingested.parent
    secret = root / "secret.txt"  # outside my_kb, like /etc/passwd
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    (root / "elsewhere").mkdir()
    (root / "elsewhere/notes.md").write_text("# Notes\nNot in the KB folder.\n", "utf-8")
    (root / "my_kb/passwd.md").symlink_to(secret)
    (root / "my_kb/guides/ext").symlink_to(root / "elsewhere", target_is_directory=True)

    out = ingest_skips(ingested, capsys)

    kb = load_params(ingested).ingest.kb_folder
    assert (
        f"ingest: {kb}: skipped 2 links to a path outside the folder: "
        f"guides/ext -> {root / 'elsewhere'}, passwd.md -> {secret} "
        "(copy a file into the folder to include it)"
    ) in out
    assert (
        f"every skipped path, with why, is in {load_params(ingested).paths.ingest_skipped}" in out
    )
    assert skipped_rows(ingested) == [
        {
            "folder": "kb_folder",
            "path": "guides/ext",
            "reason": "outside",
            "detail": str(root / "elsewhere"),
        },
        {"folder": "kb_folder", "path": "passwd.md", "reason": "outside", "detail": str(secret)},
    ]


def test_links_inside_the_folder_read_each_file_once(
    ingested: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = ingested.parent / "my_kb"
    (kb / "a_link.md").symlink_to("guides/install.md")  # sorts first, yet the real name wins
    (kb / "guides_again").symlink_to("guides", target_is_directory=True)
    (kb / "guides/up").symlink_to("..", target_is_directory=True)  # a loop
    (kb / "self").symlink_to("self")  # resolves to itself
    (kb / "gone.md").symlink_to("nowhere.md")

    out = ingest_skips(ingested, capsys)

    rows = {(r["path"], r["reason"], r["detail"]) for r in skipped_rows(ingested)}
    assert rows == {
        ("a_link.md", "duplicate", "guides/install.md"),
        ("guides_again/install.md", "duplicate", "guides/install.md"),
        ("guides/up", "loop", "."),
        ("guides_again/up", "loop", "."),
        ("self", "loop", ""),
        ("gone.md", "broken", "nowhere.md"),
    }
    assert "skipped 2 links to a file already read: a_link.md (read as guides/install.md), " in out
    assert "skipped 3 links to a folder it is in (a symlink loop): guides/up, " in out
    assert "skipped 1 broken or special path (a link to nothing, a FIFO): gone.md" in out


def test_hidden_and_ignored_paths_are_not_read(
    ingested: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Jupyter checkpoint copy of a doc (and of the QA file) stays out of the KB: it would be
    a near duplicate that dedup may keep instead of the doc the questions cite."""
    root = ingested.parent
    checkpoints = root / "my_kb/guides/.ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / "install-checkpoint.md").write_text(
        "# Installing the widget\n\nRun the installer, then calibrate the sensor.\n", "utf-8"
    )
    (root / "my_kb/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "my_kb/__pycache__").mkdir()
    (root / "my_kb/__pycache__/faq.txt").write_text("A cached copy.\n", encoding="utf-8")
    (root / "my_qa/.ipynb_checkpoints").mkdir()
    shutil.copy(root / "my_qa/qa.jsonl", root / "my_qa/.ipynb_checkpoints/qa-checkpoint.jsonl")

    out = ingest_skips(ingested, capsys)

    params = load_params(ingested).ingest
    assert (
        f"ingest: {params.kb_folder}: skipped 3 hidden or ignored paths (ingest.ignore): "
        ".DS_Store, __pycache__, guides/.ipynb_checkpoints"
    ) in out
    assert f"ingest: {params.qa_folder}: skipped 1 hidden or ignored path" in out
    assert {(r["folder"], r["path"], r["detail"]) for r in skipped_rows(ingested)} == {
        ("kb_folder", ".DS_Store", ".*"),
        ("kb_folder", "__pycache__", "__pycache__"),
        ("kb_folder", "guides/.ipynb_checkpoints", ".*"),
        ("qa_folder", ".ipynb_checkpoints", ".*"),
    }


def test_an_ignore_pattern_of_the_users_own(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, ingest__ignore=[".*", "draft*"])
    (tmp_path / "my_kb/drafts").mkdir()
    (tmp_path / "my_kb/drafts/idea.md").write_text("# Idea\nNot ready yet.\n", "utf-8")
    (tmp_path / "my_kb/draft-faq.txt").write_text("Not ready either.\n", "utf-8")
    ingest.main(params_file)
    docs = {d.id for d in read_docs(load_params(params_file).paths.kb_docs)}
    assert len(docs) == 9 and not any(d.startswith("draft") for d in docs)
    assert [r["path"] for r in skipped_rows(params_file)] == ["draft-faq.txt", "drafts"]


def test_files_of_other_suffixes_are_counted_per_suffix(
    ingested: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = ingested.parent / "my_kb"
    for name in ("manual.pdf", "guides/Quickstart.PDF", "page.html", "Makefile"):
        (kb / name).write_bytes(b"%PDF-1.4 or <html> or make")
    (ingested.parent / "my_qa/extra.csv").write_text("id,question\n", encoding="utf-8")

    out = ingest_skips(ingested, capsys)

    params = load_params(ingested).ingest
    assert (
        f"ingest: {params.kb_folder}: skipped 4 files it cannot read: .pdf 2, (none) 1, .html 1 "
        "(convert them to .md or .txt)"
    ) in out
    assert (
        f"ingest: {params.qa_folder}: skipped 1 file it cannot read: .csv 1 "
        "(QA records go in .jsonl files)"
    ) in out
    assert {(r["path"], r["detail"]) for r in skipped_rows(ingested)} == {
        ("Makefile", "(none)"),
        ("guides/Quickstart.PDF", ".pdf"),
        ("manual.pdf", ".pdf"),
        ("page.html", ".html"),
        ("extra.csv", ".csv"),
    }


def test_a_kb_folder_of_unreadable_files_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = make_project(tmp_path)
    ingest.main(params_file)
    kb = tmp_path / "my_kb"
    shutil.rmtree(kb)
    kb.mkdir()
    (kb / "handbook.pdf").write_bytes(b"%PDF-1.4")
    (kb / "handbook.docx").write_bytes(b"PK")
    err = fails_cleanly(params_file, capsys)
    assert (
        f"error: {kb}: no .jsonl/.md/.markdown/.txt files in the KB folder; skipped 2 files it "
        "cannot read: .docx 1, .pdf 1 (convert them to .md or .txt)"
    ) in err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"\\ud800"', "field 'text': lone surrogate escape \\ud800"),
        ("9" * 5000, "an integer of more than 4300 digits"),
        ("NaN", "NaN is not a JSON number"),
        ("-Infinity", "-Infinity is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply for this reader"),
    ],
    ids=["lone-surrogate", "huge-int", "nan", "-inf", "nesting"],
)
def test_json_that_python_reads_but_later_stages_cannot(
    ingested: Path, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    line = '{"id": "x", "title": "X", "source": "s", "text": ' + value + "}"
    append_line(ingested.parent / "my_kb/docs.jsonl", line.encode())
    err = fails_cleanly(ingested, capsys)
    assert f"my_kb/docs.jsonl:8: {message}" in err and err.startswith("error: ")


def test_qa_without_gold_doc(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"id": "q9", "question": "Where?", "answers": ["a"], "doc_ids": [], "group": "g9"}
    append_line(ingested.parent / "my_qa/qa.jsonl", json.dumps(row).encode())
    err = fails_cleanly(ingested, capsys)
    assert "my_qa/qa.jsonl:8: field 'doc_ids' is empty: a QA record needs the id of at least" in err


def test_one_question_under_two_groups(ingested: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {
        "id": "q9",
        "question": "what  is a GLACIER?",
        "answers": ["ice"],
        "doc_ids": ["glacier"],
    }
    write_later = ingested.parent / "my_qa/later.jsonl"
    write_later.write_text(json.dumps(row | {"group": "g9"}) + "\n", encoding="utf-8")
    err = fails_cleanly(ingested, capsys)
    # QA files are read in sorted order: later.jsonl first.
    assert "my_qa/qa.jsonl:4: record 'q3' (group 'g3') asks the question of record 'q9' " in err
    assert "(group 'g9', " in err and "my_qa/later.jsonl:1), 'What is a glacier?'" in err
    assert "give both the same group, or drop one" in err

    write_later.write_text(json.dumps(row | {"group": "g3"}) + "\n", encoding="utf-8")
    ingest.main(ingested)  # the same group: both questions land in one split


@pytest.mark.parametrize(
    ("fractions", "empty"),
    [({"train": 0.6, "dev": 0.05}, "dev"), ({"train": 0.8, "dev": 0.15}, "test")],
)
def test_qa_set_whose_split_comes_out_empty(
    ingested: Path, capsys: pytest.CaptureFixture[str], fractions: dict[str, float], empty: str
) -> None:
    edit_params(ingested, "ingest", "split", fractions | {"seed": 0})  # 7 groups
    err = fails_cleanly(ingested, capsys)
    assert f"error: ingest: the {empty} split is empty: " in err
    assert "my_qa has 7 QA groups" in err
    assert "add QA records in more groups, or change ingest.split" in err


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("finetune_retriever", "batch_size", "128", "Input should be a valid integer"),
        ("tracking", "enabled", "no", "Input should be a valid boolean"),
        ("dedup", "threshold", "0.5", "Input should be a valid number"),
    ],
    ids=["int", "bool", "float"],
)
def test_params_scalars_are_not_coerced(
    ingested: Path,
    capsys: pytest.CaptureFixture[str],
    section: str,
    key: str,
    value: str,
    message: str,
) -> None:
    edit_params(ingested, section, key, value)
    err = fails_cleanly(ingested, capsys, stage=dedup.main)
    assert f"{section}.{key}: {message} (got {value!r}): write " in err and "without quotes" in err


def test_params_keep_json_number_and_path_types(tmp_path: Path) -> None:
    params_file = make_project(tmp_path, dedup__threshold=1)  # an integer is a float
    params = load_params(params_file)
    assert params.dedup.threshold == 1.0 and isinstance(params.dedup.threshold, float)
    assert params.paths.kb_docs == tmp_path / "data/kb/docs.jsonl"
    # The repo's own params mean under the strict loader what they meant to pydantic's lax one.
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    lax = Params.model_validate(raw, context={PROJECT_DIR: REPO})
    assert load_params(REPO / "params.yaml") == lax


def test_quarantine_that_empties_a_split(
    ingested: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate quarantined every gold doc of the dev questions: dedup says so, not a later
    stage reading its empty dev split."""
    paths = load_params(ingested).paths
    dev = read_qa_splits(paths.qa_dir)["dev"]
    quarantined = [
        {"id": d, "expectation": "doc_min_chars", "column": "text", "value": "x", "rule": {}}
        for d in sorted({d for r in dev for d in r.doc_ids})
    ]
    paths.validate_quarantine.write_text("".join(json.dumps(q) + "\n" for q in quarantined))
    err = fails_cleanly(ingested, capsys, stage=dedup.main)
    assert f"error: dedup: the dev split has no question left: its questions ({len(dev)})" in err
