"""The validate stage's data docs: the same bytes for the same data (dvc.lock stays put on a
rerun), and every script, style sheet and font a page loads is a file of the site itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ["GX_ANALYTICS_ENABLED"] = "false"

from tasks.lib.core.config import load_params
from tasks.validate import validate
from tests.stages.test_validate import PARAMS_FILE, doc, qa

_LOADED = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"")
_CSS_URL = re.compile(r"url\(([^)]+)\)")


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The data docs of one tiny KB (one doc quarantined: tables of offending rows) built twice."""
    params = load_params(PARAMS_FILE).validate_
    docs = [doc("Alpha"), doc("Beta"), doc("Short", text="too short")]
    splits = {"train": [qa("q1", "g1", ["Alpha"])], "dev": [qa("q2", "g2", ["Beta"])], "test": []}
    builds = []
    for name in ("first", "second"):
        docs_dir = tmp_path_factory.mktemp(name) / "data_docs"
        validate(docs, splits, params, docs_dir)
        builds.append(docs_dir)
    return builds[0], builds[1]


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_a_rebuild_on_the_same_data_writes_the_same_bytes(two_builds: tuple[Path, Path]) -> None:
    first, second = files(two_builds[0]), files(two_builds[1])
    assert any(name.startswith("validations/") for name in first)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_every_loaded_asset_is_a_local_file(two_builds: tuple[Path, Path]) -> None:
    docs_dir = two_builds[0]
    pages = list(docs_dir.rglob("*.html"))
    assert len(pages) > 3
    loaded = 0
    for page in pages:
        for address in _LOADED.findall(page.read_text("utf-8")):
            assert "://" not in address, f"{page.name} loads {address}"
            assert (page.parent / address).is_file(), f"{page.name}: {address} is missing"
            loaded += 1
    assert loaded > 10 * len(pages)  # bootstrap, jquery, the tables, the icon font, ...
    icons = docs_dir / "static/vendor/fontawesome-free/css/all.min.css"
    for font in set(_CSS_URL.findall(icons.read_text("utf-8"))):
        if font.endswith(".woff2"):
            assert (icons.parent / font).is_file(), font
