"""The generation cache on the tiny generator: a second run generates nothing, another weight or
precision misses, and cached answers are exactly the uncached ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from tasks.lib.core.precision import CPU_BF16_ENV, resolve_precision
from tasks.lib.generation.generation_cache import (
    CachedGenerator,
    GenerationCache,
    generator_fingerprint,
)
from tasks.lib.generation.generator import Decoding, generate_answers, item_prompt
from tests.support.tiny_generator import INSTRUCTIONS, items

FP32 = Decoding(max_new_tokens=5, precision="fp32")


class CountingLlama(LlamaForCausalLM):
    """The tiny Llama, counting its `generate` calls: a cache hit must make none."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        self.generate_calls = getattr(self, "generate_calls", 0) + 1
        return super().generate(*args, **kwargs)


def load(folder: Path) -> CountingLlama:
    return CountingLlama.from_pretrained(folder, dtype=torch.float32).eval()


def prompts_for(folder: Path) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [item_prompt(item, tokenizer, INSTRUCTIONS, 12, 2) for item in items()]


def test_a_second_run_answers_from_the_cache_without_generating(
    tiny_generator_dir: Path, tmp_path: Path
) -> None:
    prompts = prompts_for(tiny_generator_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_generator_dir)
    with GenerationCache(tmp_path / "cache") as cache:
        first = CachedGenerator(load(tiny_generator_dir), tokenizer, cache)
        answers, stats = first.answers(prompts, 2, FP32)
        assert (stats.generated, stats.cached) == (3, 0)
        assert first.model.generate_calls == 2  # 3 prompts, batches of 2
        assert stats.seconds > 0
    # Another process: the same folder copied elsewhere, a new handle on the same file.
    copy = shutil.copytree(tiny_generator_dir, tmp_path / "copy")
    with GenerationCache(tmp_path / "cache") as cache:
        second = CachedGenerator(load(copy), AutoTokenizer.from_pretrained(copy), cache)
        again, stats_again = second.answers(prompts, 3, FP32)  # another batch size: same key
        assert not hasattr(second.model, "generate_calls")  # generate never ran
        assert (cache.hits, cache.misses) == (3, 0)
    assert again == answers
    assert (stats_again.generated, stats_again.cached) == (0, 3)
    assert stats_again.seconds == pytest.approx(stats.seconds)  # the time it took back then
    assert stats_again.summary() == "3 answers, 3 from the cache"


def test_another_weight_or_precision_misses(tiny_generator_dir: Path, tmp_path: Path) -> None:
    prompts = prompts_for(tiny_generator_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_generator_dir)
    with GenerationCache(tmp_path / "cache") as cache:
        CachedGenerator(load(tiny_generator_dir), tokenizer, cache).answers(prompts, 3, FP32)
        changed = load(tiny_generator_dir)
        with torch.no_grad():
            changed.model.norm.weight[0] += 0.5  # one weight of one layer
        other = CachedGenerator(changed, tokenizer, cache)
        assert other.fingerprint != generator_fingerprint(load(tiny_generator_dir), tokenizer)
        _, stats = other.answers(prompts, 3, FP32)
        assert (stats.generated, stats.cached) == (3, 0) and changed.generate_calls == 1

        same = CachedGenerator(load(tiny_generator_dir), tokenizer, cache)
        _, in_bf16 = same.answers(prompts, 3, Decoding(max_new_tokens=5, precision="bf16"))
        _, longer = same.answers(prompts, 3, Decoding(max_new_tokens=6, precision="fp32"))
        assert in_bf16.cached == 0 and longer.cached == 0
        assert same.model.generate_calls == 2
        assert (cache.hits, cache.misses) == (0, 12)


def test_cached_answers_are_exactly_the_generated_ones(
    tiny_generator_dir: Path, tmp_path: Path
) -> None:
    prompts = prompts_for(tiny_generator_dir)
    prompts = [prompts[2], prompts[0], prompts[2], prompts[1]]  # a repeated prompt, unsorted
    tokenizer = AutoTokenizer.from_pretrained(tiny_generator_dir)
    model = load(tiny_generator_dir)
    plain = generate_answers(model, tokenizer, prompts, 2, FP32)
    uncached, _ = CachedGenerator(model, tokenizer).answers(prompts, 2, FP32)
    with GenerationCache(tmp_path / "cache") as cache:
        generator = CachedGenerator(model, tokenizer, cache)
        missed, first = generator.answers(prompts, 2, FP32)
        hit, second = generator.answers(prompts, 2, FP32)
        assert cache.count(generator.fingerprint) == 3  # the repeated prompt stored once
    assert plain == uncached == missed == hit
    assert (first.generated, second.cached) == (4, 4)


def test_generate_runs_in_fp32_on_a_cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_precision("auto", "generate") == "fp32"
    assert resolve_precision("bf16", "generate") == "fp32"  # asked for, but not there
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_precision("auto", "generate") == "bf16"
