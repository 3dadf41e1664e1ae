"""Stage `validate`: great-expectations suites on the KB docs and the QA splits.

Every later stage trusts these files, so bad data stops the pipeline here, with a message that
names the suite, the expectation and a few offending records, and a GX data docs report (HTML)
that shows the rest. The report and `summary.json` are written whether the suites pass or fail:
a failed run's report is the one the user opens.

Checks that need more than one column or one record (a group in two splits, a character share)
are computed in pandas as derived columns, so each GX expectation stays a plain column check
whose offending rows GX can name by record id.

Real documentation has a few odd docs (a section of three words), so each docs expectation has
a policy (`validate.on_failure`): `stop`, or `quarantine`: its offending docs, as GX lists them,
go to the quarantine file with the expectation and value, dedup drops them and the pipeline
goes on, unless more than `max_quarantined_share` of the docs are quarantined (GX's `mostly`
bounds each expectation, the share of all quarantined docs is bounded here). QA suites stop.

The data docs quote offending records, which are user data: GX writes those values into its
tables as raw HTML, so they are escaped before the site is built (a doc whose text is a
`<script>` would otherwise run in the browser of whoever opens the report, from MLflow too).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import great_expectations as gx  # analytics are off: tasks/__init__.py sets the environment
import pandas as pd

from tasks.lib.core.config import ValidateParams, load_params
from tasks.lib.core.expectations import (
    BLANK,
    QUARANTINE,
    SuiteCheck,
    qa_checks,
    run_suites,
)
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json, write_jsonl
from tasks.lib.core.records import Doc, QARecord, read_docs, read_qa_splits
from tasks.lib.core.tracking import stage_run
from tasks.lib.core.validation import ROWS, ValidationReport

# C0/C1 controls except the whitespace a text legitimately holds, plus U+FFFD, which a decoder
# writes for bytes it could not read.
CONTROL_CHARS = {
    c: None for c in [*range(0x20), *range(0x7F, 0xA0), 0xFFFD] if chr(c) not in "\t\n\r"
}


def control_char_share(text: str) -> float:
    """Share of control or replacement characters: high means a decoding accident, not prose."""
    return (len(text) - len(text.translate(CONTROL_CHARS))) / len(text) if text else 0.0


def docs_frame(docs: list[Doc]) -> pd.DataFrame:
    """One row per doc, with the derived `control_char_share`."""
    frame = pd.DataFrame([(d.id, d.title, d.text) for d in docs], columns=["id", "title", "text"])
    frame["control_char_share"] = frame["text"].map(control_char_share).astype(float)
    return frame


def docs_suite(params: ValidateParams) -> gx.ExpectationSuite:
    """The docs expectations; each but the id ones carries its `on_failure` name and policy in
    its meta, and a quarantining one passes while its offending share stays within the bound."""
    ex = gx.expectations

    def policy(name: str) -> dict[str, Any]:
        on_failure = getattr(params.on_failure, name)
        bound = {"mostly": 1 - params.max_quarantined_share} if on_failure == QUARANTINE else {}
        return {"meta": {"check": name, "on_failure": on_failure}} | bound

    return gx.ExpectationSuite(
        name="docs",
        expectations=[
            ex.ExpectColumnValuesToNotBeNull(column="id"),
            ex.ExpectColumnValuesToNotMatchRegex(column="id", regex=BLANK),
            ex.ExpectColumnValuesToBeUnique(column="id"),
            ex.ExpectColumnValuesToNotMatchRegex(
                column="text", regex=BLANK, **policy("text_not_blank")
            ),
            ex.ExpectColumnValueLengthsToBeBetween(
                column="text", min_value=params.doc_min_chars, **policy("doc_min_chars")
            ),
            ex.ExpectColumnValueLengthsToBeBetween(
                column="text", max_value=params.doc_max_chars, **policy("doc_max_chars")
            ),
            ex.ExpectColumnValuesToNotMatchRegex(
                column="title", regex=BLANK, **policy("title_not_blank")
            ),
            ex.ExpectColumnValueLengthsToBeBetween(
                column="title", max_value=params.title_max_chars, **policy("title_max_chars")
            ),
            ex.ExpectColumnValuesToBeBetween(
                column="control_char_share",
                max_value=params.max_control_char_share,
                notes="Share of control characters (except tab, newline, CR) or U+FFFD in text.",
                **policy("max_control_char_share"),
            ),
        ],
    )


def validate(
    docs: list[Doc],
    splits: Mapping[str, list[QARecord]],
    params: ValidateParams,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the docs, QA and QA-reference suites; the caller decides what a failure means."""
    kb_ids = {d.id for d in docs}
    checks = [SuiteCheck(docs_suite(params), docs_frame(docs)), *qa_checks(splits, kb_ids)]
    return run_suites(checks, params.report_examples, params.max_quarantined_share, docs_dir)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    docs = read_docs(params.paths.kb_docs)
    splits = read_qa_splits(params.paths.qa_dir)
    out_dir, summary, quarantine = (
        params.paths.validate_dir,
        params.paths.validate_summary,
        params.paths.validate_quarantine,
    )

    with stage_run("validate", params) as run:
        with atomic_path(out_dir) as tmp_dir:
            report = validate(docs, splits, params.validate_, tmp_dir / "data_docs")
            write_json(tmp_dir / summary.relative_to(out_dir), report.summary())
            write_jsonl(tmp_dir / quarantine.relative_to(out_dir), report.quarantine)
        by_check = report.quarantined_by_check()
        run.log_metrics(
            {
                "success": int(report.success),
                "failed": len(report.failures()),
                "quarantined": len(report.quarantine),
            }
            | {f"quarantined_{name}": count for name, count in by_check.items()}
        )
        run.log_artifact(summary)
        run.log_artifact(quarantine)
        run.log_artifact(out_dir / "data_docs")  # the failed run keeps its readable report
    index = out_dir / "data_docs" / "index.html"
    if not report.success:
        raise InputError(report.message(index))

    for suite in report.suites:
        passed = f"{len(suite.expectations)} expectations passed"
        print(f"validate: {suite.name:10s} {suite.rows:6d} {ROWS[suite.name]}, {passed}")
    if report.quarantine:
        counts = ", ".join(f"{name} {count}" for name, count in by_check.items())
        print(
            f"validate: quarantined {len(report.quarantine)} docs ({counts}), listed in "
            f"{quarantine}; dedup drops them"
        )
    print(f"validate: report {index}")


if __name__ == "__main__":
    run_stage(main)
