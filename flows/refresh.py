"""Prefect flow `refresh`: serve a changed KB without retraining, through DVC, then the gate.

It runs, as the `retrain` flow does (one Prefect task per `dvc repro --single-item` stage, one
MLflow parent run), only the stages the refresh gate needs: ingest, validate, dedup, the change
set against the champion (`kb_changes`), then the champion's encoder re-indexes the new KB
(only added and modified docs are embedded), the refreshed bundle is judged on questions about
the changed docs and the refresh gate promotes it or keeps the champion. No model trains, so a
KB change is served in minutes; the scheduled `retrain` still adapts the models later.

With no champion, or a KB the champion already serves, every refresh stage leaves a "nothing
to refresh" marker and the gate does nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.retrain import flow_main, run_pipeline

TARGET = "refresh_register"  # the refresh gate: the flow runs what it needs


@flow(name="refresh", log_prints=True)
def refresh(params_file: str = "params.yaml") -> dict[str, Any]:
    """Run the refresh path through DVC and report the refresh gate's decision."""
    return run_pipeline(
        "refresh", params_file, TARGET, TARGET, lambda params: params.paths.refresh_decision
    )


if __name__ == "__main__":
    flow_main(refresh, "flows.refresh")
