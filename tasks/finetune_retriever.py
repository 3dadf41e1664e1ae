"""Stage `finetune_retriever`: adapt the base encoder to the KB with its own questions.

It reads only `paths.retriever_training_set` (stage `retriever_training_set`: the pairs, their
mined hard negatives and the dev data, as text) and the base encoder, so DVC retrains exactly
when that set changes. The loss is MultipleNegativesRankingLoss (or its cached variant): every
other passage in the batch is a negative, plus the pair's mined ones. The no-duplicates batch
sampler keeps a passage from being both a positive and an in-batch negative.

The trainer scores the set's dev questions over its dev corpus during training
(InformationRetrievalEvaluator, nDCG@10), keeps the best checkpoint and stops once
`early_stopping_patience` evaluations in a row bring no new best (transformers'
EarlyStoppingCallback); the model is saved as safetensors. The dev corpus only ranks
checkpoints: the reported numbers come from `compare_retrievers` over the whole KB. The base
encoder's dev score is the baseline beside it; its dev corpus vectors come from the embedding
cache the index stage filled, so only the dev questions are encoded for it. The tuned score is
the trainer's own evaluation of the best checkpoint (in the training precision), not a second
one. Training runs in
`precision.train_retriever` (the trainer's bf16 autocast, or fp32). Checkpoints carry the full
training state under `paths.checkpoints_dir`, so a killed run resumes on the next `dvc repro`
(`finetune_retriever.resume`).

Outputs in `paths.retriever_dir`: model/ (a SentenceTransformer folder), train_metrics.json
(pair counts, dev scores, training seconds), positives.json (the doc ids training saw as
positives: the complement defines the unseen-doc evaluation subset).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import EarlyStoppingCallback

from tasks.lib.core.checkpoints import Checkpoints, run_key
from tasks.lib.core.config import FinetuneRetrieverParams, Params, load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json
from tasks.lib.core.precision import Precision, resolve_precision
from tasks.lib.core.progress import show_training_progress
from tasks.lib.core.tracking import stage_run
from tasks.lib.core.training_curves import MlflowCurves
from tasks.lib.retrieval.embedding_cache import EmbeddingCache, embed_with_cache
from tasks.lib.retrieval.encoder import (
    Embedder,
    encode_precision,
    encoder_fingerprint,
    load_encoder,
)
from tasks.lib.retrieval.training_set import (
    RetrieverTrainingSet,
    pair_counts,
    read_training_set,
)

STAGE = "finetune_retriever"
EVALUATOR_NAME = "dev"
DEV_SCORE = f"{EVALUATOR_NAME}_cosine_"  # the evaluator's key prefix (the trainer adds eval_)
BEST_METRIC = f"eval_{DEV_SCORE}ndcg@10"


def training_dataset(training_set: RetrieverTrainingSet) -> Dataset:
    """Columns anchor, positive, negative_1..n: the layout MNRL reads (every column after the
    anchor is a candidate, the first one the answer)."""
    pairs = training_set.pairs
    columns: dict[str, list[str]] = {
        "anchor": [p.query for p in pairs],
        "positive": [p.positive.text for p in pairs],
    }
    for i in range(len(pairs[0].negatives)):
        columns[f"negative_{i + 1}"] = [p.negatives[i].text for p in pairs]
    return Dataset.from_dict(columns)


def dev_evaluator(training_set: RetrieverTrainingSet) -> InformationRetrievalEvaluator:
    """nDCG@10 (the checkpoint criterion) and recall@10 over the dev corpus, cosine scores."""
    queries = training_set.dev_queries
    return InformationRetrievalEvaluator(
        queries={q.id: q.question for q in queries},
        corpus={p.id: p.text for p in training_set.dev_corpus},
        relevant_docs={q.id: set(q.relevant) for q in queries},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        main_score_function="cosine",
        name=EVALUATOR_NAME,
        write_csv=False,
        batch_size=64,
    )


def training_arguments(
    params: FinetuneRetrieverParams, precision: Precision, checkpoints: Checkpoints
) -> SentenceTransformerTrainingArguments:
    """Dev nDCG@10 and a checkpoint every `eval_steps` (or epoch); the best checkpoint is
    reloaded at the end and early stopping compares against it. Callback states are restored on
    resume, so a resumed run goes on counting evaluations without a new best where the killed
    one was."""
    schedule: dict[str, Any] = (
        {"eval_strategy": "steps", "eval_steps": params.eval_steps, "save_steps": params.eval_steps}
        if params.eval_steps
        else {"eval_strategy": "epoch"}
    )
    schedule["save_strategy"] = schedule["eval_strategy"]
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints.run_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a share of all steps
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        load_best_model_at_end=True,
        metric_for_best_model=BEST_METRIC,
        greater_is_better=True,
        save_total_limit=2,  # the best and the latest (to resume from)
        restore_callback_states_from_checkpoint=True,
        logging_steps=5,
        bf16=precision == "bf16",
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **schedule,
    )


def dev_scores(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """The dev metrics under `prefix` (an evaluator's result or a trainer log entry), by name."""
    return {k.removeprefix(prefix): round(v, 4) for k, v in metrics.items() if k.startswith(prefix)}


def train_encoder(
    model: SentenceTransformer,
    dataset: Dataset,
    evaluator: InformationRetrievalEvaluator,
    params: FinetuneRetrieverParams,
    precision: Precision,
    checkpoints: Checkpoints,
) -> dict[str, Any]:
    """Configure and run the library's trainer, resuming from `checkpoints` if it holds one;
    the best dev checkpoint ends up in `model`."""
    loss = (
        CachedMultipleNegativesRankingLoss(model, mini_batch_size=params.cached_mini_batch)
        if params.loss == "cached_mnrl"
        else MultipleNegativesRankingLoss(model)
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(params, precision, checkpoints),
        train_dataset=dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[MlflowCurves(), EarlyStoppingCallback(params.early_stopping_patience)],
    )
    show_training_progress(trainer, STAGE)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoints.resume_from)
    seconds = time.perf_counter() - started
    state = trainer.state
    evaluations = [h for h in state.log_history if BEST_METRIC in h]
    [best] = [h for h in evaluations if h["step"] == state.best_global_step]
    return {
        "train_seconds": round(seconds, 1),  # this run's, after the step it resumed from
        "steps": state.global_step,
        "max_steps": state.max_steps,  # more than steps: early stopping ended the run
        "resumed_from_step": checkpoints.resumed_step,
        "best_checkpoint": Path(state.best_model_checkpoint or "").name,
        "best_dev_ndcg@10": state.best_metric,
        "dev_tuned": dev_scores(best, f"eval_{DEV_SCORE}"),
        "dev_history": [
            {"step": h["step"], "epoch": round(h["epoch"], 2), "dev_ndcg@10": h[BEST_METRIC]}
            for h in evaluations
        ],
        "final_train_loss": next(
            (h["loss"] for h in reversed(state.log_history) if "loss" in h), None
        ),
    }


