"""A persistent cache of greedy answers, so no answer is generated twice.

Answers are keyed by (generator fingerprint, decoding, sha256 of the exact prompt) in one sqlite
file in `paths.generation_cache`, which lives outside every stage's dvc outs: dvc deletes a
stage's outs before rerunning it, and the cache must survive exactly those reruns. So when only
the tuned generator changed, `evaluate_generation` generates the closed-book and base + RAG
answers no more, and `evaluate` finds the candidate bundle's answers where
`evaluate_generation` left them when the bundle builds the same prompts.

- The generator fingerprint hashes what decides an answer besides the prompt: the weights, the
  model and generation configs, and the tokenizer (`generator_fingerprint`).
- The decoding key: greedy, `max_new_tokens`, the precision, and the torch and transformers
  versions that run the generation (a new release may round or stop differently).
- Batch size and batch mates are not part of the key: a left-padded greedy answer does not
  depend on its batch mates beyond float rounding (`generate_answers`), so an answer generated
  in a batch of 16 serves a batch of 8. The answer is the one generated first.

Entries are never evicted; delete the folder to reclaim the space (the next run regenerates).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.lib.core.fingerprint import hash_weights, tokenizer_definition
from tasks.lib.core.progress import Progress
from tasks.lib.generation.generator import Decoding, generate_answers

CACHE_FILE = "generations.sqlite"
_SQL_BATCH = 500  # keys per `IN (...)` query, well under sqlite's bound-variable limit
# Config entries that say where and by which release a config was saved, not what it does.
_FILE_METADATA = ("_name_or_path", "_from_model_config", "transformers_version")


def _behaviour(config: Any) -> dict[str, Any] | None:
    """A model or generation config as a dict, without its file metadata."""
    if config is None:
        return None
    return {k: v for k, v in config.to_dict().items() if k not in _FILE_METADATA}


def generator_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what decides a generator's answer to a prompt: every weight tensor, the model
    class and config, the generation config (its defaults fill what `generate` is not told),
    and the tokenizer's definition, chat template and special tokens. Like the encoder's, it
    hashes the loaded model, so a copy or a registry download of a folder keeps its value."""
    digest = hashlib.sha256()
    hash_weights(digest, model)
    pad = tokenizer.pad_token_id
    definition = {
        "class": type(model).__qualname__,
        "config": _behaviour(model.config),
        "generation_config": _behaviour(getattr(model, "generation_config", None)),
        "tokenizer": tokenizer_definition(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special_ids": sorted(set(tokenizer.all_special_ids)),
        "eos": tokenizer.eos_token_id,
        "pad": pad if pad is not None else tokenizer.eos_token_id,  # as `ensure_pad_token` sets
        "clean_up_spaces": getattr(tokenizer, "clean_up_tokenization_spaces", None),
    }
    digest.update(json.dumps(definition, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def decoding_key(decoding: Decoding) -> str:
    return json.dumps(
        {
            "greedy": True,
            "max_new_tokens": decoding.max_new_tokens,
            "precision": decoding.precision,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        sort_keys=True,
    )


def prompt_key(prompt: str) -> str:
    """The exact prompt's hash: unlike passages for embedding, no normalization (a space more
    is another token sequence)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    seconds: float  # its share of its batch's generation time


class GenerationCache:
    """Answers by (generator fingerprint, decoding key, prompt key), in
    `folder/generations.sqlite`. `hits` and `misses` count the prompts looked up through this
    handle: found, or left to generate."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / CACHE_FILE
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers ("
            " generator TEXT NOT NULL, decoding TEXT NOT NULL, prompt_key TEXT NOT NULL,"
            " answer TEXT NOT NULL, seconds REAL NOT NULL,"
            " PRIMARY KEY (generator, decoding, prompt_key))"
        )
        self.hits = 0
        self.misses = 0

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get_many(
        self, generator: str, decoding: str, keys: Sequence[str]
    ) -> dict[str, CachedAnswer]:
        unique = list(dict.fromkeys(keys))
        found: dict[str, CachedAnswer] = {}
        for start in range(0, len(unique), _SQL_BATCH):
            batch = unique[start : start + _SQL_BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._db.execute(
                "SELECT prompt_key, answer, seconds FROM answers"
                f" WHERE generator = ? AND decoding = ? AND prompt_key IN ({marks})",
                [generator, decoding, *batch],
            )
            found.update((key, CachedAnswer(text, seconds)) for key, text, seconds in rows)
        hits = sum(key in found for key in keys)
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    def put_many(self, generator: str, decoding: str, answers: Mapping[str, CachedAnswer]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                [(generator, decoding, k, a.text, a.seconds) for k, a in answers.items()],
            )

    def count(self, generator: str) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM answers WHERE generator = ?", [generator]
        ).fetchone()
        return n


@dataclass(frozen=True)
class GenerationStats:
    """What one `CachedGenerator.answers` call did."""

    generated: int  # prompts the model answered in this call
    cached: int  # prompts answered from the cache
    seconds: float  # generation time of all these answers (a cached one's when it was made)

    def summary(self) -> str:
        return f"{self.generated + self.cached} answers, {self.cached} from the cache"


@dataclass
class CachedGenerator:
    """A loaded generator whose greedy answers go through `cache`: only the prompts it lacks are
    generated, batched as `generate_answers` batches them, and stored batch by batch (an
    interrupted run keeps its work). Without a cache (the served bundle) every answer is
    generated and nothing is stored. The fingerprint is taken once, at the first lookup.
    `progress` labels the progress lines of the answers it generates (`evaluate_generation:
    base_rag on test`); None (serving) prints none."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    cache: GenerationCache | None = None
    progress: str | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        return generator_fingerprint(self.model, self.tokenizer)

    def answers(
        self, prompts: Sequence[str], batch_size: int, decoding: Decoding
    ) -> tuple[list[str], GenerationStats]:
        """The answer to each prompt, in order; identical prompts are generated once."""
        keys = [prompt_key(p) for p in prompts]
        unique = dict(zip(keys, prompts, strict=True))
        decoding_id = decoding_key(decoding)
        found = (
            {} if self.cache is None else self.cache.get_many(self.fingerprint, decoding_id, keys)
        )
        cached = sum(key in found for key in keys)
        # Shortest first, as generate_answers orders them, so the batches are the same.
        misses = sorted((k for k in unique if k not in found), key=lambda k: len(unique[k]))
        progress = Progress(self.progress, len(misses), "answer") if self.progress else None
        from_cache = f"{cached} more from the cache" if cached else ""
        for at in range(0, len(misses), batch_size):
            batch = misses[at : at + batch_size]
            start = time.perf_counter()
            texts = generate_answers(
                self.model, self.tokenizer, [unique[k] for k in batch], batch_size, decoding
            )
            each = (time.perf_counter() - start) / len(batch)
            made = {k: CachedAnswer(t, each) for k, t in zip(batch, texts, strict=True)}
            if self.cache is not None:
                self.cache.put_many(self.fingerprint, decoding_id, made)
            found.update(made)
            if progress is not None:
                progress.advance(len(batch), from_cache)
        stats = GenerationStats(
            generated=len(keys) - cached,
            cached=cached,
            seconds=sum(found[k].seconds for k in keys),
        )
        return [found[k].text for k in keys], stats
