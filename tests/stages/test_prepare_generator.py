"""The packaged GGUF becomes a plain transformers folder that reloads and answers (slow: ~30 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.lib.generation.generator import (
    Decoding,
    build_prompt,
    generate_answers,
    truncate_to_tokens,
)
from tasks.prepare_generator import prepare_generator

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.mark.slow
def test_packaged_gguf_converts_to_a_folder_that_reloads(tmp_path: Path) -> None:
    out = tmp_path / "generator_base"
    assert prepare_generator("packaged", out) == 134_515_008

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # the GGUF quantizer must not leak into the folder
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert "<|im_start|>" in tokenizer.chat_template

    prompt = build_prompt(tokenizer, SMOLLM_SYSTEM, "What is the capital of France?", [], 64)
    [answer] = generate_answers(model, tokenizer, [prompt], 1, Decoding(12, "fp32"))
    assert "Paris" in answer

    text = "A glacier is a persistent body of dense ice that is constantly moving downhill. " * 5
    cut = truncate_to_tokens(text, tokenizer, 20)
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 20
    assert text.startswith(cut) and len(cut) > 60
