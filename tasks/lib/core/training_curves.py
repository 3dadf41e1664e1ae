"""Training curves to MLflow: the trainers' own logs (loss, learning rate, dev metrics) as
step-indexed metrics of the stage's run, so the MLflow UI charts them and compares runs.

Written instead of transformers' `MLFlowCallback` because that one also logs every
`TrainingArguments` field as a param (all of them, next to the stage's own params section) and
may end or start runs itself; here the stage's `stage_run` owns the run.
"""

from __future__ import annotations

import sys
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class MlflowCurves(TrainerCallback):
    """Log each numeric entry of the trainer's logs to the active MLflow run, if there is one."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        mlflow = sys.modules.get("mlflow")  # not imported: tracking is off, nothing is active
        if mlflow is None or mlflow.active_run() is None or not logs:
            return
        from tasks.lib.core.tracking import numeric_metrics

        curves = {k: v for k, v in logs.items() if isinstance(v, int | float)}
        mlflow.log_metrics(numeric_metrics(curves, "train."), step=state.global_step)
