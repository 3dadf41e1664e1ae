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

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import great_expectations as gx  # analytics are off: tasks/__init__.py sets the environment
import pandas as pd
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from tasks.lib.core.config import ValidateParams, load_params
from tasks.lib.core.data_docs import make_offline
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json, write_jsonl
from tasks.lib.core.records import Doc, QARecord, QuarantinedDoc, read_docs, read_qa_splits
from tasks.lib.core.tracking import stage_run
from tasks.lib.core.validation import (
    ROWS,
    ExpectationOutcome,
    SuiteOutcome,
    ValidationReport,
    shorten,
)

# C0/C1 controls except the whitespace a text legitimately holds, plus U+FFFD, which a decoder
# writes for bytes it could not read.
CONTROL_CHARS = {
    c: None for c in [*range(0x20), *range(0x7F, 0xA0), 0xFFFD] if chr(c) not in "\t\n\r"
}
BLANK = r"^\s*$"  # valid in RE2 too: pandas runs regexes on pyarrow strings with it
GX_KWARGS = ("batch_id", "column", "result_format")  # bookkeeping, not what the check demands
STOP, QUARANTINE = "stop", "quarantine"
# The run time GX writes into the data docs (page text, folder names): fixed, so unchanged
# inputs give the same bytes and dvc.lock stays put; the MLflow run holds the real time.
RUN_ID = RunIdentifier(run_time=datetime(1970, 1, 1, tzinfo=UTC))


def control_char_share(text: str) -> float:
    """Share of control or replacement characters: high means a decoding accident, not prose."""
    return (len(text) - len(text.translate(CONTROL_CHARS))) / len(text) if text else 0.0


def docs_frame(docs: list[Doc]) -> pd.DataFrame:
    """One row per doc, with the derived `control_char_share`."""
    frame = pd.DataFrame([(d.id, d.title, d.text) for d in docs], columns=["id", "title", "text"])
    frame["control_char_share"] = frame["text"].map(control_char_share).astype(float)
    return frame


def qa_frame(splits: Mapping[str, list[QARecord]]) -> pd.DataFrame:
    """One row per QA record with its split; `n_splits` counts the splits its group appears in."""
    rows = [
        (r.id, split, r.group, r.question, sum(bool(a.strip()) for a in r.answers))
        for split, records in splits.items()
        for r in records
    ]
    frame = pd.DataFrame(rows, columns=["id", "split", "group", "question", "n_answers"])
    frame["n_splits"] = frame.groupby("group")["split"].transform("nunique").astype(int)
    return frame


def qa_doc_ids_frame(splits: Mapping[str, list[QARecord]], kb_ids: set[str]) -> pd.DataFrame:
    """One row per (QA record, gold doc id) with `in_kb`.

    Membership is computed here rather than with a GX value set: GX copies an expectation's
    arguments many times per run, which is slow for a large id set and grows with the KB.
    """
    rows = [
        (r.id, d, d in kb_ids) for records in splits.values() for r in records for d in r.doc_ids
    ]
    return pd.DataFrame(rows, columns=["id", "doc_id", "in_kb"]).astype({"in_kb": bool})


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


def qa_suite() -> gx.ExpectationSuite:
    ex = gx.expectations
    return gx.ExpectationSuite(
        name="qa",
        expectations=[
            ex.ExpectColumnValuesToBeUnique(column="id", notes="Record ids across all splits."),
            ex.ExpectColumnValuesToNotMatchRegex(column="question", regex=BLANK),
            ex.ExpectColumnValuesToBeBetween(
                column="n_answers", min_value=1, notes="Number of non-blank answers."
            ),
            ex.ExpectColumnValuesToBeBetween(
                column="n_splits",
                max_value=1,
                notes="Splits holding the record's group: more than one leaks train into test.",
            ),
        ],
    )


def qa_doc_ids_suite() -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="qa_doc_ids",
        expectations=[
            gx.expectations.ExpectColumnValuesToBeInSet(
                column="in_kb", value_set=[True], notes="Every gold `doc_id` must be a KB doc id."
            )
        ],
    )


class SuiteCheck(NamedTuple):
    """A suite, the frame it checks, and the columns that name an offending row."""

    suite: gx.ExpectationSuite
    frame: pd.DataFrame
    index_columns: tuple[str, ...] = ("id",)


