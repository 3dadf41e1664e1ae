"""The generator's prompt contract, shared by `finetune_generator` and `evaluate_generation`.

Training and evaluation must build byte-identical prompts, or a tuned model is judged on a format
it never saw; so prompt building, passage truncation, label masking and batched generation live
here once. Each task (real short-answer QA, KB description questions) carries its own instruction
in the system turn, so a model trained on a mix still knows which answer style is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.lib.core.precision import Precision, autocast

IGNORE_INDEX = -100  # label value the cross-entropy loss skips


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class GenerationItem:
    """One question to answer: `task` picks the instruction, `answers` are the gold strings."""

    id: str
    task: str
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...]
    answerable: bool | None = None


@dataclass(frozen=True)
class Decoding:
    """How an answer is decoded (always greedy): with the model and the prompt, what decides it."""

    max_new_tokens: int
    precision: Precision  # resolved (`resolve_precision`): the format the matmuls run in


def is_seq2seq(model_or_config: Any) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "is_encoder_decoder", False))


def uses_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Batching needs a pad token; causal LMs often ship without one (EOS is the usual stand-in)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def truncate_to_tokens(text: str, tokenizer: PreTrainedTokenizerBase, budget: int) -> str:
    """The longest prefix of `text` that is at most `budget` tokens, cut on a token boundary.

    Cutting by character offsets (not by decoding token ids) keeps the original text intact.
    """
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    if len(offsets) <= budget:
        return text
    return text[: offsets[budget - 1][1]].rstrip() if budget > 0 else ""


def format_passages(
    passages: Sequence[Passage], tokenizer: PreTrainedTokenizerBase, passage_tokens: int
) -> str:
    """Numbered passages, each ("title: text") cut to `passage_tokens` tokens."""
    return "\n".join(
        f"[{rank}] {truncate_to_tokens(f'{p.title}: {p.text}', tokenizer, passage_tokens)}"
        for rank, p in enumerate(passages, start=1)
    )


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    question: str,
    passages: Sequence[Passage],
    passage_tokens: int,
) -> str:
    """The model's own chat template when it has one (instruction as the system turn), else plain
    text ending in "Answer:". No passages means closed-book: the question alone."""
    user = f"Question: {question}"
    if passages:
        user = f"Passages:\n{format_passages(passages, tokenizer, passage_tokens)}\n\n{user}"
    if uses_chat_template(tokenizer):
        messages = [
            {"role": "system", "content": instruction},
            {"role": "user", "content": user},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{instruction}\n\n{user}\nAnswer:"


def item_prompt(
    item: GenerationItem,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Mapping[str, str],
    passage_tokens: int,
    top_k: int,
    rag: bool = True,
) -> str:
    passages = item.passages[:top_k] if rag else ()
    return build_prompt(tokenizer, instructions[item.task], item.question, passages, passage_tokens)


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, seq2seq: bool = False
) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels `IGNORE_INDEX` everywhere but the answer
    and its EOS: the loss teaches what to say and when to stop, never to echo the passages.

    Prompt and answer are tokenized separately, exactly as generation sees them (the model
    continues after the prompt's last token). A plain-text causal prompt ends in "Answer:", so
    the answer gets its leading space there.
    """
    chat = uses_chat_template(tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
    if not chat and not seq2seq:
        answer = f" {answer}"
    answer_ids = [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    if seq2seq:
        return {
            "input_ids": prompt_ids,
            "attention_mask": [1] * len(prompt_ids),
            "labels": answer_ids,
        }
    input_ids = prompt_ids + answer_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


@dataclass
class AnswerOnlyCollator:
    """Pads causal-LM examples on the left and computes logits only for the answer span.

    With left padding every answer ends at the last position, so the lm_head (a 576 x 49k matrix
    for SmolLM2) and the softmax run only over the last `logits_to_keep` positions instead of the
    whole prompt; labels are cut to the same window. The model's loss shifts labels by
    one inside that window, so the window starts one token before the first answer token.
    Attention is unaffected: RoPE only sees relative positions and pads are masked.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        answer_window = 1 + max(
            len(f["labels"]) - next(i for i, x in enumerate(f["labels"]) if x != IGNORE_INDEX)
            for f in features
        )
        rows = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            rows["input_ids"].append([self.pad_token_id] * pad + list(f["input_ids"]))
            rows["attention_mask"].append([0] * pad + list(f["attention_mask"]))
            rows["labels"].append(([IGNORE_INDEX] * pad + list(f["labels"]))[-answer_window:])
        batch: dict[str, Any] = {key: torch.tensor(value) for key, value in rows.items()}
        batch["logits_to_keep"] = answer_window
        return batch


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int,
    decoding: Decoding,
) -> list[str]:
    """Greedy answers, batched with left padding; prompts are sorted by length to cut padding.

    With left padding and the attention mask, an answer does not depend on its batch mates
    beyond float rounding (which bf16 makes larger), so batching is a matter of speed only.
    """
    ensure_pad_token(tokenizer)
    seq2seq = is_seq2seq(model)
    add_special = not uses_chat_template(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer(
                [prompts[i] for i in index],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special,
            ).to(model.device)
            with autocast(decoding.precision):
                output = model.generate(
                    **batch,
                    max_new_tokens=decoding.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output if seq2seq else output[:, batch["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for i, text in zip(index, texts, strict=True):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = side
    return answers
