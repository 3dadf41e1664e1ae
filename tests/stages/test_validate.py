"""Stage `validate`: the suites pass on clean data, and each kind of bad record fails with a
message that names the suite, the expectation and the record; the report is written either way."""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ["GX_ANALYTICS_ENABLED"] = "false"

from tasks.lib.core.config import ValidateParams, load_params
from tasks.lib.core.expectations import qa_frame
from tasks.lib.core.io import InputError, run_stage, write_jsonl
from tasks.lib.core.records import Doc, QARecord
from tasks.validate import control_char_share, main, validate

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
Splits = dict[str, list[QARecord]]


def doc(doc_id: str, text: str | None = None, title: str | None = None) -> Doc:
    return Doc(
        id=doc_id,
        title=doc_id if title is None else title,
        text=f"{doc_id} is a passage long enough to be retrieved." if text is None else text,
        source="test",
    )


def qa(qa_id: str, group: str, doc_ids: list[str], **fields: object) -> QARecord:
    values: dict[str, object] = {"question": f"What is {doc_ids[0]}?", "answers": ["it"]}
    return QARecord(id=qa_id, doc_ids=doc_ids, group=group, **(values | fields))


@pytest.fixture
def params() -> ValidateParams:
    """The project's own bounds (doc_min_chars 20, doc_max_chars 20000, ...)."""
    return load_params(PARAMS_FILE).validate_


@pytest.fixture
def docs() -> list[Doc]:
    return [doc("Alpha"), doc("Beta"), doc("Gamma"), doc("Delta")]


@pytest.fixture
def splits() -> Splits:
    return {
        "train": [qa("q1", "g1", ["Alpha"]), qa("q2", "g1", ["Beta", "Gamma"])],
        "dev": [qa("q3", "g2", ["Gamma"])],
        "test": [qa("q4", "g3", ["Delta"])],
    }


def test_clean_data_passes_and_report_is_written(docs, splits, params, tmp_path):
    report = validate(docs, splits, params, tmp_path / "data_docs")

    assert report.success, report.message(tmp_path)
    assert [(s.name, s.rows) for s in report.suites] == [
        ("docs", 4),
        ("qa", 4),
        ("qa_doc_ids", 5),
    ]
    assert report.summary()["failed_expectations"] == 0
    assert (tmp_path / "data_docs" / "index.html").is_file()


def test_control_char_share_ignores_ordinary_whitespace():
    assert control_char_share("a\tb\nc\r\n") == 0.0
    assert control_char_share("ab\x00\ufffd") == 0.5
    assert control_char_share("") == 0.0


def test_group_split_count_is_per_group(splits):
    splits["test"].append(qa("q5", "g2", ["Alpha"]))

    frame = qa_frame(splits).set_index("id")

    assert frame["n_splits"].to_dict() == {"q1": 1, "q2": 1, "q3": 2, "q4": 1, "q5": 2}


def blank_text(docs: list[Doc], splits: Splits) -> None:
    docs[1] = doc("Beta", text="")


def long_text(docs: list[Doc], splits: Splits) -> None:
    docs[1] = doc("Beta", text="x" * 20_001)


def empty_title(docs: list[Doc], splits: Splits) -> None:
    docs[1] = doc("Beta", title="")


def blank_title(docs: list[Doc], splits: Splits) -> None:
    docs[1] = doc("Beta", title="  \t")


def duplicate_id(docs: list[Doc], splits: Splits) -> None:
    docs.append(doc("Beta", text="Another passage that reuses the id Beta."))


def control_chars(docs: list[Doc], splits: Splits) -> None:
    docs[1] = doc("Beta", text="Beta \x00\x01\x02 was decoded \ufffd\ufffd badly somewhere.")


def blank_question(docs: list[Doc], splits: Splits) -> None:
    splits["dev"][0] = qa("q3", "g2", ["Gamma"], question="   ")


def no_answers(docs: list[Doc], splits: Splits) -> None:
    splits["dev"][0] = qa("q3", "g2", ["Gamma"], answers=[])


def blank_answers(docs: list[Doc], splits: Splits) -> None:
    splits["dev"][0] = qa("q3", "g2", ["Gamma"], answers=["", " "])


def unknown_doc_id(docs: list[Doc], splits: Splits) -> None:
    splits["dev"][0] = qa("q3", "g2", ["Gamma", "Nowhere"])


def group_in_two_splits(docs: list[Doc], splits: Splits) -> None:
    splits["test"][0] = qa("q4", "g2", ["Delta"])  # g2 is also dev's group


