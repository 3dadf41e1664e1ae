"""What validate found, reduced from GX's results to what a user needs: per expectation the
counts and a few offending records, the docs a `quarantine` policy set aside, and the verdict.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib.core.records import QuarantinedDoc

ROWS = {"docs": "docs", "qa": "questions", "qa_doc_ids": "doc_id references"}


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, reduced to what a user needs to find the bad records."""

    suite: str
    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    rows: int
    unexpected: int
    examples: list[dict[str, Any]]  # {"id": record id, other column: its value, ...}
    check: str | None  # its validate.on_failure name (docs suite)
    on_failure: str  # stop | quarantine

    def describe(self, row_name: str) -> str:
        args = ", ".join([f"column {self.column}"] + [f"{k} {v}" for k, v in self.kwargs.items()])
        shown = []
        for example in self.examples:
            context = ", ".join(f"{k} {v!r}" for k, v in example.items() if k != "id")
            shown.append(f"{example['id']!r}" + (f" ({context})" if context else ""))
        return (
            f"suite '{self.suite}', expectation {self.expectation} ({args}): "
            f"{self.unexpected} of {self.rows} {row_name}, e.g. {', '.join(shown)}"
        )


@dataclass(frozen=True)
class SuiteOutcome:
    name: str
    success: bool
    rows: int
    expectations: list[ExpectationOutcome]


@dataclass(frozen=True)
class ValidationReport:
    suites: list[SuiteOutcome]
    quarantine: list[QuarantinedDoc]  # one per doc, under the first expectation it failed
    max_quarantined_share: float

    @property
    def quarantine_exceeded(self) -> bool:
        docs = next((s.rows for s in self.suites if s.name == "docs"), 0)
        return len(self.quarantine) > self.max_quarantined_share * docs

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites) and not self.quarantine_exceeded

    def failures(self) -> list[ExpectationOutcome]:
        return [e for s in self.suites for e in s.expectations if not e.success]

    def quarantined_by_check(self) -> dict[str, int]:
        return dict(Counter(q.expectation for q in self.quarantine))

    def message(self, data_docs_index: Path) -> str:
        """One line per failed expectation, one for too many quarantined docs, then where the
        full report is."""
        lines = [e.describe(ROWS.get(e.suite, "rows")) for e in self.failures()]
        if self.quarantine_exceeded:
            docs = next(s.rows for s in self.suites if s.name == "docs")
            counts = ", ".join(f"{k} {v}" for k, v in self.quarantined_by_check().items())
            shown = ", ".join(repr(q.id) for q in self.quarantine[:5])
            lines.append(
                f"quarantine: {len(self.quarantine)} of {docs} docs ({counts}), more than "
                f"validate.max_quarantined_share {self.max_quarantined_share}, e.g. {shown}: "
                "fix those docs, or raise the bound if so many are expected"
            )
        return "\n".join(
            ["validation failed:", *(f"  {line}" for line in lines), f"report: {data_docs_index}"]
        )

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "rows": {s.name: s.rows for s in self.suites},
            "evaluated_expectations": sum(len(s.expectations) for s in self.suites),
            "failed_expectations": len(self.failures()),
            "quarantined": len(self.quarantine),
            "quarantined_by_expectation": self.quarantined_by_check(),
            "suites": {s.name: asdict(s) for s in self.suites},
        }


def shorten(value: Any, limit: int = 40) -> Any:
    """An offending value short enough for one message line (a too-long text is 20,000 chars)."""
    if isinstance(value, np.generic):  # GX hands back numpy scalars; JSON wants Python ones
        value = value.item()
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return round(value, 4) if isinstance(value, float) else value
