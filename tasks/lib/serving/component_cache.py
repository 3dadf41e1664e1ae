"""Registered versions downloaded once per machine, not once per load.

A registry version never changes once made, so its files, once downloaded and checked against
the sha256 manifest the registry holds, can be reused by every later load: `ragloop ask` and
`ragloop serve` would otherwise copy the 540 MB generator out of the artifact store on every
start. The cache lives under `paths.component_cache`, one folder per (store, model, version):
the store is part of the key because two registries can both hold a `ragloop-generator` v1.

The full sha256 check runs once, at download; a hit checks that the folder still holds the
registered file list with the sizes recorded when that check passed. That guards against a
half-deleted or half-copied cache folder; the files themselves sit on this machine's disk,
which whoever could change them could also change the installed code with. A download lands in
a temporary folder beside its final place and is renamed into it whole, so a crash or a second
process never leaves a half-written version that passes for a whole one.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME

from tasks.lib.core.io import read_text, write_json
from tasks.lib.serving.integrity import registered_manifest, verified_download

if TYPE_CHECKING:
    from mlflow import MlflowClient

FILES, SIZES = "files", "sizes.json"  # a cached version: its checked files, and their sizes

# Where `component_folder` keeps the pinned versions a bundle loads; None: a temporary download
# per load (as `mlflow models serve` does, which knows nothing of ragloop's params).
active_cache: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "ragloop_component_cache", default=None
)


@contextlib.contextmanager
def using_cache(root: Path) -> Iterator[None]:
    """Let every bundle loaded inside this block take its components from the cache `root`."""
    token = active_cache.set(root)
    try:
        yield
    finally:
        active_cache.reset(token)


def store_key(client: MlflowClient) -> str:
    """A short folder name for the tracking and registry store `client` talks to."""
    from mlflow.tracking._model_registry.utils import get_registry_uri

    stores = f"{client.tracking_uri}\n{client._registry_uri or get_registry_uri()}"
    return hashlib.sha256(stores.encode("utf-8")).hexdigest()[:16]


def sizes_of(folder: Path) -> dict[str, int]:
    """Relative POSIX path -> size of every file of a downloaded version, but MLflow's own
    name-and-version note, which it writes into some downloads and nothing reads (integrity)."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != REGISTERED_MODEL_META_FILE_NAME
    }


def is_whole(entry: Path, registered: set[str]) -> bool:
    """Whether a cached version holds exactly the registered files, at the checked sizes."""
    sizes_file = entry / SIZES
    if not sizes_file.is_file():
        return False
    recorded = json.loads(read_text(sizes_file))
    return set(recorded) == registered and sizes_of(entry / FILES) == recorded


def cached_version(client: MlflowClient, model: str, version: str, root: Path) -> Path:
    """The files of `version` of `model`: from the cache when it holds them whole, else
    downloaded, checked against the registered manifest, and cached."""
    entry = root / store_key(client) / model / str(version)
    registered = set(registered_manifest(client, model, str(version)))
    if is_whole(entry, registered):
        return entry / FILES
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.incoming.", dir=entry.parent))
    try:
        local = verified_download(client, model, str(version), staging / "download")
        os.replace(local, staging / FILES)
        shutil.rmtree(staging / "download", ignore_errors=True)
        write_json(staging / SIZES, sizes_of(staging / FILES))
        if entry.exists():  # a broken entry, or one another process just finished
            if is_whole(entry, registered):
                return entry / FILES
            shutil.rmtree(entry)
        os.replace(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry / FILES
