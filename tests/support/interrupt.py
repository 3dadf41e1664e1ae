"""Training stopped after a checkpoint, the way a run dies: for real (SIGKILL of a subprocess, as
an OOM killer or a lost machine does it) or in-process (a callback raises).

    python -m tests.support.interrupt <stage module> <step>

runs the stage in the current folder and, once its trainer has saved the checkpoint of `step`,
prints `HANGING` and sleeps until it is killed.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, trainer

HANGING = "HANGING"
REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    """Raised by the in-process interruption."""


class AfterCheckpoint(TrainerCallback):
    """Calls `action` once the trainer has saved the checkpoint of `step` (and rotated the older
    ones): what the next run finds is what a run killed right then leaves."""

    def __init__(self, step: int, action: Callable[[], None]) -> None:
        self.step, self.action = step, action

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.action()


@contextmanager
def every_trainer_calls(callback: TrainerCallback) -> Iterator[None]:
    """`callback` added to each Trainer built meanwhile (the stages build their own)."""
    trainer.DEFAULT_CALLBACKS.append(callback)
    try:
        yield
    finally:
        trainer.DEFAULT_CALLBACKS.remove(callback)


def raise_after_checkpoint(step: int) -> AfterCheckpoint:
    def stop() -> None:
        raise Interrupted(f"stopped after the checkpoint of step {step}")

    return AfterCheckpoint(step, stop)


def kill_after_checkpoint(project: Path, stage_module: str, step: int) -> str:
    """Run `stage_module` in `project` as a subprocess, SIGKILL it once the checkpoint of `step`
    is saved; returns what it printed."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.support.interrupt", stage_module, str(step)]
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip() == HANGING:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    output = "".join(lines)
    assert process.returncode == -signal.SIGKILL, f"the stage did not reach step {step}:\n{output}"
    return output


def _hang() -> None:
    print(HANGING, flush=True)
    time.sleep(600)


if __name__ == "__main__":
    stage, step = sys.argv[1], int(sys.argv[2])
    with every_trainer_calls(AfterCheckpoint(step, _hang)):
        runpy.run_module(stage, run_name="__main__")
