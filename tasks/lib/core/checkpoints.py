"""Training checkpoints that outlive a killed run, so the next `dvc repro` resumes it.

DVC deletes a stage's outs before it runs the stage, so the checkpoints live outside them, in
`paths.checkpoints_dir/<stage>/<run key>/checkpoint-<step>`, each holding what the trainers'
`resume_from_checkpoint` reads: weights (or the LoRA adapter), optimizer, scheduler, RNG and
trainer state. The run key digests everything that determines the training (training data,
base model, training params, resolved precision, library versions), so a checkpoint only ever
resumes the run that wrote it; checkpoints under another key can never be resumed and are
removed on start. A successful run removes the stage's folder, so disk use stays bounded by one
run's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tasks.lib.core.tracking import folder_manifest

# The trainer writes this file last in a checkpoint: without it (or half written) the process
# was killed while saving, and the checkpoint is unusable.
TRAINER_STATE = "trainer_state.json"
TRAINING_LIBRARIES = ("torch", "transformers", "accelerate", "sentence-transformers", "peft")


def run_key(*parts: Any) -> str:
    """sha256 (first 16 hex digits) of the JSON of `parts` and of the training libraries'
    versions: a library upgrade between the kill and the rerun starts over."""
    libraries = {name: version(name) for name in TRAINING_LIBRARIES}
    text = json.dumps([parts, libraries], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """sha256 of every file's relative name and bytes under `folder` (a base model folder)."""
    manifest = json.dumps(folder_manifest(folder), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(manifest.encode()).hexdigest()


def _trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    try:
        return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


@dataclass(frozen=True)
class Checkpoints:
    """One training run's checkpoint folder (the trainer's `output_dir`) and the checkpoint it
    resumes from, if any."""

    stage_dir: Path
    run_dir: Path
    resume_from: str | None  # as `train(resume_from_checkpoint=)` takes it (ST needs a str)
    resumed_state: dict[str, Any]  # the trainer state saved with `resume_from` ({} if none)

    @classmethod
    def open(cls, stage: str, stage_dir: Path, key: str, resume: bool) -> Checkpoints:
        """Clear what can never be resumed, and find the latest complete checkpoint of `key`
        (none when `resume` is false); says on stdout what it resumes or removes."""
        run_dir = stage_dir / key
        others = [p for p in stage_dir.glob("*") if p != run_dir or not resume]
        if others:
            print(
                f"{stage}: removed the checkpoints of an earlier run "
                + ("(resume is false)" if not resume else "with other data or params")
                + f" in {stage_dir}"
            )
        for path in others:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        complete: list[tuple[Path, dict[str, Any]]] = []
        for checkpoint in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            state = _trainer_state(checkpoint)
            if state is None:
                print(f"{stage}: removed {checkpoint.name}: incomplete (killed while saving)")
                shutil.rmtree(checkpoint)
            else:
                complete.append((checkpoint, state))
        if not complete:
            return cls(stage_dir, run_dir, None, {})
        latest, state = max(complete, key=lambda c: c[1]["global_step"])
        saved = time.time() - (latest / TRAINER_STATE).stat().st_mtime
        print(
            f"{stage}: resuming from {latest.name} (step {state['global_step']} of "
            f"{state['max_steps']}, saved {_ago(saved)} ago)"
        )
        return cls(stage_dir, run_dir, str(latest), state)

    @property
    def resumed_step(self) -> int:
        """The step training restarts from (0 for a fresh start)."""
        return int(self.resumed_state.get("global_step", 0))

    def finish(self) -> None:
        """The run's outputs are written: its checkpoints are no longer needed."""
        shutil.rmtree(self.stage_dir, ignore_errors=True)
