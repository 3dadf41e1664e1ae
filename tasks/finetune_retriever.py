"""Stage `finetune_retriever`: adapt the base encoder to the KB with its own questions.

Training pairs are (question, gold passage) from the real train split and, when enabled, from
`synthesize_queries`. The loss is MultipleNegativesRankingLoss (or its cached variant): every
other passage in the batch is a negative, plus `negatives.count` hard negatives per pair mined
from the current (base encoder) index over the whole KB. A mined candidate is skipped when it is
a gold doc of the question (all of them, for a question with several) or scores within `margin`
of the gold, since such a near-tie is more often an unlabelled answer than a wrong one. The
no-duplicates batch sampler keeps a passage from being both a positive and an in-batch negative.

The trainer scores the dev split during training (InformationRetrievalEvaluator, nDCG@10) and
keeps the best checkpoint; the model is saved as safetensors. Encoding the whole KB at every
evaluation is slow on a CPU and grows with the KB, so by default the dev corpus is a fixed
subsample: the dev gold docs, each dev question's top base-encoder candidates (the docs that can
actually outrank the gold) and random KB docs up to `eval_corpus`. It only ranks checkpoints;
the reported numbers come from `compare_retrievers` over the whole KB.

Outputs in `paths.retriever_dir`: model/ (a SentenceTransformer folder), train_metrics.json
(data counts, mining statistics, dev scores, training seconds), positives.json (the doc ids
training saw as positives: the complement defines the unseen-doc evaluation subset).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

from tasks.lib.core.config import (
    FinetuneRetrieverParams,
    HardNegativesParams,
    Params,
    load_params,
)
from tasks.lib.core.io import InputError, atomic_path, read_text, run_stage, write_json
from tasks.lib.core.records import QARecord, read_docs, read_qa, read_qa_splits
from tasks.lib.core.tracking import stage_run
from tasks.lib.core.training_curves import MlflowCurves
from tasks.lib.retrieval.encoder import encoder_fingerprint, load_encoder
from tasks.lib.retrieval.index_store import passage_text
from tasks.lib.retrieval.retriever import Fusion, Retriever

EVALUATOR_NAME = "dev"
_EVAL_HARD_CANDIDATES = 10  # per dev question, from the base encoder, in the dev subsample
# (questions, depth) -> per question (doc id, score), best first
Search = Callable[[list[str], int], list[list[tuple[str, float]]]]


@dataclass(frozen=True)
class TrainingPair:
    """One (question, gold doc) pair; `gold` is every gold doc of the question."""

    query: str
    doc_id: str
    gold: frozenset[str]
    source: str  # "real" or "synthetic"


def training_pairs(records: Sequence[QARecord], known: set[str], source: str) -> list[TrainingPair]:
    """One pair per gold doc present in the KB (a question with two gold docs gives two)."""
    pairs = []
    for record in records:
        gold = frozenset(d for d in record.doc_ids if d in known)
        pairs += [
            TrainingPair(record.question, d, gold, source) for d in record.doc_ids if d in gold
        ]
    return pairs


def dense_search(retriever: Retriever) -> Search:
    """The base index's dense search as (doc id, cosine) lists, best first."""
    ids = [doc["id"] for doc in retriever.docs]

    def search(queries: list[str], depth: int) -> list[list[tuple[str, float]]]:
        return [[(ids[r], s) for r, s in ranked] for ranked in retriever.dense(queries, depth)]

    return search


def mine_hard_negatives(
    search: Search,
    pairs: Sequence[TrainingPair],
    all_ids: Sequence[str],
    params: HardNegativesParams,
    seed: int,
) -> tuple[list[list[str]], dict[str, int]]:
    """`params.count` negative doc ids per pair, from the base index's ranking of its question.

    Candidates are ranks range_min+1 .. range_max once the question's gold docs (all of them,
    by id) are removed; a candidate must score below the lowest gold score by the margin
    (sentence-transformers' `mine_hard_negatives` rule; strictly below, so a copy of a gold doc
    under another id never passes). A gold doc outside the searched window scores below every
    candidate, so then none passes, as in the library. Pairs left short get random KB docs, so
    no real label is lost. The index is searched rather than the KB re-encoded: that costs one
    query batch instead of encoding every passage again after each KB change.
    """
    gold_of: dict[str, set[str]] = defaultdict(set)
    for pair in pairs:
        gold_of[pair.query] |= pair.gold
    queries = list(gold_of)
    depth = params.range_max + max(len(g) for g in gold_of.values())
    mined: dict[str, list[str]] = {}
    stats = {"mined": 0, "random_filled": 0, "skipped_by_margin": 0}
    for query, ranked in zip(queries, search(queries, depth), strict=True):
        gold = gold_of[query]
        gold_scores = [score for doc_id, score in ranked if doc_id in gold]
        window = [(d, s) for d, s in ranked if d not in gold][params.range_min : params.range_max]
        passing = []
        if len(gold_scores) == len(gold):  # else a gold doc scores below the whole window
            floor = min(gold_scores)
            gap = params.margin * (abs(floor) if params.margin_type == "relative" else 1.0)
            passing = [d for d, s in window if s < floor - gap]
        stats["skipped_by_margin"] += len(window) - len(passing)
        mined[query] = passing[: params.count]
    rng = random.Random(seed)
    negatives = []
    for pair in pairs:
        chosen = list(mined[pair.query])
        stats["mined"] += len(chosen)
        while len(chosen) < params.count:
            candidate = rng.choice(all_ids)
            if candidate not in gold_of[pair.query] and candidate not in chosen:
                chosen.append(candidate)
                stats["random_filled"] += 1
        negatives.append(chosen)
    return negatives, stats


