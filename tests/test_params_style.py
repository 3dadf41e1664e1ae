"""`dvc exp run -S key=value` changes one line of params.yaml, not its layout.

DVC writes a `-S` override back through ruamel: every value it touches is replaced, so flow-style
lists become block lists, quotes go, and a comment after an alias moves to a line of its own.
params.yaml is kept in the form that writer gives back; here DVC's own writer
(`dvc.utils.hydra.apply_overrides`, what `dvc exp run -S` calls) runs on a copy of it.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

REPO = Path(__file__).resolve().parent.parent


def overridden(tmp_path: Path, override: str) -> tuple[list[str], list[str]]:
    """params.yaml's lines before and after DVC writes `override` into a copy of it."""
    copy = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", copy)
    apply_overrides(copy, [override])
    return (REPO / "params.yaml").read_text("utf-8").splitlines(), copy.read_text(
        "utf-8"
    ).splitlines()


def changed_lines(before: list[str], after: list[str]) -> list[str]:
    """The diff's removed and added lines, without its headers."""
    diff = difflib.unified_diff(before, after, lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def test_an_unchanged_value_rewrites_nothing(tmp_path: Path) -> None:
    before, after = overridden(tmp_path, "dedup.threshold=0.8")
    assert after == before


@pytest.mark.parametrize(
    ("override", "old", "new"),
    [
        ("dedup.threshold=0.7", "  threshold: 0.8 ", "  threshold: 0.7 "),
        ("register.gate.margin=0.02", "    margin: 0.01 ", "    margin: 0.02 "),
        ("tracking.uri=http://mlflow:5000", "  uri: ", "  uri: http://mlflow:5000 "),
        ("finetune_generator.lora.r=8", "    r: 16", "    r: 8"),
    ],
)
def test_one_knob_is_a_one_line_diff(tmp_path: Path, override: str, old: str, new: str) -> None:
    before, after = overridden(tmp_path, override)
    removed, added = changed_lines(before, after)
    assert removed.startswith("-" + old)
    assert added.startswith("+" + new)
    key, value = override.split("=")
    section = yaml.safe_load("\n".join(after))
    for part in key.split("."):
        section = section[part]
    assert str(section) == value


def test_a_list_knob_changes_only_its_items(tmp_path: Path) -> None:
    before, after = overridden(tmp_path, "tune_retrieval.rrf_k=[10,60]")
    assert changed_lines(before, after) == ["-  - 30", "-  - 100"]
