"""Training throughput of `finetune_generator` against a plain Hugging Face Trainer run.

Both runs train the same model (the prepared base generator, wrapped with the same LoRA or
full fine-tuning setup from params) on the same examples (the stage's own training items,
`generator_training_set`'s train.jsonl: real questions and KB questions with their passages),
batch size and learning rate, in this process.
The plain run is what one writes first: right padding (DataCollatorForSeq2Seq), logits over
every position, random batches, fp32. The stage adds answer-only logits, length-grouped
batches and, when `precision.train_generator` resolves to bf16, bf16 autocast. Rounds
alternate the runs so that load from other processes on a shared machine hits them alike; the
figure is the non-pad training tokens per second (dev evaluation excluded), and the ratio
stage / plain.
When the stage uses bf16, a third run (the stage in fp32) separates what bf16 gives from what
answer-only logits and length grouping give.

    python -m bench.bench_generator [--examples 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transformers import (
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
    set_seed,
)

from tasks.finetune_generator import encode_items, finetune, with_lora
from tasks.lib.core.config import Params, load_params
from tasks.lib.core.precision import Precision, resolve_precision
from tasks.lib.generation.data import read_items
from tasks.lib.generation.generator import IGNORE_INDEX, GenerationItem, ensure_pad_token
from tasks.lib.generation.loader import load_generator


def bench_items(params: Params, n: int) -> list[GenerationItem]:
    """The stage's training items, cut to `n` examples (real questions first, then KB ones)."""
    items = read_items(params.paths.generator_training_set / "train.jsonl")
    return items[: n // 2] + items[-(n - n // 2) :]


def plain_trainer_tokens_per_second(
    params: Params, base_dir: Path, items: list[GenerationItem]
) -> tuple[float, int]:
    tune = params.finetune_generator
    set_seed(tune.seed)
    model, tokenizer = load_generator(base_dir)
    ensure_pad_token(tokenizer)
    if tune.method == "lora":
        model = with_lora(model, tune)
    features = encode_items(items, tokenizer, params.generator, seq2seq=False)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=tune.batch_size,
            learning_rate=tune.learning_rate,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=tune.seed,
            include_num_input_tokens_seen="non_padding",
        )
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
        trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
        result = trainer.train()
    tokens = trainer.state.num_input_tokens_seen
    return tokens / result.metrics["train_runtime"], tokens


def stage_tokens_per_second(
    params: Params, base_dir: Path, items: list[GenerationItem], precision: Precision
) -> tuple[float, int, float]:
    """The stage itself (one epoch, dev = two examples), timed end to end as well."""
    tune = params.finetune_generator.model_copy(update={"epochs": 1, "eval_steps": 10_000})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        out_dir, checkpoints_dir = Path(out) / "g", Path(out) / "ckpt"
        report = finetune(
            base_dir, items, items[:2], params.generator, tune, precision, out_dir, checkpoints_dir
        )
    return report["tokens_per_second"], report["train_tokens"], time.perf_counter() - start


def main(params_file: Path, n_examples: int, rounds: int) -> None:
    params = load_params(params_file)
    base_dir = params.paths.generator_base_dir
    items = bench_items(params, n_examples)
    tune = params.finetune_generator
    precision = resolve_precision(params.precision.train_generator, "train_generator")
    print(
        f"bench_generator: {len(items)} examples, method {tune.method}, batch "
        f"{tune.batch_size}, stage in {precision}, {rounds} rounds (shared CPU: noisy)"
    )
    # The stage as configured, and (when it uses bf16) the same in fp32, to show what bf16 gives.
    arms: dict[str, Precision] = {f"stage ({precision})": precision}
    if precision == "bf16":
        arms["stage (fp32)"] = "fp32"
    rates: dict[str, list[float]] = {"plain Trainer": []} | {name: [] for name in arms}
    for round_ in range(1, rounds + 1):
        rate, tokens = plain_trainer_tokens_per_second(params, base_dir, items)
        rates["plain Trainer"].append(rate)
        print(f"  round {round_}: {'plain Trainer':18s} {rate:6.1f} tokens/s ({tokens} tokens)")
        for name, arm in arms.items():
            rate, tokens, wall = stage_tokens_per_second(params, base_dir, items, arm)
            rates[name].append(rate)
            print(
                f"  round {round_}: {name:18s} {rate:6.1f} tokens/s ({tokens} tokens; "
                f"{wall:.0f} s with model load, dev loss and saving)",
                flush=True,
            )
    plain = statistics.median(rates["plain Trainer"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"bench_generator: {name:18s} {rate:6.1f} tokens/s, {rate / plain:.2f}x plain")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    main(args.params, args.examples, args.rounds)
