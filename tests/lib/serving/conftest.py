"""The tiny bundle the serving tests load, save and register, built once a module, and the
sqlite registry they register it in."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.support.bundle import make_bundle, make_bundle_parts, sqlite_registry


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bundle_parts(tmp_path_factory.mktemp("bundle_parts"))


@pytest.fixture(scope="module")
def bundle_dir(parts: dict[str, Path]) -> Path:
    return make_bundle(parts, parts["root"] / "bundle")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One sqlite registry for the module; each test registers versions of its own."""
    return sqlite_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def client(store: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])  # where pinned components resolve
    mlflow.set_tracking_uri(store[0])
    return MlflowClient(store[0])
