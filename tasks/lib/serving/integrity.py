"""What a registered version holds, pinned in the registry's database and checked on download.

Loading a bundle runs its `rag_model.py`, and its components' weights and configs shape every
answer: whoever can write the artifact store could otherwise change what every machine that
serves or evaluates runs. So at registration the sha256 of every file of the folder goes into a
version tag, in the registry's database, which the artifact store's writers cannot touch; every
download of a version is compared with it, file by file, before anything is loaded from it.

A manifest too long for a tag is kept as a file in the registering run's artifacts, and the tag
holds that file's sha256 instead: the file sits in the untrusted store, its digest does not.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.lib.core.io import InputError, read_text
from tasks.lib.core.tracking import file_digest, folder_manifest

if TYPE_CHECKING:
    from mlflow import MlflowClient

MANIFEST_TAG = "ragloop.sha256"  # version tag: compact JSON, relative path -> sha256 of each file
MANIFEST_DIGEST_TAG = "ragloop.sha256.manifest"  # version tag: sha256 of the manifest file
MANIFEST_DIR, MANIFEST_FILE = "ragloop.sha256", "manifest.json"  # run artifact: <dir>/<sha>/<file>
# MLflow caps a version tag at 100,000 characters and MySQL's TEXT column at 65,535 bytes.
TAG_LIMIT = 60_000
REPAIR = "the artifact store was modified after registration; re-register or restore it"


class ArtifactIntegrityError(InputError):
    """A download that is not what was registered: nothing from it may be loaded."""


def manifest_tags(client: MlflowClient, run_id: str, folder: Path) -> dict[str, str]:
    """The version tags that pin the bytes of `folder`, about to be registered from `run_id`;
    a manifest too long for a tag is logged to that run, and its digest is the tag."""
    text = json.dumps(folder_manifest(folder), sort_keys=True, separators=(",", ":"))
    if len(text) <= TAG_LIMIT:
        return {MANIFEST_TAG: text}
    with tempfile.TemporaryDirectory(prefix="ragloop-manifest.") as tmp:
        path = Path(tmp) / MANIFEST_FILE
        path.write_text(text, encoding="utf-8")
        digest = file_digest(path)
        client.log_artifact(run_id, str(path), artifact_path=f"{MANIFEST_DIR}/{digest}")
    return {MANIFEST_DIGEST_TAG: digest}


def registered_manifest(client: MlflowClient, model: str, version: str) -> dict[str, str]:
    """The manifest the registry holds for `version` of `model`; a version registered without
    one cannot be checked, so it is refused."""
    from mlflow.exceptions import MlflowException

    held = client.get_model_version(model, version)
    if MANIFEST_TAG in held.tags:
        return json.loads(held.tags[MANIFEST_TAG])
    if MANIFEST_DIGEST_TAG not in held.tags:
        raise ArtifactIntegrityError(
            f"{model} v{version}: no registered sha256 manifest (version tag {MANIFEST_TAG}): "
            "it was registered before ragloop pinned artifacts, so what the store holds cannot "
            "be checked; re-register it (`dvc repro -f register`, then `ragloop promote "
            "--version N` for the new version)"
        )
    digest = held.tags[MANIFEST_DIGEST_TAG]
    artifact = f"{MANIFEST_DIR}/{digest}/{MANIFEST_FILE}"
    with tempfile.TemporaryDirectory(prefix="ragloop-manifest.") as tmp:
        try:
            path = Path(client.download_artifacts(held.run_id, artifact, tmp))
        except (MlflowException, OSError) as err:
            raise ArtifactIntegrityError(
                f"{model} v{version}: its manifest {artifact} (run {held.run_id}) cannot be read "
                f"({err}): {REPAIR}"
            ) from err
        if file_digest(path) != digest:
            raise ArtifactIntegrityError(
                f"{model} v{version}: its manifest {artifact} does not match its registered "
                f"sha256 {digest}: {REPAIR}"
            )
        return json.loads(read_text(path))


def verify_folder(
    local: Path, manifest: Mapping[str, str], what: str, source: str, inner: str = ""
) -> None:
    """Refuse unless `local` (a download of `inner` of `source`, "" for all of it) holds exactly
    the files `manifest` registered there, byte for byte: none changed, missing or added."""
    from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME

    prefix = f"{inner}/" if inner else ""
    expected = {
        rel: digest
        for rel, digest in manifest.items()
        if not inner or rel == inner or rel.startswith(prefix)
    }
    if local.is_file():
        found = {inner: file_digest(local)}
    else:
        found = {prefix + rel: digest for rel, digest in folder_manifest(local).items()}
    changed = [rel for rel in expected.keys() & found if expected[rel] != found[rel]]
    # MLflow itself writes its name-and-version note into a local store's version folder on a
    # `models:/` download; nothing reads it on load.
    added = found.keys() - expected.keys() - {REGISTERED_MODEL_META_FILE_NAME}
    problems = sorted(
        [(rel, "its bytes changed") for rel in changed]
        + [(rel, "it is missing") for rel in expected.keys() - found]
        + [(rel, "it was never registered") for rel in added]
    )
    if problems:
        rel, reason = problems[0]
        more = f"; and {len(problems) - 1} more file(s)" if len(problems) > 1 else ""
        raise ArtifactIntegrityError(
            f"{source}: artifact {rel} of {what} does not match its registered sha256 "
            f"({reason}{more}): {REPAIR}"
        )


def verified_download(
    client: MlflowClient, model: str, version: str, dst: Path, inner: str = ""
) -> Path:
    """Download `version` of `model` (or only its file or folder `inner`) into a new folder
    under `dst`, check it against the registered manifest, and return its local path."""
    import mlflow
    from mlflow.exceptions import MlflowException

    manifest = registered_manifest(client, model, version)
    root = client.get_model_version_download_uri(model, version).rstrip("/")
    source = f"{root}/{inner}" if inner else root
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source,
                # A fresh folder: nothing left by an earlier download can pass for this one.
                dst_path=tempfile.mkdtemp(prefix="download.", dir=dst),
                tracking_uri=client.tracking_uri,
            )
        )
    except MlflowException as err:
        raise ArtifactIntegrityError(
            f"{source}: cannot download {inner or 'the files'} of {model} v{version} "
            f"({err.message.splitlines()[-1]}): if the artifact store lost them, restore it "
            "or re-register the version"
        ) from err
    verify_folder(local, manifest, f"{model} v{version}", source, inner)
    return local
