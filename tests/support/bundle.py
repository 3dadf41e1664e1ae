"""A tiny RAG bundle and a real sqlite registry to register it in, shared by the bundle tests.

The parts are the suite's tiny encoder, index and generator; the registry is a sqlite MLflow
store with a local artifact root, so a test can reach the registered files on disk as an
attacker with write access to the artifact store would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient

from tasks.lib.core.config import BundleParams, GeneratorParams, PrecisionParams
from tasks.lib.core.io import write_json
from tasks.lib.retrieval.retriever import Fusion
from tasks.lib.serving.bundle import components_spec, pin_components, save_bundle
from tasks.lib.serving.registry import register_models
from tests.support.projects import make_project
from tests.support.retrieval import build_tiny_index, make_tiny_encoder
from tests.support.tiny_generator import INSTRUCTIONS, make_tiny_generator

GENERATOR = GeneratorParams(top_k=2, passage_tokens=12, max_new_tokens=4, instructions=INSTRUCTIONS)
SERVING = BundleParams(
    retriever_model="tiny-retriever",
    generator_model="tiny-generator",
    mode="hybrid",
    depth=5,
    batch_size=4,
)
# fp32 throughout, so a bundle's answers equal a direct fp32 retriever's on any CPU
PRECISION = PrecisionParams(
    encode="fp32", generate="fp32", train_retriever="fp32", train_generator="fp32"
)
RAG = "tiny-rag"
FUSION = Fusion(rrf_k=60, dense_weight=0.7, bm25_weight=0.3, candidates=10)
QUESTIONS = ["Which planet has bright rings?", "What grinds grain with wind?", "Violin strings?"]


def make_bundle_parts(root: Path) -> dict[str, Path]:
    """Two tiny encoders (the index is built by the first), fusion file, tiny generator."""
    encoder, other = make_tiny_encoder(root, seed=0), make_tiny_encoder(root, seed=1)
    build_tiny_index(encoder, root / "index")
    write_json(root / "fusion.json", {"fusion": vars(FUSION)})
    return {
        "root": root,
        "encoder": encoder,
        "other": other,
        "index": root / "index",
        "fusion": root / "fusion.json",
        "generator": make_tiny_generator(root / "generator"),
    }


def make_bundle(parts: dict[str, Path], out: Path) -> Path:
    spec = components_spec(parts["encoder"], parts["generator"], GENERATOR, SERVING, PRECISION)
    save_bundle(out, parts["index"], parts["fusion"], spec)
    return out


def sqlite_registry(root: Path) -> tuple[str, str]:
    """(tracking URI, experiment id) of a fresh sqlite store whose artifacts live in `root`."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(root / "art").as_uri())
    return uri, experiment


def register_bundle(
    client: MlflowClient, experiment: str, parts: dict[str, Path], bundle_dir: Path
) -> dict[str, str]:
    """The tiny retriever, generator and bundle (pinning them) registered from a new run."""
    run_id = client.create_run(experiment).info.run_id
    folders = {
        SERVING.retriever_model: parts["encoder"],
        SERVING.generator_model: parts["generator"],
        RAG: bundle_dir,
    }
    return register_models(client, run_id, folders, RAG, pin_components)


def serving_project(root: Path, **overrides: Any) -> Path:
    """A tracked project whose registry models are the tiny bundle's (their folders are never
    read: the versions come from the registry); its params file."""
    models = {SERVING.retriever_model: "r", SERVING.generator_model: "g", RAG: "b"}
    return make_project(
        root, tracked=True, register__models=models, register__judged=RAG, **overrides
    )


def stored_folder(client: MlflowClient, model: str, version: str) -> Path:
    """Where a local artifact store keeps a registered version's files."""
    return Path(unquote(urlparse(client.get_model_version_download_uri(model, version)).path))
