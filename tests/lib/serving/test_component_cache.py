"""The component cache: a registered version downloads once, checked; later loads reuse it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tasks.lib.core.config import load_params
from tasks.lib.serving.bundle import load_bundle
from tasks.lib.serving.component_cache import FILES, cached_version, store_key
from tasks.lib.serving.integrity import ArtifactIntegrityError
from tasks.lib.serving.registry import promote
from tasks.lib.serving.served import load_served_bundle
from tests.support.bundle import (
    QUESTIONS,
    RAG,
    SERVING,
    register_bundle,
    serving_project,
    stored_folder,
)

GENERATOR = SERVING.generator_model


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return serving_project(tmp_path)


def test_a_served_bundle_loads_from_the_cache_once_its_versions_are_there(
    client: MlflowClient, store, parts, bundle_dir, project: Path
) -> None:
    registered = register_bundle(client, store[1], parts, bundle_dir)
    promote(client, RAG, registered[RAG], by="test")
    params = load_params(project)
    first = load_served_bundle(params, "champion")
    expected = load_bundle(bundle_dir).predict(QUESTIONS)
    assert first.version == registered[RAG] and first.answer(QUESTIONS) == expected
    # The artifact store loses every file: the second load never asks it for one.
    for model, version in registered.items():
        shutil.rmtree(stored_folder(client, model, version))
    second = load_served_bundle(params, "champion")
    assert second.answer(QUESTIONS) == expected
    cached = params.paths.component_cache / store_key(client)
    assert sorted(p.name for p in cached.iterdir()) == sorted(registered)


def test_a_new_version_is_downloaded_beside_the_cached_one(
    client: MlflowClient, store, parts, bundle_dir, tmp_path: Path
) -> None:
    old = register_bundle(client, store[1], parts, bundle_dir)[GENERATOR]
    new = register_bundle(client, store[1], parts, bundle_dir)[GENERATOR]
    cache = tmp_path / "cache"
    old_files = cached_version(client, GENERATOR, old, cache)
    new_files = cached_version(client, GENERATOR, new, cache)
    assert old_files != new_files and old_files.parent.name == old and new_files.parent.name == new
    assert sorted(p.name for p in old_files.iterdir()) == sorted(
        p.name for p in new_files.iterdir()
    )
    assert cached_version(client, GENERATOR, old, cache) == old_files  # a hit: the same folder


def test_a_broken_cache_entry_is_downloaded_again_and_checked(
    client: MlflowClient, store, parts, bundle_dir, tmp_path: Path
) -> None:
    version = register_bundle(client, store[1], parts, bundle_dir)[GENERATOR]
    cache = tmp_path / "cache"
    files = cached_version(client, GENERATOR, version, cache)
    weights = files / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    (files / "config.json").unlink()
    again = cached_version(client, GENERATOR, version, cache)
    assert (again / "model.safetensors").read_bytes() == whole
    assert (again / "config.json").is_file()
    # What the download brings is still checked against the registered manifest.
    shutil.rmtree(cache)
    stored = stored_folder(client, GENERATOR, version) / "config.json"
    stored.write_text(stored.read_text().replace("32", "33"))
    with pytest.raises(ArtifactIntegrityError, match="re-register or restore it"):
        cached_version(client, GENERATOR, version, cache)
    assert not any(path.name == FILES for path in cache.rglob("*"))  # nothing half cached
