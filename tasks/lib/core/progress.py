"""Progress a person can read in a log: `label: 120/400 answers (30%), 1.8 answers/s, ETA 2m35s`.

Stages run under `dvc repro` and Prefect, whose output is a pipe, not a terminal: a tqdm bar
there is one unreadable line of carriage returns, so long loops print whole lines instead, in a
terminal too (one format to read, and the lines sit between the stage's own). A line comes at
most every `PROGRESS_SECONDS`, so a fast loop stays quiet and a slow one never goes silent for
long. `TrainingProgress` gives the transformers and sentence-transformers trainers the same
lines, in place of the raw log dicts they print when tqdm is off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import (
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

# Often enough to show a run is alive, rarely enough that the lines stay readable.
PROGRESS_SECONDS = 15.0

Clock = Callable[[], float]


def duration(seconds: float) -> str:
    """`45s`, `1m40s`, `2h05m`: an ETA needs no more precision than that."""
    seconds = round(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Lines saying how far a loop of `total` items (`unit`, singular) has come, with its rate
    and ETA, measured from this object's creation (`done` items were done before it: a resumed
    run's). A line is printed once `every` more items are done *and* `interval` seconds have
    passed since the last line, whichever comes later."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        done: int = 0,
        every: int = 1,
        interval: float = PROGRESS_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.every, self.interval, self.clock = every, interval, clock
        self.done = self._first = self._shown = done
        self._started = self._shown_at = clock()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.update(self.done + n, note)

    def update(self, done: int, note: str = "") -> None:
        """`done` items are done now; `note` ends the line (`loss 0.104`, `200 from the cache`)."""
        self.done = done
        now = self.clock()
        if done - self._shown >= self.every and now - self._shown_at >= self.interval:
            print(self.line(now, note), flush=True)  # a pipe buffers: flush, or it arrives late
            self._shown, self._shown_at = done, now

    def line(self, now: float, note: str = "") -> str:
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        parts = [f"{self.done}/{self.total} {self.unit}s{share}"]
        made, elapsed = self.done - self._first, now - self._started
        if made > 0 and elapsed > 0:
            each = elapsed / made
            parts.append(
                f"{each:.1f} s/{self.unit}" if each >= 1 else f"{1 / each:.1f} {self.unit}s/s"
            )
            parts.append(f"ETA {duration(each * max(0, self.total - self.done))}")
        if note:
            parts.append(note)
        return f"{self.label}: {', '.join(parts)}"


class TrainingProgress(TrainerCallback):
    """A `Progress` line per `PROGRESS_SECONDS` of training steps with the last logged loss, and
    one line per evaluation with the checkpoint metric. The step count starts where a resumed
    run's checkpoint left off (the trainer restores its state after `on_train_begin`, so the
    count starts at the first step)."""

    def __init__(self, label: str, clock: Clock = time.monotonic) -> None:
        self.label, self.clock = label, clock
        self._progress: Progress | None = None
        self._loss: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._progress, self._loss = None, None

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._progress is not None:
            return
        resumed = f", resuming after step {state.global_step}" if state.global_step else ""
        print(f"{self.label}: training {state.max_steps} steps{resumed}", flush=True)
        self._progress = Progress(
            self.label, state.max_steps, "step", done=state.global_step, clock=self.clock
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._progress is not None:
            loss = f"loss {self._loss:.3g}" if self._loss is not None else ""
            self._progress.update(state.global_step, loss)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if logs and "loss" in logs:
            self._loss = logs["loss"]

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        metric = args.metric_for_best_model or "loss"
        key = metric if metric.startswith("eval_") else f"eval_{metric}"
        value = (metrics or {}).get(key)
        if value is None:
            return
        best = state.best_metric  # the best before this evaluation: the trainer updates it later
        better = best is None or (value > best if args.greater_is_better else value < best)
        seconds = (metrics or {}).get("eval_runtime")
        took = f", {seconds:.1f} s" if seconds is not None else ""
        print(
            f"{self.label}: evaluation at step {state.global_step}/{state.max_steps}: "
            f"{key.removeprefix('eval_')} {value:.4g}{' (best so far)' if better else ''}{took}",
            flush=True,
        )


def show_training_progress(trainer: Trainer, label: str) -> None:
    """Give `trainer` `TrainingProgress` lines instead of its own printer: `PrinterCallback`
    (added when tqdm is off) prints every raw log dict, `ProgressCallback` draws a tqdm bar."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainingProgress(label))
