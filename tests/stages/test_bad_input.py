"""Each class of bad input: a clear message naming file, line and field, exit 1, nothing lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tasks import dedup, ingest, validate
from tasks.lib.core.config import load_params
from tasks.lib.core.io import run_stage
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
