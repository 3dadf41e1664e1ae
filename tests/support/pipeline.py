"""A project with every stage of the repo's dvc.yaml, its code, a tiny random encoder, the given
generator and every knob shrunk: the end-to-end tests run the real pipeline on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.projects import REPO, init_dvc_project, make_tracked_project_on_kb
from tests.support.retrieval import make_tiny_encoder

# Every knob shrunk to the tiny KB and models (the repo's params.yaml otherwise).
SHRUNK: dict[str, dict[str, Any]] = {
    "retrain": {"retry_delay_seconds": 0},
    "kb_questions": {"n_train": 6, "n_dev": 2, "n_heldout": 3},
    "retrieve_contexts": {"k": 5},
    "generator": {"top_k": 2, "passage_tokens": 24, "max_new_tokens": 4},
    "finetune_generator": {
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "epochs": 1,
        "batch_size": 4,
        "warmup_steps": 0,
        "eval_steps": 2,
    },
    "precision": {"train_generator": "fp32"},
    "evaluate_generation": {"bootstrap_resamples": 100, "samples": 1},
    "index": {"batch_size": 32},
    "retrieval": {"candidates": 10},
    "tune_retrieval": {"rrf_k": [60], "dense_weight": [0.5, 1.0]},
    "evaluate_retrieval": {"bootstrap_resamples": 100, "curve_depth": 5},
    "synthesize_queries": {"n_docs": 4, "doc_words": 20, "max_new_tokens": 8, "batch_size": 4},
    # synthetic queries on whatever the default, so the generator's path runs end to end too
    "finetune_retriever": {"use_synthetic": True, "epochs": 1, "batch_size": 4, "eval_corpus": 0},
    "compare_retrievers": {"bootstrap_resamples": 100},
    "bundle": {"batch_size": 4},
}


def make_pipeline_project(root: Path, generator: Path | str, **overrides: Any) -> Path:
    """The KB and QA the caller wrote to `my_kb/` and `my_qa/`, every stage, the shrunk knobs
    (`overrides`, as `section__key`, win over them); returns the params file."""
    encoder = make_tiny_encoder(root / "models")
    shrunk = {f"{section}__{k}": v for section, knobs in SHRUNK.items() for k, v in knobs.items()}
    params_file = make_tracked_project_on_kb(
        root,
        index__encoder=str(encoder),
        prepare_generator__model=str(generator),
        **(shrunk | overrides),
    )
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    init_dvc_project(root, stages)
    return params_file
