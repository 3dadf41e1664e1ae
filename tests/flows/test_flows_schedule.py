"""`ragloop schedule` explains what it needs instead of serving a schedule that never fires."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from flows.cli import app


def test_schedule_without_a_prefect_server_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No API at all, not even the temporary one another test module may have started.
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["schedule", "--cron", "0 3 * * *"])
    assert result.exit_code == 2
    assert "prefect server start" in result.output and "PREFECT_API_URL" in result.output
