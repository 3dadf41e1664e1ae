"""The great-expectations machinery the stages share: the QA suites, and a run of suites in an
in-memory GX context reduced to a `ValidationReport`.

`validate` checks the KB docs and the QA splits with it; `feedback_export` checks the QA records
it makes from feedback with the same QA suites, so a record the validate stage would refuse
never reaches the train split.

Checks that need more than one column or one record (a group in two splits) are computed in
pandas as derived columns, so each GX expectation stays a plain column check whose offending
rows GX can name by record id.
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

from tasks.lib.core.data_docs import make_offline
from tasks.lib.core.records import QARecord, QuarantinedDoc
from tasks.lib.core.validation import (
    ExpectationOutcome,
    SuiteOutcome,
    ValidationReport,
    shorten,
)

BLANK = r"^\s*$"  # valid in RE2 too: pandas runs regexes on pyarrow strings with it
GX_KWARGS = ("batch_id", "column", "result_format")  # bookkeeping, not what the check demands
STOP, QUARANTINE = "stop", "quarantine"
# The run time GX writes into the data docs (page text, folder names): fixed, so unchanged
# inputs give the same bytes and dvc.lock stays put; the MLflow run holds the real time.
RUN_ID = RunIdentifier(run_time=datetime(1970, 1, 1, tzinfo=UTC))


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


def qa_checks(splits: Mapping[str, list[QARecord]], kb_ids: set[str]) -> list[SuiteCheck]:
    """The QA suite and the QA-reference suite (every gold doc id a KB doc id), on `splits`."""
    return [
        SuiteCheck(qa_suite(), qa_frame(splits)),
        SuiteCheck(qa_doc_ids_suite(), qa_doc_ids_frame(splits, kb_ids), ("id", "doc_id")),
    ]


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
