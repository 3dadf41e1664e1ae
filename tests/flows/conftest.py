"""The environment the real flows of this folder run in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.projects import own_tracking_env


@pytest.fixture(scope="module")
def flow_harness(prefect_api: None) -> Iterator[None]:
    """The session's temporary Prefect API, and the project's own MLflow store whatever the
    shell or an earlier test exported, for the whole module (its flows outlive one test)."""
    with own_tracking_env():
        yield
