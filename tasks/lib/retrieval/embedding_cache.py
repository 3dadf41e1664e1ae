"""A persistent embedding cache, so a KB update re-embeds only the passages that changed.

Vectors are keyed by (sha256 of the normalized passage text, encoder fingerprint and number
format: `Embedder.cache_key`) in one sqlite file, so a bf16 build never reuses fp32 vectors nor
the reverse. The file lives outside every stage's dvc outs (`paths.embedding_cache`): dvc
deletes a stage's outs before rerunning it, and the cache must survive exactly those reruns.
Entries are never evicted; delete the folder to reclaim the space (the next build re-embeds
everything).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from tasks.lib.core.progress import Progress
from tasks.lib.retrieval.encoder import Embedder

CACHE_FILE = "embeddings.sqlite"
_SQL_BATCH = 500  # keys per `IN (...)` query, well under sqlite's bound-variable limit


def normalize_text(text: str) -> str:
    """NFC and single spaces: edits that cannot change an embedding must not miss the cache."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def text_key(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """float32 vectors by (encoder key, text key), in `folder/embeddings.sqlite`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / CACHE_FILE
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " encoder TEXT NOT NULL, text_key TEXT NOT NULL, vector BLOB NOT NULL,"
            " PRIMARY KEY (encoder, text_key))"
        )

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def get_many(self, encoder: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _SQL_BATCH):
            batch = list(keys[start : start + _SQL_BATCH])
            marks = ",".join("?" * len(batch))
            rows = self._db.execute(
                "SELECT text_key, vector FROM embeddings"
                f" WHERE encoder = ? AND text_key IN ({marks})",
                [encoder, *batch],
            )
            found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def put_many(self, encoder: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [(encoder, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items],
            )

    def count(self, encoder: str) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM embeddings WHERE encoder = ?", [encoder]
        ).fetchone()
        return n


@dataclass(frozen=True)
class EmbedStats:
    """What one `embed_with_cache` call did: `embedded` texts went through the encoder."""

    embedded: int
    cached: int
    seconds: float

    @property
    def docs_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_with_cache(
    texts: Sequence[str],
    embedder: Embedder,
    cache: EmbeddingCache,
    batch_size: int,
    progress: bool = True,
) -> tuple[np.ndarray, EmbedStats]:
    """Embeddings of `texts` (one row each, in order), encoding only the ones not cached.

    Texts are normalized first and the normalized text is what gets encoded, so a cached
    vector is exactly the vector its key would produce. Misses are encoded longest first, one
    batch per call, and each batch is committed at once: an interrupted build keeps its work.
    """
    normalized = [normalize_text(t) for t in texts]
    keys = [text_key(t) for t in normalized]
    unique = dict(zip(keys, normalized, strict=True))  # identical passages are encoded once
    vectors = cache.get_many(embedder.cache_key, list(unique))
    misses = sorted((k for k in unique if k not in vectors), key=lambda k: -len(unique[k]))

    start = time.perf_counter()
    lines = Progress("embed", len(misses), "doc") if progress else None
    for at in range(0, len(misses), batch_size):
        batch = misses[at : at + batch_size]
        encoded = embedder.documents([unique[k] for k in batch], batch_size)
        cache.put_many(embedder.cache_key, zip(batch, encoded, strict=True))
        vectors.update(zip(batch, encoded, strict=True))
        if lines is not None:
            lines.advance(len(batch))
    seconds = time.perf_counter() - start

    matrix = np.stack([vectors[k] for k in keys]).astype(np.float32, copy=False)
    return matrix, EmbedStats(
        embedded=len(misses), cached=len(unique) - len(misses), seconds=seconds
    )