def training_dataset(
    pairs: Sequence[TrainingPair], negatives: Sequence[Sequence[str]], passages: dict[str, str]
) -> Dataset:
    """Columns anchor, positive, negative_1..n: the layout MNRL reads (every column after the
    anchor is a candidate, the first one the answer)."""
    columns: dict[str, list[str]] = {
        "anchor": [p.query for p in pairs],
        "positive": [passages[p.doc_id] for p in pairs],
    }
    for i in range(len(negatives[0]) if negatives else 0):
        columns[f"negative_{i + 1}"] = [passages[n[i]] for n in negatives]
    return Dataset.from_dict(columns)


def evaluation_corpus(
    dev: Sequence[QARecord],
    candidates: Sequence[Sequence[str]],
    doc_ids: Sequence[str],
    size: int,
    seed: int,
) -> list[str]:
    """Doc ids of the dev corpus: gold docs, the base encoder's `candidates`, random fill to
    `size` (0: every doc). Sorted, so a rerun builds the same corpus."""
    if size == 0 or size >= len(doc_ids):
        return sorted(doc_ids)
    chosen = {d for r in dev for d in r.doc_ids} | {d for ranked in candidates for d in ranked}
    rest = sorted(set(doc_ids) - chosen)
    fill = max(0, size - len(chosen))
    chosen |= set(random.Random(seed).sample(rest, min(fill, len(rest))))
    return sorted(chosen)


