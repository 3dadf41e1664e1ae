"""The one typed loader of `params.yaml`.

Every knob lives in `params.yaml`; code reads it only through `load_params`, so a default is
never written twice and an unknown key or an out-of-range value fails before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.io import InputError


class Section(BaseModel):
    """A params section: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsParams(Section):
    """Where each stage reads and writes; `dvc.yaml` interpolates the same values."""

    kb_docs: Path
    qa_dir: Path
    validate_dir: Path
    dedup_dir: Path


class SplitParams(Section):
    """Fractions of QA *groups* per split; test takes the rest."""

    train: float = Field(gt=0, lt=1)
    dev: float = Field(ge=0, lt=1)
    seed: int

    @model_validator(mode="after")
    def _leaves_room_for_test(self) -> SplitParams:
        if self.train + self.dev >= 1:
            raise ValueError(
                f"train + dev must be < 1 to leave a test split (got {self.train} + {self.dev})"
            )
        return self


class IngestParams(Section):
    """`source: packaged` reads the bundled KB and questions; `folder` reads the two paths."""

    source: Literal["packaged", "folder"]
    kb_folder: Path
    qa_file: Path
    split: SplitParams


class ValidateParams(Section):
    doc_min_chars: int = Field(ge=1)
    doc_max_chars: int = Field(ge=1)
    title_max_chars: int = Field(ge=1)
    max_control_char_share: float = Field(ge=0, le=1)
    report_examples: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateParams:
        if self.doc_min_chars > self.doc_max_chars:
            raise ValueError("doc_min_chars must not exceed doc_max_chars")
        return self


class DedupParams(Section):
    threshold: float = Field(gt=0, le=1)
    num_perm: int = Field(ge=16, le=1024)
    shingle_size: int = Field(ge=1, le=20)
    seed: int


class Params(Section):
    paths: PathsParams
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    dedup: DedupParams


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and check `params.yaml`; errors name the file and the dotted key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: params file not found") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            problems.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise InputError(f"{path}: invalid params\n" + "\n".join(problems)) from err


def resolve(params_file: Path, relative: Path) -> Path:
    """Paths in params are relative to the project folder that holds `params.yaml`."""
    return relative if relative.is_absolute() else params_file.parent / relative
