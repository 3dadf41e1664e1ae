"""What each CPU number format buys and costs: fp32, bf16 autocast and int8 dynamic quantization
(`tasks/lib/core/precision.py`) on the pipeline's three heavy uses, every speed a ratio against
fp32 measured in the same run, its quality figure beside it:

(encode)   the index encoder (`index.encoder`) embedding N sampled KB docs in fp32, bf16 and int8:
           docs/s; the embeddings' mean and min cosine to fp32; and dense test nDCG@10 with each
           format's doc and question embeddings (exact cosine search over the whole KB, or over
           the test gold docs plus a seeded sample with --corpus), with its paired bootstrap
           difference to fp32 (`compare_retrievers`' resamples, confidence and seed).
(generate) the base generator (`paths.generator_base_dir`) answering M sampled test questions
           greedily in fp32 and bf16, with evaluate_generation's prompts and retrieved passages:
           new tokens/s (each answer re-tokenized), seconds per question, answer token F1 with its
           paired difference to fp32, and the share of answers identical to fp32's.
(train)    S sentence-transformers trainer steps (MultipleNegativesRankingLoss, the stage's batch
           size, learning rate and sampler) on the first pairs of the retriever training set,
           with the trainer's bf16 off and on: steps/s (the first step, a warm-up, untimed) and
           the training loss of the last step (both runs see the same batches).

Rounds alternate the formats, each round starting with the next one, so that load from other
processes hits all formats alike; each speed is the median over rounds and each ratio the median
of the rounds' own ratios to fp32. On a CPU without bf16 units (`cpu_has_bf16`) torch emulates
bf16, slower than fp32, so bf16 is skipped unless --force-bf16.

    python -m bench.bench_precision [--docs 1000] [--corpus 0] [--questions 64] [--steps 8]
                                    [--repeats 2] [--only encode generate train] [--force-bf16]
                                    [--params params.yaml]

Needs the pipeline's outputs (`dvc repro`): dedup's KB, kb_questions' QA splits (encode),
prepare_generator and retrieve_contexts (generate), retriever_training_set (train).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from tasks.finetune_retriever import training_dataset
from tasks.lib.core.config import IndexParams, Params, load_params
from tasks.lib.core.io import InputError, reported_failures
from tasks.lib.core.precision import Precision, autocast, cpu_has_bf16, quantized_int8
from tasks.lib.core.records import Doc, QARecord, qa_split_label, read_docs, read_qa
from tasks.lib.core.report import interval_cell, markdown_table
from tasks.lib.core.stats import paired_difference
from tasks.lib.generation.data import generation_items, read_contexts
from tasks.lib.generation.generator import (
    Decoding,
    GenerationItem,
    generate_answers,
    item_prompt,
)
from tasks.lib.generation.loader import load_generator
from tasks.lib.generation.metrics import token_f1
from tasks.lib.kb.questions import generator_task
from tasks.lib.retrieval.encoder import load_encoder
from tasks.lib.retrieval.index_store import passage_text
from tasks.lib.retrieval.metrics import score_rankings
from tasks.lib.retrieval.training_set import read_training_set

FORMATS: dict[str, tuple[Precision, ...]] = {
    "encode": ("fp32", "bf16", "int8"),
    "generate": ("fp32", "bf16"),
    "train": ("fp32", "bf16"),
}
HEADER = ["use", "format", "speed (median)", "x fp32", "quality", "- fp32, paired", "agreement"]
SEED = 0  # of the doc and question samples
Rates = dict[Precision, list[float]]  # format -> its rate in each round


@dataclass(frozen=True)
class Row:
    """One line of the summary table: a use in one format."""

    use: str
    format: str
    speed: str
    ratio: str
    quality: str
    difference: str = "-"
    agreement: str = "-"


def needed(path: Path, stage: str) -> Path:
    """`path`, which a pipeline stage writes; missing, the error says how to make it."""
    if not path.exists():
        raise InputError(f"{path}: not found (stage {stage} writes it): run dvc repro first")
    return path


def available(formats: Sequence[Precision], force_bf16: bool) -> list[Precision]:
    """`formats` without bf16 on a CPU that would only emulate it (unless forced)."""
    if "bf16" in formats and not (cpu_has_bf16() or force_bf16):
        print("bench_precision: bf16 skipped: this CPU has no bf16 units (--force-bf16 runs it)")
        return [f for f in formats if f != "bf16"]
    return list(formats)


def rounds(
    formats: Sequence[Precision], repeats: int, run: Callable[[Precision], tuple[Any, float, str]]
) -> tuple[Rates, dict[Precision, Any]]:
    """`run(format)` -> (output, rate, line) for every format in each of `repeats` rounds, each
    round starting one format later; the rates per round and each format's last output."""
    rates: Rates = {f: [] for f in formats}
    outputs: dict[Precision, Any] = {}
    for round_ in range(repeats):
        start = round_ % len(formats)
        for fmt in [*formats[start:], *formats[:start]]:
            outputs[fmt], rate, line = run(fmt)
            rates[fmt].append(rate)
            print(f"  round {round_ + 1}: {fmt} {line}", flush=True)
    return rates, outputs


