"""Fixtures shared across the suite: the tiny models and the Prefect API, built once a session.

The builders themselves live in `tests/support/` (tiny projects, a tiny random-init sentence
encoder and KB, a tiny generator), so a test that needs one in its own folder calls them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.retrieval import make_tiny_encoder
from tests.support.tiny_generator import make_tiny_generator


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny encoders with the same vocabulary and different weights (seeds 0 and 1)."""
    folder = tmp_path_factory.mktemp("encoders")
    return make_tiny_encoder(folder, seed=0), make_tiny_encoder(folder, seed=1)


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Llama generator folder with a ChatML template."""
    return make_tiny_generator(tmp_path_factory.mktemp("tiny") / "generator")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API for the whole session: starting one takes seconds."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def project_mlflow_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs go to the test project's own store, whatever the shell or an earlier test exported
    (`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI to the whole process)."""
    from tasks.lib.core.tracking import PARENT_RUN_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
