"""Stage `refresh_index`: the new KB indexed with the champion's own encoder, no retraining.

The encoder is the registered retriever version the champion pins (from the change set),
downloaded from the registry, so the refreshed index pairs with the champion's generator and
fusion exactly as the champion's own index did. Embeddings go through the persistent
`EmbeddingCache`, where building the champion's index left every unchanged doc, so only the
added and modified docs are embedded; deleted docs are simply not in the new KB.

Nothing to refresh (see `kb_changes`): the output folder holds only the marker.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tasks.lib.core.config import load_params
from tasks.lib.core.io import atomic_path, run_stage
from tasks.lib.core.records import read_docs
from tasks.lib.core.tracking import stage_run
from tasks.lib.kb.changes import champion_to_refresh, read_change_set
from tasks.lib.retrieval.embedding_cache import EmbeddingCache
from tasks.lib.retrieval.encoder import Embedder, encode_precision, load_encoder
from tasks.lib.retrieval.index_store import build_index
from tasks.lib.serving.bundle import component_folder


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    changes = read_change_set(params.paths.kb_changes)
    out_dir = params.paths.refresh_index_dir
    champion = champion_to_refresh(changes, out_dir, "refresh_index")
    if champion is None:
        return
    torch.set_num_threads(params.index.threads or os.cpu_count() or 1)
    docs = read_docs(params.paths.retrieval_docs)
    pinned = champion.retriever
    encoder_id = f"models:/{pinned.model}/{pinned.version}"

    with stage_run("refresh_index", params) as run:
        # stage_run pointed mlflow at the project's store, where `models:/` URIs resolve.
        with component_folder(pinned.model_dump()) as folder:
            embedder = Embedder(load_encoder(str(folder), Path()), encode_precision(params))
        with EmbeddingCache(params.paths.embedding_cache) as cache, atomic_path(out_dir) as tmp:
            manifest, stats = build_index(docs, embedder, encoder_id, cache, params.index, tmp)
        run.log_metrics(
            {"docs": len(docs), "embedded": stats.embedded, "cached": stats.cached}
            | {f"changed_{key}": value for key, value in changes.counts.items()}
        )
        run.set_tags(
            {
                "encoder": encoder_id,
                "encoder_fingerprint": manifest["encoder"]["fingerprint"],
                "champion_version": champion.version,
                "precision.encode": embedder.precision,
            }
        )
    print(
        f"refresh_index: {len(docs)} docs with {encoder_id} (champion "
        f"v{champion.version}): {stats.embedded} embedded in {embedder.precision}, "
        f"{stats.cached} from the cache; "
        f"the change set added {len(changes.added)}, modified {len(changes.modified)}, "
        f"deleted {len(changes.deleted)}"
    )


if __name__ == "__main__":
    run_stage(main)