def dev_evaluator(
    dev: Sequence[QARecord], corpus_ids: Sequence[str], passages: dict[str, str]
) -> InformationRetrievalEvaluator:
    """nDCG@10 (the checkpoint criterion) and recall@10 over the dev corpus, cosine scores."""
    return InformationRetrievalEvaluator(
        queries={r.id: r.question for r in dev},
        corpus={d: passages[d] for d in corpus_ids},
        relevant_docs={r.id: set(r.doc_ids) & set(corpus_ids) for r in dev},
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


def train_encoder(
    model: SentenceTransformer,
    dataset: Dataset,
    evaluator: InformationRetrievalEvaluator,
    params: FinetuneRetrieverParams,
    work_dir: Path,
) -> dict[str, Any]:
    """Configure and run the library's trainer; the best dev checkpoint ends up in `model`."""
    loss = (
        CachedMultipleNegativesRankingLoss(model, mini_batch_size=params.cached_mini_batch)
        if params.loss == "cached_mnrl"
        else MultipleNegativesRankingLoss(model)
    )
    schedule: dict[str, Any] = (
        {"eval_strategy": "steps", "eval_steps": params.eval_steps, "save_steps": params.eval_steps}
        if params.eval_steps
        else {"eval_strategy": "epoch"}
    )
    schedule["save_strategy"] = schedule["eval_strategy"]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a share of all steps
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{EVALUATOR_NAME}_cosine_ndcg@10",
        greater_is_better=True,
        save_only_model=True,
        save_total_limit=2,  # the best and the latest
        logging_steps=5,
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **schedule,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[MlflowCurves()],
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    history = [
        {
            "step": h["step"],
            "epoch": round(h["epoch"], 2),
            "dev_ndcg@10": h[args.metric_for_best_model],
        }
        for h in trainer.state.log_history
        if args.metric_for_best_model in h
    ]
    return {
        "train_seconds": round(seconds, 1),
        "steps": trainer.state.global_step,
        "best_checkpoint": Path(trainer.state.best_model_checkpoint or "").name,
        "best_dev_ndcg@10": trainer.state.best_metric,
        "dev_history": history,
        "final_train_loss": next(
            (h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None
        ),
    }


def dev_scores(evaluator: InformationRetrievalEvaluator, model: SentenceTransformer) -> dict:
    prefix = f"{EVALUATOR_NAME}_cosine_"
    return {
        k.removeprefix(prefix): round(v, 4)
        for k, v in evaluator(model).items()
        if k.startswith(prefix)
    }


def model_dir(params: Params, out_dir: Path) -> Path:
    """Where `finetune` saves the encoder in `out_dir`: `paths.retriever_model` for the stage."""
    return out_dir / params.paths.retriever_model.relative_to(params.paths.retriever_dir)


def finetune(params: Params, tune: FinetuneRetrieverParams, out_dir: Path) -> dict[str, Any]:
    """Build the pairs, mine, train and write `out_dir` (model/, train_metrics.json,
    positives.json: `paths.retriever_model` and `retriever_positives` when it is
    `paths.retriever_dir`); returns the metrics. `tune` and `out_dir` may differ from params
    (the ablation)."""
    started = time.perf_counter()
    torch.set_num_threads(tune.threads or os.cpu_count() or 1)
    docs = read_docs(params.paths.retrieval_docs)
    splits = read_qa_splits(params.paths.retrieval_qa_dir)
    passages = {d.id: passage_text(d, params.index.include_title) for d in docs}
    model = load_encoder(params.index.encoder, params.project_dir)
    # Loading the base index with this model checks that it is the encoder that built it.
    base = Retriever.load(
        params.paths.index_dir,
        Fusion.from_params(params.retrieval),
        encoder=model,
    )
    base_fingerprint = encoder_fingerprint(model)

    pairs = training_pairs(splits["train"], set(passages), "real") if tune.use_real else []
    if tune.use_synthetic:
        synthetic_file = params.paths.synthetic_queries
        # Empty when synthesize_queries kept no question (a weak generator, a small KB).
        synthetic = read_qa(synthetic_file) if read_text(synthetic_file).strip() else []
        pairs += training_pairs(synthetic, set(passages), "synthetic")
    if not pairs:
        raise InputError("finetune_retriever: no training pair has its gold doc in the KB")
    mining: dict[str, int] = {}
    negatives: list[list[str]] = [[] for _ in pairs]
    if tune.negatives.count:
        negatives, mining = mine_hard_negatives(
            dense_search(base), pairs, list(passages), tune.negatives, tune.seed
        )
    dataset = training_dataset(pairs, negatives, passages)

    dev = [r for r in splits["dev"] if set(r.doc_ids) & set(passages)]
    hard = [
        [hit.id for hit in hits]
        for hits in base.search([r.question for r in dev], k=_EVAL_HARD_CANDIDATES, mode="dense")
    ]
    corpus_ids = evaluation_corpus(dev, hard, list(passages), tune.eval_corpus, tune.seed)
    evaluator = dev_evaluator(dev, corpus_ids, passages)
    counts = {source: sum(p.source == source for p in pairs) for source in ("real", "synthetic")}
    print(
        f"finetune_retriever: {len(pairs)} pairs ({counts['real']} real, "
        f"{counts['synthetic']} synthetic), {tune.negatives.count} mined negatives each "
        f"{mining or ''}; dev: {len(dev)} questions over {len(corpus_ids)} docs"
    )
    base_dev = dev_scores(evaluator, model)

    with atomic_path(out_dir) as tmp:
        result = train_encoder(model, dataset, evaluator, tune, tmp / "checkpoints")
        shutil.rmtree(tmp / "checkpoints")
        model.save_pretrained(str(model_dir(params, tmp)), safe_serialization=True)
        metrics = {
            "pairs": counts,
            "mining": mining,
            "dev_corpus_docs": len(corpus_ids),
            "dev_base": base_dev,
            "dev_tuned": dev_scores(evaluator, model),
            **result,
            "stage_seconds": round(time.perf_counter() - started, 1),
            "base_fingerprint": base_fingerprint,
            "tuned_fingerprint": encoder_fingerprint(model),
        }
        write_json(tmp / "train_metrics.json", metrics)
        positives = params.paths.retriever_positives.relative_to(params.paths.retriever_dir)
        write_json(tmp / positives, sorted({p.doc_id for p in pairs}))
    print(
        f"finetune_retriever: trained {result['steps']} steps in {result['train_seconds']:.0f} s "
        f"(stage {metrics['stage_seconds']:.0f} s); dev nDCG@10 over the dev corpus: base "
        f"{base_dev['ndcg@10']:.3f} -> tuned {metrics['dev_tuned']['ndcg@10']:.3f} "
        f"({result['best_checkpoint']}); saved {model_dir(params, out_dir)}"
    )
    return metrics


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    out_dir = params.paths.retriever_dir
    with stage_run("finetune_retriever", params) as run:
        metrics = finetune(params, params.finetune_retriever, out_dir)
        run.log_metrics({k: v for k, v in metrics.items() if k != "dev_history"})


if __name__ == "__main__":
    run_stage(main)
