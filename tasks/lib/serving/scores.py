"""Per-question scores: what evaluate writes and the gate reads.

A mean hides how two systems differ question by question; the gate needs the questions
themselves to pair them. The scores file (`paths.evaluate_scores`) is JSON Lines, one row per
(system, question set, question): `{"system", "set", "id", <metric>: value, ...}` with the
MLflow-safe metric names of metrics.json, plus `version` on the rows of a registry version
(the champion evaluate re-scored), so the gate can tell whether that is still the champion.
Question sets: `test` (the standing test split) and `change_set` (questions about the docs
an index refresh added or modified).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictStr

from tasks.lib.core.config import Params, PathsParams
from tasks.lib.core.io import InputError, jsonl_records

if TYPE_CHECKING:
    from mlflow import MlflowClient

TEST_SET, CHANGE_SET = "test", "change_set"
SCORES_ARTIFACT = "evaluation"  # register's run artifact folder: the scores its gate judged on


class ScoreRow(BaseModel):
    """One question's scores; every other field is a metric."""

    model_config = ConfigDict(extra="allow")

    system: StrictStr
    set: StrictStr
    id: StrictStr
    version: StrictStr | None = None


@dataclass(frozen=True)
class SystemScores:
    """One system's scores on one question set: per metric, one value per question in `ids`."""

    ids: tuple[str, ...]
    metrics: dict[str, np.ndarray]
    version: str | None = None

    def means(self) -> dict[str, float]:
        return {name: float(np.mean(values)) for name, values in self.metrics.items()}

    def aligned_to(self, ids: Sequence[str], what: str) -> SystemScores:
        """The same scores in the order of `ids`; every one of them must be scored."""
        position = {qid: i for i, qid in enumerate(self.ids)}
        missing = [qid for qid in ids if qid not in position]
        if missing:
            raise InputError(
                f"{what}: no scores for {len(missing)} of the {len(ids)} questions judged "
                f"(e.g. {missing[:3]}): score both systems on the same questions"
            )
        order = np.array([position[qid] for qid in ids], dtype=int)
        return SystemScores(
            tuple(ids), {m: v[order] for m, v in self.metrics.items()}, self.version
        )


def score_rows(
    system: str,
    question_set: str,
    ids: Sequence[str],
    scores: Sequence[Mapping[str, float]],
    version: str | None = None,
) -> list[dict[str, Any]]:
    """The scores file's rows of one system on one question set."""
    extra = {} if version is None else {"version": version}
    return [
        {"system": system, "set": question_set, "id": qid, **extra, **values}
        for qid, values in zip(ids, scores, strict=True)
    ]


def read_scores(path: Path) -> dict[tuple[str, str], SystemScores]:
    """(question set, system) -> its scores, questions in file order."""
    rows: dict[tuple[str, str], list[ScoreRow]] = {}
    for number, row in jsonl_records(path, ScoreRow):
        bad = [k for k, v in (row.model_extra or {}).items() if not _is_number(v)]
        if bad:
            raise InputError(f"{path}:{number}: metric(s) {bad} are not numbers")
        rows.setdefault((row.set, row.system), []).append(row)
    return {
        key: _system_scores(group, f"{path} ({key[1]} on {key[0]})") for key, group in rows.items()
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _system_scores(rows: Iterable[ScoreRow], where: str) -> SystemScores:
    rows = list(rows)
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{where}: a question is scored twice")
    names = list(rows[0].model_extra or {})
    if any(set(row.model_extra or {}) != set(names) for row in rows):
        raise InputError(f"{where}: every question must carry the same metrics")
    versions = {row.version for row in rows}
    if len(versions) != 1:
        raise InputError(f"{where}: rows of several versions {sorted(map(str, versions))}")
    metrics = {
        name: np.array([(row.model_extra or {})[name] for row in rows], dtype=float)
        for name in names
    }
    return SystemScores(tuple(ids), metrics, versions.pop())


def evaluation_files(paths: PathsParams, folder: Path | None) -> tuple[Path, Path]:
    """(metrics.json, scores file) of an evaluate output folder (default paths.evaluate_dir)."""
    if folder is None:
        return paths.evaluate_metrics, paths.evaluate_scores
    return (
        folder / paths.evaluate_metrics.relative_to(paths.evaluate_dir),
        folder / paths.evaluate_scores.relative_to(paths.evaluate_dir),
    )


def judged_scores(
    client: MlflowClient, model: str, version: str, test_split: str, params: Params
) -> SystemScores | None:
    """The per-question test scores `version` was judged on (its register run keeps them), if
    they were on this very test split; None otherwise. A bundle answers the same questions the
    same way, so these stand for a re-score of it."""
    from tasks.lib.serving.registry import TEST_SPLIT_TAG, version_run_file, version_run_tags

    if version_run_tags(client, model, version).get(TEST_SPLIT_TAG) != test_split:
        return None
    artifact = f"{SCORES_ARTIFACT}/{params.paths.evaluate_scores.name}"
    with tempfile.TemporaryDirectory(prefix="ragloop-scores.") as tmp:
        path = version_run_file(client, model, version, artifact, Path(tmp))
        stored = read_scores(path) if path is not None else {}
    own = stored.get((TEST_SET, params.register_.gate.candidate))
    return None if own is None else SystemScores(own.ids, own.metrics, version)