def expectation_outcome(
    suite: str, result: Any, index_columns: tuple[str, ...], report_examples: int
) -> ExpectationOutcome:
    """Reduce a GX ExpectationValidationResult to counts and a few offending records.

    GX adds the checked column's value to each unexpected index entry; it is kept when the index
    is the bare id (it shows what is wrong), dropped when other index columns say it better.
    """
    config, details = result.expectation_config, result.result
    column = config.kwargs.get("column")
    keep = set(index_columns) | ({column} if index_columns == ("id",) else set())
    examples: list[dict[str, Any]] = []
    for entry in details.get("unexpected_index_list") or []:
        if len(examples) == report_examples:
            break
        if all(e["id"] != entry["id"] for e in examples):
            examples.append({k: shorten(v) for k, v in entry.items() if k in keep})
    meta = config.meta or {}
    return ExpectationOutcome(
        suite=suite,
        expectation=config.type,
        column=column,
        kwargs=dict(  # `mostly` last: it reads as a qualifier of the bound
            sorted(
                ((k, v) for k, v in config.kwargs.items() if k not in GX_KWARGS and v is not None),
                key=lambda item: item[0] == "mostly",
            )
        ),
        success=bool(result.success),
        rows=int(details.get("element_count", 0)),
        unexpected=int(details.get("unexpected_count", 0)),
        examples=examples,
        check=meta.get("check"),
        on_failure=meta.get("on_failure", STOP),
    )


def quarantined_docs(result: Any) -> list[QuarantinedDoc]:
    """The docs a quarantining expectation's GX result lists as unexpected, with why."""
    config = result.expectation_config
    if (config.meta or {}).get("on_failure") != QUARANTINE:
        return []
    column = config.kwargs["column"]
    rule = {
        k: v for k, v in config.kwargs.items() if k not in (*GX_KWARGS, "mostly") and v is not None
    }
    return [
        QuarantinedDoc(
            id=entry["id"],
            expectation=config.meta["check"],
            column=column,
            value=shorten(entry[column]),
            rule=rule,
        )
        for entry in result.result.get("unexpected_index_list") or []
    ]


def data_docs_site(docs_dir: Path) -> dict[str, Any]:
    """A GX data docs site config writing static HTML into docs_dir (index.html at its top)."""
    return {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),  # GX rejects a relative path here
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }


def html_escaped(value: Any) -> Any:
    """`value` with every string in it HTML-escaped (dicts and lists walked)."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {key: html_escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [html_escaped(item) for item in value]
    return value


def prepare_stored_results(context: AbstractDataContext) -> None:
    """Escape the values in the stored results the data docs are built from, and pin their
    batch load time to RUN_ID's (GX stamps each batch with the time it was read).

    GX escapes the parameters of its sentences but not the cells of its unexpected-values
    tables (values, counts, the ids of the offending rows). The results the verdict and the
    quarantine come from are the in-memory ones, which keep the raw values.
    """
    store = context.validation_results_store
    for key in store.list_keys():
        suite_result = store.get(key)
        for result in suite_result.results:
            result.result = html_escaped(result.result)
        suite_result.meta["batch_markers"]["ge_load_time"] = f"{RUN_ID.run_time:%Y%m%dT%H%M%S.%fZ}"
        store.set(key, suite_result)


def run_suites(
    checks: list[SuiteCheck],
    report_examples: int,
    max_quarantined_share: float,
    docs_dir: Path | None,
) -> ValidationReport:
    """Validate each frame in an in-memory GX context; build data docs into docs_dir if given.

    Rendering the HTML costs about as much as validating small data, so callers that only
    need the verdict (tests, a quick check) pass None.
    """
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={"local_site": data_docs_site(docs_dir)} if docs_dir else {},
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    source = context.data_sources.add_pandas("ragloop")
    outcomes = []
    quarantine: dict[str, QuarantinedDoc] = {}  # a doc is listed under its first failure
    for suite, frame, index_columns in checks:
        asset = source.add_dataframe_asset(suite.name)
        batch = asset.add_batch_definition_whole_dataframe(suite.name)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=context.suites.add(suite))
        )
        # COMPLETE + index columns: GX names offending rows by record id, not by row number.
        result_format = {
            "result_format": "COMPLETE",
            "unexpected_index_column_names": list(index_columns),
        }
        result = definition.run(
            batch_parameters={"dataframe": frame}, result_format=result_format, run_id=RUN_ID
        )
        expectations = [
            expectation_outcome(suite.name, r, index_columns, report_examples)
            for r in result.results
        ]
        for r in result.results:
            for doc in quarantined_docs(r):
                quarantine.setdefault(doc.id, doc)
        outcomes.append(SuiteOutcome(suite.name, bool(result.success), len(frame), expectations))
    if docs_dir:
        prepare_stored_results(context)
        context.build_data_docs()
        make_offline(docs_dir)
    return ValidationReport(outcomes, list(quarantine.values()), max_quarantined_share)


def validate(
    docs: list[Doc],
    splits: Mapping[str, list[QARecord]],
    params: ValidateParams,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the docs, QA and QA-reference suites; the caller decides what a failure means."""
    kb_ids = {d.id for d in docs}
    checks = [
        SuiteCheck(docs_suite(params), docs_frame(docs)),
        SuiteCheck(qa_suite(), qa_frame(splits)),
        SuiteCheck(qa_doc_ids_suite(), qa_doc_ids_frame(splits, kb_ids), ("id", "doc_id")),
    ]
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
