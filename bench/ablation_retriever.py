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
Takes ~8-18 minutes a variant on 2 idle cores (training, then embedding the whole KB).
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


def dense_rankings(
    params_file: Path, params: Params, model_dir: Path | None, records: list[QARecord]
) -> dict[str, list[str]]:
    """Question id -> top-10 doc ids by dense search: the base index, or a scratch index of
    `model_dir`."""
    fusion = Fusion.from_params(params.retrieval)
    questions = [r.question for r in records]
    if model_dir is None:
        retriever = Retriever.load(
            resolve(params_file, params.paths.index_dir), fusion, base=params_file.parent
        )
        hits = retriever.search(questions, 10, "dense")
    else:
        docs = read_docs(resolve(params_file, params.paths.retrieval_docs))
        model = load_encoder(str(model_dir), params_file.parent)
        with tempfile.TemporaryDirectory() as scratch, EmbeddingCache(Path(scratch)) as cache:
            build_index(docs, model, str(model_dir), cache, params.index, Path(scratch) / "index")
            retriever = Retriever.load(Path(scratch) / "index", fusion, encoder=model)
            hits = retriever.search(questions, 10, "dense")
    return {r.id: [h.id for h in found] for r, found in zip(records, hits, strict=True)}


def subset_scores(
    subsets: dict[str, list[QARecord]], ranked: dict[str, list[str]]
) -> dict[str, dict[str, np.ndarray]]:
    """subset -> metric -> per-question scores. Each subset is scored on its own (ranx orders
    scores by question id), so base and variant arrays of a subset pair question by question."""
    return {
        name: per_query_scores(
            qrels_from(records), run_from(records, [ranked[r.id] for r in records]), METRICS
        )
        for name, records in subsets.items()
    }


def cell(values: np.ndarray, signed: bool = False) -> str:
    low, high = bootstrap_interval(values, RESAMPLES, CONFIDENCE, SEED)
    form = "+.3f" if signed else ".3f"
    return f"{values.mean():{form}} [{low:{form}}, {high:{form}}]"


def columns_of(subsets: dict[str, list[QARecord]]) -> list[str]:
    return [
        f"{subset} {metric}{suffix}"
        for metric in METRICS
        for subset in subsets
        for suffix in ("", " - base")
    ]


def table(subsets: dict[str, list[QARecord]], base: dict[str, Any], rows: list[dict]) -> str:
    columns = columns_of(subsets)
    base_cells = [
        "-" if column.endswith(" - base") else cell(base[column.split()[0]][column.split()[1]])
        for column in columns
    ]
    sizes = ", ".join(f"{name} {len(records)}" for name, records in subsets.items())
    lines = [
        f"questions: {sizes}; mean [{CONFIDENCE:.0%} bootstrap]; '- base' columns are paired",
        "",
        "| variant | pairs (real+syn) | train s | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 3) + "|",
        "| base | - | - | " + " | ".join(base_cells) + " |",
    ]
    for row in rows:
        pairs = f"{row['pairs']['real']}+{row['pairs']['synthetic']}"
        lines.append(
            f"| {row['variant']} | {pairs} | {row['train_seconds']:.0f} | "
            + " | ".join(row[c] for c in columns)
            + " |"
        )
    return "\n".join(lines) + "\n"


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
    subsets = {
        "test": test,
        "unseen": unseen_doc_subset(test, {d for r in splits["train"] for d in r.doc_ids}),
    }
    chosen = variants(params.finetune_retriever)
    names = args.variants or list(chosen)

    base = subset_scores(subsets, dense_rankings(args.params, params, None, test))
    rows: list[dict[str, Any]] = []
    args.work.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = args.work / name
        metrics = finetune(args.params, params, chosen[name], out)
        tuned = subset_scores(subsets, dense_rankings(args.params, params, out / MODEL_DIR, test))
        row = {"variant": name, "pairs": metrics["pairs"]}
        row |= {"train_seconds": metrics["train_seconds"], "steps": metrics["steps"]}
        for subset, by_metric in tuned.items():
            for metric, values in by_metric.items():
                row[f"{subset} {metric}"] = cell(values)
                row[f"{subset} {metric} - base"] = cell(values - base[subset][metric], signed=True)
        rows.append(row)
        print(f"ablation: {row}", flush=True)
        if not args.keep_models:
            shutil.rmtree(out / MODEL_DIR)
        # written after every variant: a long run interrupted keeps what it measured
        (args.work / "ablation.md").write_text(table(subsets, base, rows), encoding="utf-8")
        write_json(args.work / "ablation.json", rows)
    print(table(subsets, base, rows))


if __name__ == "__main__":
    main()
