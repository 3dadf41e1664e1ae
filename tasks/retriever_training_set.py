"""Stage `retriever_training_set`: everything `finetune_retriever` learns from, as one file.

The (question, gold passage) pairs of the real train split and, when enabled, of
`synthesize_queries`, each with its hard negatives mined from the base index, and the dev
questions and corpus that rank checkpoints, all with their passages' text (see
`tasks.lib.retrieval.training_set` for the rules and for what an added KB doc changes). The
training stage reads nothing else of the KB, so DVC retrains the retriever exactly when this
file's bytes change, and a KB change that leaves them alone costs this stage only.

Outputs in `paths.retriever_training_set_dir`: the set (`paths.retriever_training_set`, JSON in
a fixed order) and metrics.json (pair counts, mining statistics, dev sizes). The metrics are
not read by training: a statistic that changes alone (a candidate that entered a mining window
but was not chosen) retrains nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tasks.lib.core.config import FinetuneRetrieverParams, Params, load_params
from tasks.lib.core.io import atomic_path, read_text, run_stage, write_json
from tasks.lib.core.precision import Precision
from tasks.lib.core.records import QARecord, read_docs, read_qa, read_qa_splits
from tasks.lib.core.tracking import stage_run
from tasks.lib.retrieval.encoder import encode_precision, load_encoder
from tasks.lib.retrieval.index_store import passage_text
from tasks.lib.retrieval.retriever import Fusion, Retriever
from tasks.lib.retrieval.training_set import (
    RetrieverTrainingSet,
    build_training_set,
    write_training_set,
)

METRICS_FILE = "metrics.json"


def build(
    params: Params, tune: FinetuneRetrieverParams, precision: Precision
) -> tuple[RetrieverTrainingSet, dict[str, Any]]:
    """The set `tune` asks for from the project's KB, QA splits, synthetic questions and base
    index (its questions embedded in `precision`), with its statistics; `tune` may differ
    from params (the ablation)."""
    torch.set_num_threads(tune.threads or os.cpu_count() or 1)
    docs = read_docs(params.paths.retrieval_docs)
    splits = read_qa_splits(params.paths.retrieval_qa_dir)
    passages = {d.id: passage_text(d, params.index.include_title) for d in docs}
    model = load_encoder(params.index.encoder, params.project_dir)
    # Loading the base index with this model checks that it is the encoder that built it.
    # Only its dense side is searched: the fusion is unused.
    base = Retriever.load(
        params.paths.index_dir,
        Fusion.from_params(params.retrieval),
        encoder=model,
        precision=precision,
    )
    real = splits["train"] if tune.use_real else []
    synthetic: list[QARecord] = []
    if tune.use_synthetic:
        synthetic_file = params.paths.synthetic_queries
        # Empty when synthesize_queries kept no question (a weak generator, a small KB).
        synthetic = read_qa(synthetic_file) if read_text(synthetic_file).strip() else []
    return build_training_set(passages, real, synthetic, splits["dev"], base, tune)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths = params.paths
    out_dir = paths.retriever_training_set_dir
    precision = encode_precision(params)
    with stage_run("retriever_training_set", params) as run:
        training_set, stats = build(params, params.finetune_retriever, precision)
        with atomic_path(out_dir) as tmp:
            set_file = paths.retriever_training_set.relative_to(out_dir)
            write_training_set(tmp / set_file, training_set)
            write_json(tmp / METRICS_FILE, stats)
        run.log_metrics(stats)
        run.set_tags({"precision.encode": precision})
    pairs = stats["pairs"]
    print(
        f"retriever_training_set: {sum(pairs.values())} pairs ({pairs['real']} real, "
        f"{pairs['synthetic']} synthetic), {stats['negatives_per_pair']} mined negatives each "
        f"{stats['mining'] or ''} (questions embedded in {precision}); "
        f"dev: {stats['dev_questions']} questions over "
        f"{stats['dev_corpus_docs']} docs -> {paths.retriever_training_set}"
    )


if __name__ == "__main__":
    run_stage(main)
