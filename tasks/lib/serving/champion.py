"""The champion as the registry holds it: the bundle version that serves, the component
versions it pins, and the docs its index was built from.

The refresh path diffs the new KB against this and never against a local file: the champion may
have been promoted by hand or from another machine, and only the registry knows which one
serves. Only the files needed are downloaded (the index's `docs.jsonl`, not its vectors), each
checked against the version's registered manifest; where a bundle keeps each artifact is read
from its MLmodel file, as pyfunc itself does.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.models import Model

from tasks.lib.core.io import InputError, json_lines, read_text
from tasks.lib.retrieval.index_store import DOCS_FILE
from tasks.lib.retrieval.retriever import Retriever
from tasks.lib.serving.bundle import COMPONENT_ROLES, COMPONENTS, FUSION, INDEX, bundle_retriever
from tasks.lib.serving.integrity import verified_download
from tasks.lib.serving.registry import CHAMPION, aliases

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class ChampionState:
    model: str
    version: str
    components: dict[str, dict[str, str]]  # role -> {"model", "version"} it serves with
    docs: list[dict[str, str]]  # id, title, text of every doc its index holds


def bundle_artifact(
    client: MlflowClient, model: str, version: str, key: str, dst: Path, inner: str = ""
) -> Path:
    """Download the bundle artifact `key` (index, fusion, components) of a registered version,
    or only the file `inner` inside it, into `dst`, each download checked against the version's
    registered manifest."""
    mlmodel = Model.load(str(verified_download(client, model, version, dst, "MLmodel")))
    artifacts = mlmodel.flavors.get("python_function", {}).get("artifacts") or {}
    if key not in artifacts:
        raise InputError(f"{model} v{version}: not a ragloop bundle (no {key!r} artifact)")
    relative = "/".join(part for part in (artifacts[key]["path"], inner) if part)
    return verified_download(client, model, version, dst, relative)


def champion_retriever(
    client: MlflowClient, model: str, dst: Path, dense: bool = True
) -> tuple[str, Retriever] | None:
    """(version, retriever) of the champion bundle of `model`: what it searches as it serves,
    without loading its generator (nor, `dense=False`, its encoder); None when there is no
    champion."""
    version = aliases(client, model).get(CHAMPION)
    if version is None:
        return None
    spec = json.loads(read_text(bundle_artifact(client, model, version, COMPONENTS, dst)))
    index_dir = bundle_artifact(client, model, version, INDEX, dst)
    fusion_file = bundle_artifact(client, model, version, FUSION, dst)
    return version, bundle_retriever(index_dir, fusion_file, spec, dense)


def champion_state(client: MlflowClient, model: str) -> ChampionState | None:
    """The champion of `model` (a RAG bundle), or None when there is none yet."""
    version = aliases(client, model).get(CHAMPION)
    if version is None:
        return None
    with tempfile.TemporaryDirectory(prefix="ragloop-champion.") as tmp:
        spec = json.loads(read_text(bundle_artifact(client, model, version, COMPONENTS, Path(tmp))))
        docs_file = bundle_artifact(client, model, version, INDEX, Path(tmp), DOCS_FILE)
        docs = [doc for _, doc in json_lines(docs_file)]
    components = {}
    for role in COMPONENT_ROLES:
        pinned = spec[role]
        if "version" not in pinned:
            raise InputError(
                f"{model} v{version} (champion): its {role} {pinned['model']!r} is a local folder, "
                "not a registered version: promote a bundle the register stage registered"
            )
        components[role] = {"model": pinned["model"], "version": str(pinned["version"])}
    return ChampionState(model, version, components, docs)
