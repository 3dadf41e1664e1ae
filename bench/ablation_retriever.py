"""Ablation of retriever fine-tuning: which training signal buys what, on the same split.

Variants (everything else from params.yaml's `finetune_retriever`):
  in_batch         real train pairs, in-batch negatives only
  mined            + mined hard negatives (negatives.count from params, at least 1)
  mined_synthetic  + synthetic doc-to-query pairs (synthesize_queries' output)
  synthetic_only   synthetic pairs and mined negatives, no real label: a KB without a QA set
  synthetic_only_in_batch  the same with in-batch negatives only

Each variant's training set is built in memory with `retriever_training_set.build` and trained
with `finetune_retriever.finetune`, its encoder indexes the whole KB, and its dense retrieval is
scored on the real test questions, whole and on the unseen-doc subset (gold docs never a gold
doc of the real train split: the same questions for every row), with a paired bootstrap
interval of the difference to the base encoder.

`--split reference` trains and scores on a reference split instead of ingest's: every
FanOutQA sub-question row (duplicates kept) grouped by its top-level question, so the same
sub-question can sit in train and in test. Only the real-label variants run there (synthetic
queries were sampled away from ingest's dev/test docs, not the reference's).

`--round-trip-k K` keeps only the synthetic questions whose source doc the base retriever ranks
in the top K (K below synthesize_queries' own `round_trip_k`): a stricter round-trip filter
without generating again.

    python bench/ablation_retriever.py [--variants in_batch mined ...] [--split reference]
                                       [--round-trip-k K] [--keep-models]

Rows of earlier calls with the same --split and --round-trip-k are kept (a variant run again
replaces its row), so variants can be run one call at a time.

Needs the base index and synthesize_queries' output (dvc repro synthesize_queries).
Takes ~8-18 minutes a variant on 2 idle cores (training, then embedding the whole KB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tasks.compare_retrievers import unseen_doc_subset
from tasks.finetune_retriever import finetune, model_dir
from tasks.ingest import split_by_group
from tasks.lib.core.assets import package_file
from tasks.lib.core.config import FinetuneRetrieverParams, Params, SplitParams, load_params
from tasks.lib.core.io import read_text, write_json, write_jsonl
from tasks.lib.core.precision import resolve_precision
from tasks.lib.core.records import SPLITS, QARecord, read_docs, read_qa, read_qa_splits
from tasks.lib.core.report import interval_cell, markdown_table
from tasks.lib.core.stats import bootstrap_interval
from tasks.lib.kb.sources import (
    FANOUT_FILE,
    FANOUT_PACKAGE,
    answer_strings,
    fanout_subquestions,
)
from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encode_precision, load_encoder
from tasks.lib.retrieval.index_store import build_index
from tasks.lib.retrieval.metrics import per_query_scores, qrels_from, run_from
from tasks.lib.retrieval.retriever import Fusion, Retriever, round_trip_ranks
from tasks.retriever_training_set import build

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
        "synthetic_only_in_batch": tune.model_copy(
            update={"use_real": False, "use_synthetic": True, "negatives": none}
        ),
    }


def reference_split(doc_ids: set[str]) -> dict[str, list[QARecord]]:
    """The reference split: one record per (top-level question, sub-question) whose
    evidence page is in the KB, grouped by the top-level id, 60/20/20 of the shuffled sorted
    ids with seed 0. Unlike ingest, a sub-question shared by two top-level questions stays
    twice, possibly once in train and once in test."""
    questions = json.loads(read_text(package_file(FANOUT_PACKAGE, FANOUT_FILE)))
    records = [
        QARecord(
            id=f"{top['id']}/{sub['id']}",
            question=sub["question"],
            answers=answer_strings(sub["answer"]),
            doc_ids=[sub["evidence"]["title"]],
            group=top["id"],
        )
        for top in questions
        for sub in fanout_subquestions(top)
        if (sub.get("evidence") or {}).get("title") in doc_ids
    ]
    return split_by_group(records, SplitParams(train=0.6, dev=0.2, seed=0))


def on_reference_split(params: Params, params_file: Path, work: Path) -> Params:
    """Write the reference split under `work` and point the retrieval stages' QA at it."""
    docs = read_docs(params.paths.retrieval_docs)
    splits = reference_split({d.id for d in docs})
    qa_dir = (work / "reference_qa").resolve()
    qa_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_jsonl(qa_dir / f"{name}.jsonl", splits[name])
    train_questions = {r.question for r in splits["train"]}
    repeated = sum(r.question in train_questions for r in splits["test"])
    sizes = "/".join(str(len(splits[name])) for name in SPLITS)
    print(f"ablation: reference split {sizes}; {repeated} test questions also in train verbatim")
    paths = params.paths.model_copy(update={"retrieval_qa_dir": qa_dir})
    return params.model_copy(update={"paths": paths})