def base_dev_scores(
    evaluator: InformationRetrievalEvaluator,
    embedder: Embedder,
    training_set: RetrieverTrainingSet,
    cache_dir: Path,
) -> dict[str, float]:
    """The base encoder's dev scores. The index stage embedded the whole KB with it through the
    embedding cache (in `precision.encode`), so the dev corpus vectors are read from there (a
    missing one is embedded and cached) and only the dev questions go through the encoder."""
    texts = [p.text for p in training_set.dev_corpus]  # the evaluator's corpus order
    with EmbeddingCache(cache_dir) as cache:
        vectors, _ = embed_with_cache(texts, embedder, cache, evaluator.batch_size, progress=False)
    corpus = torch.from_numpy(vectors)
    return dev_scores(evaluator(embedder.model, corpus_embeddings=corpus), DEV_SCORE)


def model_dir(params: Params, out_dir: Path) -> Path:
    """Where `finetune` saves the encoder in `out_dir`: `paths.retriever_model` for the stage."""
    return out_dir / params.paths.retriever_model.relative_to(params.paths.retriever_dir)


def finetune(
    params: Params,
    tune: FinetuneRetrieverParams,
    precision: Precision,
    training_set: RetrieverTrainingSet,
    out_dir: Path,
    checkpoints_dir: Path,
) -> dict[str, Any]:
    """Train the base encoder on `training_set` in `precision` and write `out_dir` (model/,
    train_metrics.json, positives.json: `paths.retriever_model` and `retriever_positives` when
    it is `paths.retriever_dir`); returns the metrics. `tune`, `out_dir` and `checkpoints_dir`
    (this training's checkpoints, removed on success) may differ from params (the ablation)."""
    torch.set_num_threads(tune.threads or os.cpu_count() or 1)
    model = load_encoder(params.index.encoder, params.project_dir)
    base_fingerprint = encoder_fingerprint(model)
    if base_fingerprint != training_set.encoder_fingerprint:
        raise InputError(
            f"finetune_retriever: the training set was mined with encoder fingerprint "
            f"{training_set.encoder_fingerprint}, but index.encoder {params.index.encoder!r} has "
            f"{base_fingerprint}: rebuild the index and the set (dvc repro retriever_training_set)"
        )
    dataset = training_dataset(training_set)
    evaluator = dev_evaluator(training_set)
    counts = pair_counts(training_set)
    negatives = len(training_set.pairs[0].negatives)
    corpus_docs = len(training_set.dev_corpus)
    print(
        f"finetune_retriever: {len(training_set.pairs)} pairs ({counts['real']} real, "
        f"{counts['synthetic']} synthetic), {negatives} hard negatives each; "
        f"dev: {len(training_set.dev_queries)} questions over {corpus_docs} docs"
    )
    embedder = Embedder(model, encode_precision(params))
    base_dev = base_dev_scores(evaluator, embedder, training_set, params.paths.embedding_cache)
    key = run_key(
        base_fingerprint,
        training_set.model_dump(mode="json"),
        tune.model_dump(mode="json", exclude={"resume"}),
        precision,  # a bf16 run's checkpoint never resumes in fp32, nor the reverse
    )
    checkpoints = Checkpoints.open(STAGE, checkpoints_dir, key, tune.resume)

    with atomic_path(out_dir) as tmp:
        result = train_encoder(model, dataset, evaluator, tune, precision, checkpoints)
        model.save_pretrained(str(model_dir(params, tmp)), safe_serialization=True)
        metrics = {
            "pairs": counts,
            "precision": precision,
            "dev_corpus_docs": corpus_docs,
            "dev_base": base_dev,
            **result,
            "base_fingerprint": base_fingerprint,
            "tuned_fingerprint": encoder_fingerprint(model),
        }
        write_json(tmp / "train_metrics.json", metrics)
        positives = params.paths.retriever_positives.relative_to(params.paths.retriever_dir)
        write_json(tmp / positives, sorted({p.positive.id for p in training_set.pairs}))
    checkpoints.finish()
    steps = f"{result['steps']} steps"
    if result["steps"] < result["max_steps"]:
        steps += f" (stopped early, of {result['max_steps']})"
    print(
        f"finetune_retriever: trained {steps} in {precision} in {result['train_seconds']:.0f} s; "
        f"dev nDCG@10 over the dev corpus: base {base_dev['ndcg@10']:.3f} -> tuned "
        f"{result['dev_tuned']['ndcg@10']:.3f} ({result['best_checkpoint']}); saved "
        f"{model_dir(params, out_dir)}"
    )
    return metrics


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    out_dir = params.paths.retriever_dir
    with stage_run(STAGE, params) as run:
        precision = resolve_precision(params.precision.train_retriever, "train_retriever")
        run.log_params({"precision.train_retriever": precision})
        training_set = read_training_set(params.paths.retriever_training_set)
        checkpoints_dir = params.paths.checkpoints_dir / STAGE
        metrics = finetune(
            params, params.finetune_retriever, precision, training_set, out_dir, checkpoints_dir
        )
        run.log_metrics({k: v for k, v in metrics.items() if k != "dev_history"})


if __name__ == "__main__":
    run_stage(main)
