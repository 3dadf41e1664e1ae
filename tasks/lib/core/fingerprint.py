"""The parts of a model fingerprint that encoders and generators share: weights and tokenizer.

A fingerprint hashes the loaded model, not its files, so one model keeps one fingerprint
whether it comes from a hub name or a path, safetensors or .bin, here or in a copy elsewhere.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import torch

# Set by every tokenizer call (transformers writes the call's padding/truncation into the
# backend), so they describe the last call, not the tokenizer.
_TOKENIZER_CALL_STATE = ("padding", "truncation")


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def hash_weights(digest: Digest, module: torch.nn.Module) -> None:
    """Feed every tensor of `module`'s state dict (name, dtype, shape, bytes) to `digest`."""
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # Raw bytes through a uint8 view: no copy, and any dtype (bf16 has no numpy twin).
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(memoryview(flat.view(torch.uint8).numpy()))


def tokenizer_definition(tokenizer: Any) -> dict | None:
    """A fast tokenizer's full definition (vocab, normalizer, pre-tokenizer, post-processor,
    decoder, added tokens) without per-call state; None for a tokenizer without a backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    for key in _TOKENIZER_CALL_STATE:
        definition.pop(key, None)
    return definition
