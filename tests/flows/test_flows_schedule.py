"""`ragloop schedule` explains what it needs instead of serving a schedule that never fires."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app


def test_schedule_without_a_prefect_server_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["schedule", "--cron", "0 3 * * *"])
    assert result.exit_code == 2
    assert "prefect server start" in result.output and "PREFECT_API_URL" in result.output