def speed_cells(rates: Rates, fmt: Precision, unit: str, spec: str = ".1f") -> tuple[str, str]:
    """The median rate, and the median over rounds of the rate's ratio to that round's fp32."""
    ratios = [rate / base for rate, base in zip(rates[fmt], rates["fp32"], strict=True)]
    return f"{statistics.median(rates[fmt]):{spec}} {unit}", f"{statistics.median(ratios):.2f}x"


def difference_cell(
    scores: np.ndarray, base: np.ndarray, bootstrap: tuple[int, float, int], percent: bool = False
) -> str:
    """`mean [low, high]` of the paired difference `scores - base` (resamples, confidence,
    seed), in percent points when `percent`."""
    interval = paired_difference(scores, base, *bootstrap)
    return interval_cell(interval, "+.1f", 100) if percent else interval_cell(interval, "+.3f")


# --- encode -----------------------------------------------------------------------------------


def embed(
    model: SentenceTransformer, fmt: Precision, texts: list[str], batch: int, query: bool = False
) -> np.ndarray:
    """L2-normalized float32 embeddings of `texts` in format `fmt` (queries with the model's
    query prompt, as the retriever encodes them)."""
    encode = model.encode_query if query else model.encode
    with autocast(fmt):
        vectors = np.asarray(encode(texts, batch_size=batch, convert_to_numpy=True), np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)


def quality_corpus(docs: list[Doc], test: list[QARecord], size: int) -> tuple[list[Doc], str]:
    """The whole KB (`size` 0), or the test gold docs plus a seeded sample of the others up to
    `size`; and a line saying which."""
    if size == 0 or size >= len(docs):
        return docs, f"the whole KB ({len(docs)} docs)"
    gold = {d for r in test for d in r.doc_ids}
    others = [d for d in docs if d.id not in gold]
    fill = random.Random(SEED).sample(others, max(0, min(len(others), size - len(gold))))
    corpus = [d for d in docs if d.id in gold] + fill
    return corpus, (
        f"{len(corpus)} docs: the {len(corpus) - len(fill)} test gold docs + {len(fill)} sampled "
        f"(not the whole KB of {len(docs)}: nDCG runs higher than over the KB)"
    )


def test_ndcg(
    model: SentenceTransformer,
    fmt: Precision,
    corpus: list[Doc],
    test: list[QARecord],
    index: IndexParams,
) -> np.ndarray:
    """Per-question nDCG@10 (question-id order) of exact cosine search, docs and questions
    embedded in format `fmt`."""
    texts = [passage_text(doc, index.include_title) for doc in corpus]
    docs = embed(model, fmt, texts, index.batch_size)
    questions = embed(model, fmt, [r.question for r in test], index.batch_size, query=True)
    top = np.argsort(-(questions @ docs.T), axis=1, kind="stable")[:, :10]
    ranked = [[corpus[i].id for i in row] for row in top]
    return score_rankings(test, ranked, ["ndcg@10"])["ndcg@10"]


