"""Stage `finetune_generator`: teach the generator to answer from retrieved passages.

It reads only `paths.generator_training_set` (stage `generator_training_set`: the train and dev
items, real answerable questions and KB description questions, each with its retrieved
passages' text) and the base generator, so DVC retrains exactly when that set changes. Each
prompt carries its task's instruction and the item's top-k passages, exactly as
`evaluate_generation` will prompt. Loss on answer tokens only. LoRA (peft) by default, full
fine-tuning by params; the Hugging Face Trainer runs the loop, keeps the checkpoint with the best
dev loss, and the stage saves the adapter and, for inference, the merged model as safetensors.
Training runs in `precision.train_generator` (the trainer's bf16 autocast, or fp32).
Checkpoints carry the full training state under `paths.checkpoints_dir`, so a killed run resumes
on the next `dvc repro` (`finetune_generator.resume`). The resumed run restores the adapter,
optimizer, scheduler and RNG state, but transformers' length-grouped sampler redraws the rest of
the order from the global RNG, so the remaining batches differ from the killed run's and the
final model is close to, not identical with, an uninterrupted run's. A sampler seeded by epoch
would make it exact, but changes the default model's batch order and so its measured figures.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from tasks.lib.core.checkpoints import Checkpoints, folder_digest, run_key
from tasks.lib.core.config import FinetuneGeneratorParams, GeneratorParams, load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json
from tasks.lib.core.precision import Precision, resolve_precision
from tasks.lib.core.progress import show_training_progress
from tasks.lib.core.tracking import stage_run
from tasks.lib.core.training_curves import MlflowCurves
from tasks.lib.generation.data import TRAINING_SPLITS, read_items
from tasks.lib.generation.generator import (
    IGNORE_INDEX,
    AnswerOnlyCollator,
    GenerationItem,
    encode_example,
    ensure_pad_token,
    is_seq2seq,
    item_prompt,
)
from tasks.lib.generation.loader import load_generator

STAGE = "finetune_generator"
NO_ADAPTER = "Full fine-tuning: no LoRA adapter; ../model holds the tuned weights.\n"


def with_lora(model: PreTrainedModel, params: FinetuneGeneratorParams) -> PeftModel:
    lora = params.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="SEQ_2_SEQ_LM" if is_seq2seq(model) else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def encode_items(
    items: Sequence[GenerationItem], tokenizer: Any, generator: GeneratorParams, seq2seq: bool
) -> list[dict[str, list[int]]]:
    """Prompt + first gold answer of each item, with answer-only labels."""
    return [
        encode_example(
            tokenizer,
            item_prompt(
                item, tokenizer, generator.instructions, generator.passage_tokens, generator.top_k
            ),
            item.answers[0],
            seq2seq=seq2seq,
        )
        for item in items
    ]


def training_arguments(
    params: FinetuneGeneratorParams, precision: Precision, checkpoints: Checkpoints
) -> TrainingArguments:
    """Dev loss every `eval_steps` (and once before training, as the baseline: a resumed run
    has it in its restored history); the best checkpoint is reloaded at the end. Length-grouped
    batches cut padding, which on a CPU is pure waste."""
    return TrainingArguments(
        output_dir=str(checkpoints.run_dir),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_steps,
        weight_decay=params.weight_decay,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        eval_on_start=checkpoints.resume_from is None,
        save_strategy="steps",
        save_steps=params.eval_steps,
        save_total_limit=2,  # the best and the latest (to resume from)
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        prediction_loss_only=True,
        logging_steps=max(1, params.eval_steps // 2),
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        bf16=precision == "bf16",
        use_cpu=True,
        seed=params.seed,
        data_seed=params.seed,
        report_to="none",
        disable_tqdm=True,
    )


def finetune(
    base_dir: Path,
    train_items: Sequence[GenerationItem],
    dev_items: Sequence[GenerationItem],
    generator: GeneratorParams,
    params: FinetuneGeneratorParams,
    precision: Precision,
    out_dir: Path,
    checkpoints_dir: Path,
) -> dict[str, Any]:
    """Train on `train_items` in `precision`, keep the best dev-loss checkpoint, write
    `out_dir/model` (merged, loadable without peft), `out_dir/adapter` (LoRA only) and
    `out_dir/train_metrics.json`. `checkpoints_dir` holds this training's checkpoints until it
    succeeds."""
    if not train_items or not dev_items:
        raise InputError("finetune_generator: needs at least one train and one dev example")
    set_seed(params.seed)  # LoRA's initial weights are drawn before the Trainer seeds
    model, tokenizer = load_generator(base_dir)
    ensure_pad_token(tokenizer)
    seq2seq = is_seq2seq(model)
    if params.method == "lora":
        model = with_lora(model, params)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_set = encode_items(train_items, tokenizer, generator, seq2seq)
    dev_set = encode_items(dev_items, tokenizer, generator, seq2seq)
    collator = (
        DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=8)
        if seq2seq
        else AnswerOnlyCollator(tokenizer.pad_token_id)
    )
    key = run_key(
        folder_digest(base_dir),
        train_set,
        dev_set,
        params.model_dump(mode="json", exclude={"resume"}),
        precision,  # a bf16 run's checkpoint never resumes in fp32, nor the reverse
    )
    checkpoints = Checkpoints.open(STAGE, checkpoints_dir, key, params.resume)
    trainer = Trainer(
        model=model,
        args=training_arguments(params, precision, checkpoints),
        train_dataset=train_set,
        eval_dataset=dev_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[MlflowCurves()],
    )
    show_training_progress(trainer, STAGE)
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_from)
    history = trainer.state.log_history
    dev_losses = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    # Speed counts this run only: a resumed one restored the evaluations and tokens before it.
    start = checkpoints.resumed_step
    first = start + 1 if checkpoints.resume_from else 0  # the resumed step's eval came before
    evals = [e for e in history if "eval_runtime" in e and e["step"] >= first]
    eval_seconds = sum(e["eval_runtime"] for e in evals)
    loop_seconds = result.metrics["train_runtime"] - eval_seconds
    tokens = trainer.state.num_input_tokens_seen
    run_tokens = tokens - checkpoints.resumed_state.get("num_input_tokens_seen", 0)
    best_step, best_loss = min(dev_losses[1:] or dev_losses, key=lambda s: s[1])
    report = {
        "method": params.method,
        "precision": precision,
        "trainable_params": trainable,
        "train_examples": len(train_set),
        "train_examples_by_task": dict(Counter(item.task for item in train_items)),
        "dev_examples": len(dev_set),
        "steps": trainer.state.global_step,
        "resumed_from_step": start,
        "train_tokens": tokens,  # non-pad prompt + answer tokens, all epochs
        "train_seconds": round(loop_seconds, 1),  # this run's loop without dev evaluation
        "tokens_per_second": round(run_tokens / loop_seconds, 1),
        "dev_eval_seconds": round(eval_seconds, 1),
        "dev_loss_before": round(dev_losses[0][1], 4),
        "dev_loss_best": round(best_loss, 4),
        "best_step": best_step,
    }
    save_generator(trainer.model, tokenizer, out_dir, report)
    checkpoints.finish()
    return report


def save_generator(model: Any, tokenizer: Any, out_dir: Path, report: dict[str, Any]) -> None:
    """Adapter and merged model in one atomic write, so `model/` never mixes two runs."""
    with atomic_path(out_dir) as tmp:
        if isinstance(model, PeftModel):
            model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        else:  # keeps the folder DVC tracks; full fine-tuning has no adapter
            (tmp / "adapter").mkdir(parents=True)
            (tmp / "adapter/README.md").write_text(NO_ADAPTER, encoding="utf-8")
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        write_json(tmp / "train_metrics.json", report)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths, generator, tune = params.paths, params.generator, params.finetune_generator
    train, dev = (read_items(paths.generator_training_set / f"{s}.jsonl") for s in TRAINING_SPLITS)

    start = time.perf_counter()
    out_dir = paths.generator_dir
    with stage_run(STAGE, params) as run:
        precision = resolve_precision(params.precision.train_generator, "train_generator")
        run.log_params({"precision.train_generator": precision})
        checkpoints_dir = paths.checkpoints_dir / STAGE
        report = finetune(
            paths.generator_base_dir,
            train,
            dev,
            generator,
            tune,
            precision,
            out_dir,
            checkpoints_dir,
        )
        run.log_metrics({k: v for k, v in report.items() if k != "train_examples_by_task"})
    print(
        f"finetune_generator: {report['method']} on {report['train_examples']} examples "
        f"{report['train_examples_by_task']}, {report['steps']} steps in {precision}, "
        f"{report['tokens_per_second']} tokens/s, dev loss {report['dev_loss_before']} -> "
        f"{report['dev_loss_best']} (step {report['best_step']}); "
        f"{time.perf_counter() - start:.0f} s in all -> {out_dir}"
    )


if __name__ == "__main__":
    run_stage(main)