def with_stricter_round_trip(params: Params, params_file: Path, work: Path, k: int) -> Params:
    """Write the synthetic questions whose source doc is in the base dense top `k` under `work`
    and point the synthetic queries path at them."""
    records = read_qa(params.paths.synthetic_queries)
    retriever = Retriever.load(
        params.paths.index_dir,
        Fusion.from_params(params.retrieval),
        base=params.project_dir,
        precision=encode_precision(params),
    )
    ranks = round_trip_ranks(
        retriever, [r.question for r in records], [r.doc_ids[0] for r in records], k
    )
    kept = [r for r, rank in zip(records, ranks, strict=True) if rank is not None]
    folder = (work / f"synthetic_top{k}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    queries = folder / params.paths.synthetic_queries.name
    write_jsonl(queries, kept)
    print(f"ablation: round trip top {k}: {len(kept)} of {len(records)} synthetic questions kept")
    paths = params.paths.model_copy(
        update={"synthetic_queries_dir": folder, "synthetic_queries": queries}
    )
    return params.model_copy(update={"paths": paths})


def dense_rankings(
    params_file: Path, params: Params, model_dir: Path | None, records: list[QARecord]
) -> dict[str, list[str]]:
    """Question id -> top-10 doc ids by dense search: the base index, or a scratch index of
    `model_dir`."""
    fusion = Fusion.from_params(params.retrieval)
    questions = [r.question for r in records]
    precision = encode_precision(params)
    if model_dir is None:
        retriever = Retriever.load(
            params.paths.index_dir, fusion, base=params.project_dir, precision=precision
        )
        hits = retriever.search(questions, 10, "dense")
    else:
        docs = read_docs(params.paths.retrieval_docs)
        model = load_encoder(str(model_dir), params.project_dir)
        with tempfile.TemporaryDirectory() as scratch, EmbeddingCache(Path(scratch)) as cache:
            embedder = Embedder(model, precision)
            build_index(
                docs, embedder, str(model_dir), cache, params.index, Path(scratch) / "index"
            )
            retriever = Retriever.load(
                Path(scratch) / "index", fusion, encoder=model, precision=precision
            )
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
    interval = bootstrap_interval(values, RESAMPLES, CONFIDENCE, SEED)
    return interval_cell(interval, "+.3f" if signed else ".3f")


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
    head = f"questions: {sizes}; mean [{CONFIDENCE:.0%} bootstrap]; '- base' columns are paired"
    trained = [
        [
            row["variant"],
            f"{row['pairs']['real']}+{row['pairs']['synthetic']}",
            f"{row['train_seconds']:.0f}",
            *(row[c] for c in columns),
        ]
        for row in rows
    ]
    body = markdown_table(
        ["variant", "pairs (real+syn)", "train s", *columns],
        [["base", "-", "-", *base_cells], *trained],
    )
    return f"{head}\n\n{body}\n"


def earlier_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(read_text(path)) if path.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--split", choices=["ingest", "reference"], default="ingest")
    parser.add_argument("--round-trip-k", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep-models", action="store_true")
    args = parser.parse_args()

    strict = f"_top{args.round_trip_k}" if args.round_trip_k else ""
    work = args.work or Path("data/bench") / f"ablation_retriever_{args.split}{strict}"
    params = load_params(args.params)
    chosen = variants(params.finetune_retriever)
    if args.split == "reference":
        params = on_reference_split(params, args.params, work)
        chosen = {name: tune for name, tune in chosen.items() if not tune.use_synthetic}
    if args.round_trip_k:
        params = with_stricter_round_trip(params, args.params, work, args.round_trip_k)
    splits = read_qa_splits(params.paths.retrieval_qa_dir)
    test = splits["test"]
    subsets = {
        "test": test,
        "unseen": unseen_doc_subset(test, {d for r in splits["train"] for d in r.doc_ids}),
    }
    names = args.variants or list(chosen)
    synthetic_file = params.paths.synthetic_queries
    if any(chosen[name].use_synthetic for name in names) and not read_text(synthetic_file).strip():
        raise SystemExit(
            f"ablation: {synthetic_file} holds no question (synthesize_queries skips when "
            "finetune_retriever.use_synthetic is false): set it true, dvc repro synthesize_queries"
        )

    base = subset_scores(subsets, dense_rankings(args.params, params, None, test))
    precision = resolve_precision(params.precision.train_retriever, "train_retriever")
    work.mkdir(parents=True, exist_ok=True)
    # rows of earlier runs in this folder stay, so variants can be run one call at a time
    earlier = work / "ablation.json"
    rows = [r for r in earlier_rows(earlier) if r["variant"] not in names]
    for name in names:
        out = work / name
        training_set, _ = build(params, chosen[name], encode_precision(params))
        checkpoints = work / "checkpoints" / name
        metrics = finetune(params, chosen[name], precision, training_set, out, checkpoints)
        encoder = model_dir(params, out)
        tuned = subset_scores(subsets, dense_rankings(args.params, params, encoder, test))
        row = {"variant": name, "pairs": metrics["pairs"]}
        row |= {"train_seconds": metrics["train_seconds"], "steps": metrics["steps"]}
        for subset, by_metric in tuned.items():
            for metric, values in by_metric.items():
                row[f"{subset} {metric}"] = cell(values)
                row[f"{subset} {metric} - base"] = cell(values - base[subset][metric], signed=True)
        rows.append(row)
        print(f"ablation: {row}", flush=True)
        if not args.keep_models:
            shutil.rmtree(encoder)
        # written after every variant: a long run interrupted keeps what it measured
        (work / "ablation.md").write_text(table(subsets, base, rows), encoding="utf-8")
        write_json(work / "ablation.json", rows)
    print(table(subsets, base, rows))


if __name__ == "__main__":
    main()