def bench_encode(
    params: Params, n_docs: int, corpus_size: int, repeats: int, formats: list[Precision]
) -> list[Row]:
    paths, index = params.paths, params.index
    torch.set_num_threads(index.threads or os.cpu_count() or 1)
    docs = read_docs(needed(paths.retrieval_docs, "dedup"))
    test = read_qa(needed(paths.retrieval_qa_dir / "test.jsonl", "kb_questions"))
    sample = random.Random(SEED).sample(docs, n_docs) if 0 < n_docs < len(docs) else docs
    texts = [passage_text(doc, index.include_title) for doc in sample]
    base = load_encoder(index.encoder, params.project_dir)
    models = {f: quantized_int8(base) if f == "int8" else base for f in formats}
    print(
        f"(encode) {index.encoder}: {len(texts)} docs, batch {index.batch_size}, "
        f"{torch.get_num_threads()} threads, {repeats} rounds"
    )
    for fmt, model in models.items():  # warm-up
        embed(model, fmt, texts[: index.batch_size], index.batch_size)

    def run(fmt: Precision) -> tuple[np.ndarray, float, str]:
        started = time.perf_counter()
        vectors = embed(models[fmt], fmt, texts, index.batch_size)
        rate = len(texts) / (time.perf_counter() - started)
        return vectors, rate, f"{rate:7.1f} docs/s"

    rates, vectors = rounds(formats, repeats, run)
    corpus, corpus_line = quality_corpus(docs, test, corpus_size)
    test_line = qa_split_label(paths.retrieval_qa_dir, "test")
    print(f"(encode) dense nDCG@10 on {test_line}, exact search over {corpus_line}")
    ndcg = {}
    for fmt in formats:
        ndcg[fmt] = test_ndcg(models[fmt], fmt, corpus, test, index)
        print(f"  {fmt}: nDCG@10 {ndcg[fmt].mean():.4f}", flush=True)

    compare = params.compare_retrievers
    bootstrap = (compare.bootstrap_resamples, compare.confidence, compare.seed)
    rows = []
    for fmt in formats:
        cells = [*speed_cells(rates, fmt, "docs/s"), f"nDCG@10 {ndcg[fmt].mean():.3f}"]
        if fmt != "fp32":
            cosine = (vectors[fmt].astype(np.float64) * vectors["fp32"]).sum(axis=1)
            cells += [
                difference_cell(ndcg[fmt], ndcg["fp32"], bootstrap),
                f"cosine to fp32: mean {cosine.mean():.5f}, min {cosine.min():.5f}",
            ]
        rows.append(Row("encode", fmt, *cells))
    return rows


# --- generate ---------------------------------------------------------------------------------


def generation_prompts(
    params: Params, n_questions: int, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[GenerationItem], list[str]]:
    """`n_questions` sampled test questions with their retrieved passages, and their prompts,
    as evaluate_generation builds them for base + RAG."""
    paths, generator = params.paths, params.generator
    docs = {doc.id: doc for doc in read_docs(needed(paths.retrieval_docs, "dedup"))}
    records = read_qa(needed(paths.retrieval_qa_dir / "test.jsonl", "kb_questions"))
    if 0 < n_questions < len(records):
        records = random.Random(SEED).sample(records, n_questions)
    contexts = read_contexts(needed(paths.retrieved_contexts, "retrieve_contexts"))
    items = generation_items(records, generator_task, contexts, docs, generator.top_k)
    instructions, passage_tokens = generator.instructions, generator.passage_tokens
    prompts = [
        item_prompt(item, tokenizer, instructions, passage_tokens, generator.top_k)
        for item in items
    ]
    return items, prompts


def bench_generate(
    params: Params, n_questions: int, repeats: int, formats: list[Precision]
) -> list[Row]:
    paths, generator, evaluation = params.paths, params.generator, params.evaluate_generation
    model, tokenizer = load_generator(needed(paths.generator_base_dir, "prepare_generator"))
    model.eval()
    items, prompts = generation_prompts(params, n_questions, tokenizer)
    print(
        f"(generate) {paths.generator_base_dir}: {len(items)} of "
        f"{qa_split_label(paths.retrieval_qa_dir, 'test')}, top {generator.top_k} passages, "
        f"batch {evaluation.batch_size}, up to {generator.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads, {repeats} rounds"
    )

    def answer(fmt: Precision, chosen: Sequence[str]) -> list[str]:
        decoding = Decoding(generator.max_new_tokens, fmt)  # generate_answers runs the format
        return generate_answers(model, tokenizer, chosen, evaluation.batch_size, decoding)

    per_question: Rates = {f: [] for f in formats}

    def run(fmt: Precision) -> tuple[list[str], float, str]:
        started = time.perf_counter()
        answers = answer(fmt, prompts)
        seconds = time.perf_counter() - started
        per_question[fmt].append(seconds / len(prompts))
        tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
        line = f"{tokens / seconds:6.1f} new tokens/s, {per_question[fmt][-1]:.2f} s/question"
        return answers, tokens / seconds, f"{line} ({tokens} tokens)"

    for fmt in formats:  # warm-up
        answer(fmt, prompts[:2])
    rates, answers = rounds(formats, repeats, run)
    f1 = {
        f: np.array([token_f1(a, item.answers) for a, item in zip(answers[f], items, strict=True)])
        for f in formats
    }
    bootstrap = (evaluation.bootstrap_resamples, evaluation.confidence, evaluation.seed)
    rows = []
    for fmt in formats:
        speed, ratio = speed_cells(rates, fmt, "new tokens/s")
        cells = [f"{speed}, {statistics.median(per_question[fmt]):.2f} s/question", ratio]
        cells.append(f"answer F1 {100 * f1[fmt].mean():.1f} %")
        if fmt != "fp32":
            same = np.mean([a == b for a, b in zip(answers[fmt], answers["fp32"], strict=True)])
            cells += [
                difference_cell(f1[fmt], f1["fp32"], bootstrap, percent=True),
                f"{same:.0%} answers identical",
            ]
        rows.append(Row("generate", fmt, *cells))
    return rows


