"""The tiny bundle the serving tests load, save and register, built once a module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bundle import make_bundle, make_bundle_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bundle_parts(tmp_path_factory.mktemp("bundle_parts"))


@pytest.fixture(scope="module")
def bundle_dir(parts: dict[str, Path]) -> Path:
    return make_bundle(parts, parts["root"] / "bundle")