@pytest.mark.parametrize(
    ("corrupt", "suite", "expectation", "record"),
    [
        (blank_text, "docs", "expect_column_values_to_not_match_regex (column text", "'Beta'"),
        (blank_text, "docs", "expect_column_value_lengths_to_be_between (column text", "'Beta'"),
        (long_text, "docs", "expect_column_value_lengths_to_be_between (column text", "'Beta'"),
        (empty_title, "docs", "expect_column_values_to_not_match_regex (column title", "'Beta'"),
        (blank_title, "docs", "expect_column_values_to_not_match_regex (column title", "'Beta'"),
        (duplicate_id, "docs", "expect_column_values_to_be_unique (column id", "'Beta'"),
        (
            control_chars,
            "docs",
            "(column control_char_share, max_value 0.01, mostly 0.95)",
            "'Beta'",
        ),
        (blank_question, "qa", "expect_column_values_to_not_match_regex (column question", "'q3'"),
        (no_answers, "qa", "expect_column_values_to_be_between (column n_answers", "'q3'"),
        (blank_answers, "qa", "expect_column_values_to_be_between (column n_answers", "'q3'"),
        (unknown_doc_id, "qa_doc_ids", "(column in_kb", "'q3' (doc_id 'Nowhere')"),
        (group_in_two_splits, "qa", "(column n_splits, max_value 1.0)", "'q3'"),
        (group_in_two_splits, "qa", "(column n_splits, max_value 1.0)", "'q4'"),
    ],
)
def test_each_failure_names_suite_expectation_and_record(
    corrupt: Callable[[list[Doc], Splits], None],
    suite: str,
    expectation: str,
    record: str,
    docs,
    splits,
    params,
    tmp_path,
):
    corrupt(docs, splits)

    report = validate(docs, splits, params)

    assert not report.success
    lines = report.message(tmp_path / "index.html").splitlines()
    matching = [line for line in lines if f"suite '{suite}'" in line and expectation in line]
    assert len(matching) == 1, lines
    assert record in matching[0].split("e.g. ")[1]
    assert lines[0] == "validation failed:"
    assert lines[-1] == f"report: {tmp_path / 'index.html'}"


def test_failure_counts_and_examples_are_limited(docs, splits, params, tmp_path):
    docs.extend(doc(f"Short{i}", text="tiny") for i in range(8))

    report = validate(docs, splits, params)

    (failure,) = report.failures()
    assert (failure.suite, failure.column, failure.unexpected, failure.rows) == (
        "docs",
        "text",
        8,
        12,
    )
    assert [e["id"] for e in failure.examples] == [
        f"Short{i}" for i in range(params.report_examples)
    ]
    assert failure.examples[0] == {"id": "Short0", "text": "tiny"}
    assert "8 of 12 docs, e.g. 'Short0' (text 'tiny')" in report.message(tmp_path)


def write_project(root: Path, docs: list[Doc], splits: Splits) -> Path:
    """A project folder: the real params.yaml (relative paths) and canonical JSONL inputs."""
    shutil.copy(PARAMS_FILE, root / "params.yaml")
    write_jsonl(root / "data" / "kb" / "docs.jsonl", docs)
    for name, records in splits.items():
        write_jsonl(root / "data" / "qa" / f"{name}.jsonl", records)
    return root / "params.yaml"


def test_main_writes_summary_and_report_on_clean_project(docs, splits, tmp_path, capsys):
    params_file = write_project(tmp_path, docs, splits)
    stale = tmp_path / "data" / "validate" / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier run")

    main(params_file)

    out_dir = tmp_path / "data" / "validate"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["success"] is True
    assert summary["rows"] == {"docs": 4, "qa": 4, "qa_doc_ids": 5}
    assert (out_dir / "data_docs" / "index.html").is_file()
    assert not stale.exists()  # the folder is replaced as a whole
    assert "validate: docs" in capsys.readouterr().out


def test_main_on_failing_project_reports_and_exits_nonzero(docs, splits, tmp_path, capsys):
    unknown_doc_id(docs, splits)
    params_file = write_project(tmp_path, docs, splits)
    neighbour = tmp_path / "data" / "dedup" / "metrics.json"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_text('{"kept": 4}')
    inputs = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*.jsonl")}

    with pytest.raises(InputError) as err:
        main(params_file)

    out_dir = tmp_path / "data" / "validate"
    index = out_dir / "data_docs" / "index.html"
    assert str(index) in str(err.value)
    assert "suite 'qa_doc_ids'" in str(err.value)
    assert index.is_file()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["success"] is False
    (failed,) = [e for e in summary["suites"]["qa_doc_ids"]["expectations"] if not e["success"]]
    assert failed["examples"] == [{"id": "q3", "doc_id": "Nowhere"}]
    assert neighbour.read_text() == '{"kept": 4}'
    assert {p: p.read_bytes() for p in inputs} == inputs
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "dedup",
        "kb",
        "qa",
        "validate",
    ]

    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: main(params_file))
    assert exit_info.value.code == 1
    assert "error: validation failed:" in capsys.readouterr().err


def test_data_docs_show_offending_records_as_text_not_html(docs, splits, params, tmp_path):
    """A doc's text and a record's ids are user data: in the report they must be text, never
    markup the browser runs (the page is served from MLflow too)."""
    evil = "<script>alert(1)</script><img src=x onerror=alert(1)>"
    docs[1] = doc("Beta", text=evil)  # longer than the bound below, unlike the other texts
    splits["dev"][0] = qa("<script>alert(2)</script>", "g2", ["<img src=x onerror=alert(3)>"])
    bounds = params.model_copy(update={"doc_max_chars": len(evil) - 1})

    report = validate(docs, splits, bounds, tmp_path / "data_docs")

    assert {(f.column, f.examples[0]["id"]) for f in report.failures()} == {
        ("text", "Beta"),
        ("in_kb", "<script>alert(2)</script>"),  # the verdict keeps the raw values
    }
    pages = "".join(p.read_text(encoding="utf-8") for p in tmp_path.rglob("*.html"))
    assert html.escape(evil) in pages
    assert html.escape("<script>alert(2)</script>") in pages
    assert html.escape("<img src=x onerror=alert(3)>") in pages
    for raw in ("<script>alert", "<img src=x", "&amp;lt;"):  # nor escaped twice
        assert raw not in pages
