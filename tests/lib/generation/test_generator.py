"""Generator prompt contract and answer metrics, on a tiny random Llama and hand-made cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

from tasks.lib.core.stats import paired_intervals
from tasks.lib.generation.generator import (
    IGNORE_INDEX,
    AnswerOnlyCollator,
    Decoding,
    Passage,
    build_prompt,
    encode_example,
    generate_answers,
    item_prompt,
    truncate_to_tokens,
)
from tasks.lib.generation.metrics import exact_match, rouge_l, supported, token_f1
from tests.support.tiny_generator import INSTRUCTIONS, items, tiny_tokenizer

LONG = Passage("Glacier", "A glacier is a slow river of ice formed from compacted snow")


def test_truncation_cuts_on_a_token_boundary_within_budget() -> None:
    tokenizer = tiny_tokenizer()
    text = LONG.text
    cut = truncate_to_tokens(text, tokenizer, 4)
    assert cut == "A glacier is a"
    assert truncate_to_tokens(text, tokenizer, 1000) == text  # short text untouched


def test_prompt_respects_the_passage_budget() -> None:
    tokenizer = tiny_tokenizer()
    budget = 6
    short = Passage("Widget", "The widget is blue")
    prompt = build_prompt(
        tokenizer, INSTRUCTIONS["qa"], "What is a glacier ?", [LONG, short], budget
    )
    passage_lines = [line for line in prompt.splitlines() if line.startswith("[")]
    assert len(passage_lines) == 2
    for line in passage_lines:
        body = line.split("] ", 1)[1]
        assert len(tokenizer(body, add_special_tokens=False)["input_ids"]) <= budget
    assert passage_lines[0] == "[1] Glacier: A glacier is a"
    assert "Question: What is a glacier ?" in prompt
    assert prompt.startswith(f"<|im_start|>system\n{INSTRUCTIONS['qa']}<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_closed_book_prompt_has_no_passages_and_tasks_keep_their_instruction() -> None:
    tokenizer = tiny_tokenizer()
    qa_item, describe_item = items()[0], items()[1]
    closed = item_prompt(qa_item, tokenizer, INSTRUCTIONS, 8, top_k=2, rag=False)
    assert "Passages" not in closed and "Widget" not in closed
    described = item_prompt(describe_item, tokenizer, INSTRUCTIONS, 8, top_k=1)
    assert INSTRUCTIONS["describe"] in described and "[2]" not in described


def test_labels_cover_only_the_answer_and_its_eos() -> None:
    tokenizer = tiny_tokenizer()
    prompt = build_prompt(
        tokenizer,
        INSTRUCTIONS["qa"],
        "What is the widget ?",
        [Passage("Widget", "The widget is a small blue device")],
        50,
    )
    example = encode_example(tokenizer, prompt, "blue device")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    blue, device = tokenizer.convert_tokens_to_ids(["blue", "device"])
    assert example["input_ids"] == [*prompt_ids, blue, device, tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + [
        blue,
        device,
        tokenizer.eos_token_id,
    ]


def test_answer_only_collator_gives_the_full_sequence_loss(tiny_generator_dir: Path) -> None:
    """Left padding + logits on the answer window must not change the loss."""
    tokenizer = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_generator_dir, dtype=torch.float32).eval()
    features = [
        encode_example(
            tokenizer, item_prompt(item, tokenizer, INSTRUCTIONS, 12, 2), item.answers[0]
        )
        for item in items()
    ]
    trimmed = AnswerOnlyCollator(tokenizer.pad_token_id)(features)
    full = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)(features)
    # "slow river of ice" + EOS, and the position before it that predicts "slow"
    assert trimmed["labels"].shape[1] == trimmed["logits_to_keep"] == 4 + 1 + 1
    assert (trimmed["input_ids"][:, -1] == tokenizer.eos_token_id).all()  # answers end together
    with torch.no_grad():
        assert model(**trimmed).loss == pytest.approx(float(model(**full).loss), abs=1e-4)


def test_batched_generation_matches_one_by_one(tiny_generator_dir: Path) -> None:
    tokenizer = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_generator_dir, dtype=torch.float32).eval()
    prompts = [item_prompt(item, tokenizer, INSTRUCTIONS, 12, 2) for item in items()]
    decoding = Decoding(max_new_tokens=5, precision="fp32")
    batched = generate_answers(model, tokenizer, prompts, batch_size=3, decoding=decoding)
    single = [generate_answers(model, tokenizer, [p], 1, decoding)[0] for p in prompts]
    assert batched == single
    assert tokenizer.padding_side == "right"  # restored after generation


def test_exact_match_and_f1_follow_squad_normalization() -> None:
    assert exact_match("The Blue River.", ["blue river"]) == 1.0
    assert exact_match("blue river dam", ["blue river"]) == 0.0
    # "blue river" vs "blue river dam": precision 1, recall 2/3 -> F1 0.8
    assert token_f1("the blue river", ["Blue River Dam"]) == pytest.approx(0.8)
    assert token_f1("dam river blue", ["Blue River Dam"]) == pytest.approx(1.0)  # a bag of words
    assert token_f1("nothing here", ["Blue River Dam", "river"]) == 0.0
    assert token_f1("river", ["Blue River Dam", "river"]) == 1.0  # best gold answer wins


def test_rouge_l_uses_the_longest_common_subsequence() -> None:
    assert rouge_l("the blue river", ["Blue River Dam"]) == pytest.approx(0.8)
    # LCS of "dam river blue" and "blue river dam" is one token: P = R = 1/3
    assert rouge_l("dam river blue", ["Blue River Dam"]) == pytest.approx(1 / 3)
    # "a" is dropped as an article; LCS "small device": P = 2/3, R = 2/2 -> F = 2PR / (P + R)
    assert rouge_l("a small blue device", ["small device"]) == pytest.approx(0.8)
    assert rouge_l("small device of blue", ["small blue device"]) == pytest.approx(2 / 3.5)


def test_supported_means_the_answer_occurs_in_a_shown_passage() -> None:
    passages = ["Widget. The widget is a small blue device", "Glacier. A slow river of ice"]
    assert supported("Small blue device!", passages) == 1.0
    assert supported("blue ice", passages) == 0.0
    assert supported("", passages) == 0.0


def test_paired_intervals_and_differences() -> None:
    base = [0.0, 1.0] * 50
    tuned = [1.0] * 100
    result = paired_intervals(
        {"base": base, "tuned": tuned},
        resamples=500,
        confidence=0.95,
        seed=0,
        pairs=[("tuned", "base")],
    )
    assert result["tuned"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    assert result["base"]["mean"] == 0.5
    assert 0.38 < result["base"]["low"] < 0.5 < result["base"]["high"] < 0.62
    diff = result["tuned - base"]
    assert diff["mean"] == 0.5 and diff["low"] > 0.3
    with pytest.raises(ValueError, match="equal lengths"):
        paired_intervals({"a": [1.0], "b": [1.0, 0.0]}, 100, 0.95, 0)
