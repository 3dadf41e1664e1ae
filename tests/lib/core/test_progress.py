"""Progress lines (count, rate, ETA at their cadence), the trainers' step lines in place of raw
log dicts, and the libraries' noise kept out of a stage's output unless RAGLOOP_VERBOSE=1."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from tasks.lib.core.io import QUIET_ENV, VERBOSE_ENV
from tasks.lib.core.progress import Progress, TrainingProgress, duration, show_training_progress

REPO = Path(__file__).resolve().parents[3]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_minutes_and_hours() -> None:
    assert [duration(s) for s in (0, 44.6, 100, 3599, 7500)] == [
        "0s",
        "45s",
        "1m40s",
        "59m59s",
        "2h05m",
    ]


def test_a_line_comes_after_every_items_and_interval_seconds_whichever_is_later(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    progress = Progress("stage: base_rag on test", 100, "answer", every=10, clock=clock)
    clock.now = 20.0
    progress.advance(5)  # the interval is over, but only 5 of the 10 items
    assert capsys.readouterr().out == ""
    progress.advance(5, "40 more from the cache")
    assert capsys.readouterr().out == (
        "stage: base_rag on test: 10/100 answers (10%), 2.0 s/answer, ETA 3m00s, "
        "40 more from the cache\n"
    )
    clock.now = 25.0
    progress.advance(20)  # 20 more items, but 5 s after the last line
    assert capsys.readouterr().out == ""
    clock.now = 40.0
    progress.advance(10)  # 40 done in 40 s: 60 more take a minute
    assert capsys.readouterr().out == (
        "stage: base_rag on test: 40/100 answers (40%), 1.0 s/answer, ETA 1m00s\n"
    )


def test_fast_loops_show_items_per_second_and_a_resumed_count_its_own_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    progress = Progress("embed", 1000, "doc", done=400, clock=clock)
    clock.now = 16.0
    progress.update(480)  # 80 docs in this run's 16 s, the 400 before it not counted
    assert capsys.readouterr().out == "embed: 480/1000 docs (48%), 5.0 docs/s, ETA 1m44s\n"


def tiny_trainer(tmp_path: Path) -> Trainer:
    """A 2-layer, 16-wide Llama learning 8 fixed sequences: 4 steps, a log every step, an
    evaluation every 2."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    sequences = [[n, n + 1, n + 2, n + 3] for n in range(8)]
    examples = [{"input_ids": ids, "labels": ids} for ids in sequences]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    return Trainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=examples,
        eval_dataset=examples[:4],
    )


def test_training_prints_step_lines_with_loss_and_eta_and_no_raw_log_dicts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    trainer = tiny_trainer(tmp_path)
    show_training_progress(trainer, "finetune_tiny")
    [callback] = [c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingProgress)]
    ticks = itertools.count(0.0, 20.0)  # each look at the clock is 20 s later: a line per step
    callback.clock = lambda: next(ticks)
    trainer.train()
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0] == "finetune_tiny: training 4 steps"
    steps = [line for line in lines if "/4 steps (" in line]
    assert [line.split(",")[0] for line in steps] == [
        f"finetune_tiny: {n}/4 steps ({25 * n}%)" for n in (1, 2, 3, 4)
    ]
    assert all("s/step, ETA " in line for line in steps)
    assert all(", loss " in line for line in steps[1:])  # a step logs its loss after its line
    assert steps[-1].split(", ")[2] == "ETA 0s"
    evaluations = [line for line in lines if "evaluation at step" in line]
    assert [line.split(":")[1] for line in evaluations] == [
        " evaluation at step 2/4",
        " evaluation at step 4/4",
    ]
    assert evaluations[0].split(": ")[2].startswith("loss ")
    assert "(best so far)" in evaluations[0]
    assert "{'" not in out + err  # PrinterCallback's dicts: loss, eval_loss, train_runtime
    assert "train_runtime" not in out + err


QUIET_PROBE = textwrap.dedent(
    """
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from tasks.lib.core.io import run_stage


    def main() -> None:
        hf_logging.get_logger("transformers.trainer_utils").warning("library warning line")
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
        warnings.warn("an old API", FutureWarning)
        import mlflow  # noqa: F401  (imported after run_stage started, as tracking does)

        logging.getLogger("mlflow.tracking.fluent").info("mlflow info line")
        hf_logging.get_logger("transformers").error("library error line")
        print("probe: the stage's own line")
        raise ValueError("the stage failed")


    run_stage(main)
    """
)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_noise_is_hidden_unless_verbose_and_errors_always_show(
    tmp_path: Path, verbose: bool
) -> None:
    (tmp_path / "probe.py").write_text(QUIET_PROBE, encoding="utf-8")
    # Not this process's quieting either: a test before may have run a stage in-process.
    env = {k: v for k, v in os.environ.items() if k != VERBOSE_ENV and k not in QUIET_ENV}
    env["PYTHONPATH"] = str(REPO)
    if verbose:
        env[VERBOSE_ENV] = "1"
    done = subprocess.run(
        [sys.executable, str(tmp_path / "probe.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "probe: the stage's own line" in done.stdout
    assert "library error line" in output
    assert "error: probe failed: ValueError: the stage failed" in done.stderr
    for noise in ("library warning line", "Loading weights", "an old API", "mlflow info line"):
        assert (noise in output) == verbose, noise
