"""Ablation of retriever fine-tuning: which training signal buys what, on the same split.

Variants (everything else from params.yaml's `finetune_retriever`):
  in_batch         real train pairs, in-batch negatives only
  mined            + mined hard negatives (negatives.count from params, at least 1)
  mined_synthetic  + synthetic doc-to-query pairs (synthesize_queries' output)
  synthetic_only   synthetic pairs and mined negatives, no real label: a KB without a QA set

Each variant is trained with `finetune_retriever.finetune`, its encoder indexes the whole KB,
and its dense retrieval is scored on the real test questions, whole and on the unseen-doc
subset (gold docs never a gold doc of the real train split: the same questions for every
row), with a paired bootstrap interval of the difference to the base encoder.

    python bench/ablation_retriever.py [--variants in_batch mined ...] [--keep-models]

Needs the base index and synthesize_queries' output (dvc repro synthesize_queries).
Takes ~5-8 minutes a variant on 2 busy cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tasks.compare_retrievers import unseen_doc_subset
from tasks.embedding_cache import EmbeddingCache
from tasks.encoder import load_encoder
from tasks.finetune_retriever import MODEL_DIR, finetune
from tasks.index import build_index
from tasks.io import write_json
from tasks.params import FinetuneRetrieverParams, Params, load_params, resolve
from tasks.records import QARecord, read_docs, read_qa_splits
from tasks.retrieval_metrics import bootstrap_interval, per_query_scores, qrels_from, run_from
from tasks.retriever import Fusion, Retriever

METRICS = ["ndcg@10", "recall@10"]
RESAMPLES, CONFIDENCE, SEED = 2000, 0.95, 0


def variants(tune: FinetuneRetrieverParams) -> dict[str, FinetuneRetrieverParams]:
    count = max(1, tune.negatives.count)
    mined = tune.negatives.model_copy(update={"count": count})
    none = tune.negatives.model_copy(update={"count": 0})
    return {
        "in_batch": tune.model_copy(
            update={"use_real": True, "use_synthetic": False, "negatives": none}
        ),
        "mined": tune.model_copy(
            update={"use_real": True, "use_synthetic": False, "negatives": mined}
        ),
        "mined_synthetic": tune.model_copy(
            update={"use_real": True, "use_synthetic": True, "negatives": mined}
        ),
        "synthetic_only": tune.model_copy(
            update={"use_real": False, "use_synthetic": True, "negatives": mined}
        ),
    }


def dense_test_rankings(
    params_file: Path, params: Params, model_dir: Path | None, questions: list[str]
) -> list[list[str]]:
    """Top-10 doc ids by dense search: the base index, or a scratch index of `model_dir`."""
    fusion = Fusion.from_params(params.retrieval)
    if model_dir is None:
        retriever = Retriever.load(
            resolve(params_file, params.paths.index_dir), fusion, base=params_file.parent
        )
        return [[h.id for h in hits] for hits in retriever.search(questions, 10, "dense")]
    docs = read_docs(resolve(params_file, params.paths.retrieval_docs))
    model = load_encoder(str(model_dir), params_file.parent)
    with tempfile.TemporaryDirectory() as scratch, EmbeddingCache(Path(scratch)) as cache:
        build_index(docs, model, str(model_dir), cache, params.index, Path(scratch) / "index")
        retriever = Retriever.load(Path(scratch) / "index", fusion, encoder=model)
        return [[h.id for h in hits] for hits in retriever.search(questions, 10, "dense")]


def scores_of(records: list[QARecord], ranked: list[list[str]]) -> dict[str, np.ndarray]:
    return per_query_scores(qrels_from(records), run_from(records, ranked), METRICS)


def cell(values: np.ndarray, signed: bool = False) -> str:
    low, high = bootstrap_interval(values, RESAMPLES, CONFIDENCE, SEED)
    form = "+.3f" if signed else ".3f"
    return f"{values.mean():{form}} [{low:{form}}, {high:{form}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--work", type=Path, default=Path("data/bench/ablation_retriever"))
    parser.add_argument("--keep-models", action="store_true")
    args = parser.parse_args()

    params = load_params(args.params)
    splits = read_qa_splits(resolve(args.params, params.paths.retrieval_qa_dir))
    test = splits["test"]
    unseen = unseen_doc_subset(test, {d for r in splits["train"] for d in r.doc_ids})
    unseen_rows = [i for i, r in enumerate(test) if r in unseen]
    questions = [r.question for r in test]
    chosen = variants(params.finetune_retriever)
    names = args.variants or list(chosen)

    base = scores_of(test, dense_test_rankings(args.params, params, None, questions))
    rows: list[dict[str, Any]] = []
    for name in names:
        out = args.work / name
        metrics = finetune(args.params, params, chosen[name], out)
        ranked = dense_test_rankings(args.params, params, out / MODEL_DIR, questions)
        tuned = scores_of(test, ranked)
        row = {
            "variant": name,
            "pairs": metrics["pairs"],
            "train_seconds": metrics["train_seconds"],
        }
        for metric in METRICS:
            gain = tuned[metric] - base[metric]
            row[metric] = cell(tuned[metric])
            row[f"{metric} - base"] = cell(gain, signed=True)
            row[f"unseen {metric}"] = cell(tuned[metric][unseen_rows])
            row[f"unseen {metric} - base"] = cell(gain[unseen_rows], signed=True)
        rows.append(row)
        print(f"ablation: {row}", flush=True)
        if not args.keep_models:
            shutil.rmtree(out / MODEL_DIR)

    columns = [
        "ndcg@10",
        "ndcg@10 - base",
        "unseen ndcg@10",
        "unseen ndcg@10 - base",
        "recall@10",
        "recall@10 - base",
        "unseen recall@10",
        "unseen recall@10 - base",
    ]
    lines = [
        f"test: {len(test)} questions, unseen-doc subset {len(unseen)}; mean "
        f"[{CONFIDENCE:.0%} bootstrap]; '- base' columns are paired",
        "",
        "| variant | pairs (real+syn) | train s | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 3) + "|",
        "| base | - | - | "
        + " | ".join(
            cell(base[c.split()[-1]][unseen_rows] if c.startswith("unseen") else base[c])
            if "base" not in c
            else "-"
            for c in columns
        )
        + " |",
    ]
    for row in rows:
        pairs = f"{row['pairs']['real']}+{row['pairs']['synthetic']}"
        lines.append(
            f"| {row['variant']} | {pairs} | {row['train_seconds']:.0f} | "
            + " | ".join(row[c] for c in columns)
            + " |"
        )
    table = "\n".join(lines) + "\n"
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "ablation.md").write_text(table, encoding="utf-8")
    write_json(args.work / "ablation.json", rows)
    print(table)


if __name__ == "__main__":
    main()