# --- train ------------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """The time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())


def train_steps(params: Params, dataset: Dataset, steps: int, bf16: bool) -> tuple[float, float]:
    """Steps/s after the first step, and the last step's training loss, of a fresh base
    encoder trained `steps` steps with the stage's settings and the trainer's `bf16`."""
    tune = params.finetune_retriever
    model = load_encoder(params.index.encoder, params.project_dir)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=tune.batch_size,
            learning_rate=tune.learning_rate,
            warmup_steps=tune.warmup_ratio,  # a float below 1 is a share of all steps
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            bf16=bf16,
            logging_steps=1,
            save_strategy="no",
            seed=tune.seed,
            data_seed=tune.seed,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(model),
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)  # a dict printed per step hides the rounds
        trainer.train()
    loss = next(h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h)
    return (len(clock.ends) - 1) / (clock.ends[-1] - clock.ends[0]), loss


def bench_train(params: Params, steps: int, repeats: int, formats: list[Precision]) -> list[Row]:
    tune = params.finetune_retriever
    torch.set_num_threads(tune.threads or os.cpu_count() or 1)
    path = needed(params.paths.retriever_training_set, "retriever_training_set")
    training_set = read_training_set(path)
    pairs = training_set.pairs[: steps * tune.batch_size]
    dataset = training_dataset(training_set.model_copy(update={"pairs": pairs}))
    print(
        f"(train) {params.index.encoder}: {steps} steps of batch {tune.batch_size} on "
        f"{len(pairs)} pairs ({len(pairs[0].negatives)} mined negatives each), "
        f"{torch.get_num_threads()} threads, {repeats} rounds"
    )

    def run(fmt: Precision) -> tuple[float, float, str]:
        rate, loss = train_steps(params, dataset, steps, bf16=fmt == "bf16")
        return loss, rate, f"{rate:.3f} steps/s, loss {loss:.4f}"

    rates, losses = rounds(formats, repeats, run)
    rows = []
    for fmt in formats:
        cells = [*speed_cells(rates, fmt, "steps/s", ".3f"), f"loss {losses[fmt]:.4f}"]
        if fmt != "fp32":
            cells.append(f"{losses[fmt] - losses['fp32']:+.4f}")
        rows.append(Row("train", fmt, *cells))
    return rows


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    print(
        f"bench_precision: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"CPU bf16 units: {'yes' if cpu_has_bf16() else 'no'}"
    )
    rows: list[Row] = []
    if "encode" in args.only:
        formats = available(FORMATS["encode"], args.force_bf16)
        rows += bench_encode(params, args.docs, args.corpus, args.repeats, formats)
    if "generate" in args.only:
        formats = available(FORMATS["generate"], args.force_bf16)
        rows += bench_generate(params, args.questions, args.repeats, formats)
    if "train" in args.only:
        formats = available(FORMATS["train"], args.force_bf16)
        rows += bench_train(params, args.steps, args.repeats, formats)
    print(f"bench_precision: load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(HEADER, [list(vars(row).values()) for row in rows]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--params", type=Path, default=Path("params.yaml"), help="the project's params file")
    add("--docs", type=int, default=1000, help="N: sampled KB docs timed (encode); 0: all")
    add(
        "--corpus",
        type=int,
        default=0,
        help="nDCG corpus (encode): test gold docs + sampled docs up to this many; 0: the whole KB",
    )
    add("--questions", type=int, default=64, help="M: test questions answered (generate); 0: all")
    add("--steps", type=int, default=8, help="S: trainer steps per run (train), at least 2")
    add("--repeats", type=int, default=2, help="rounds alternating the formats (medians)")
    add(
        "--only",
        nargs="+",
        choices=list(FORMATS),
        default=list(FORMATS),
        metavar="USE",
        help=f"uses to measure, of {', '.join(FORMATS)} (default: all)",
    )
    add("--force-bf16", action="store_true", help="run bf16 on a CPU without bf16 units too")
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 (the first step is untimed), --repeats at least 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    with reported_failures("bench_precision"):
        main(arguments)
