"""Loading a bundle never runs code nobody registered: real attacks on a tiny bundle, refused.

Each attack writes a marker file when its code runs. A local folder is checked for pickles, for
a pyfunc flavor naming another loader and for a `rag_model.py` other than the installed one; a
registered version (the bundle and each component it pins) is checked file by file against the
sha256 manifest the registry's database holds, on a real sqlite store whose artifact folder the
test edits as anyone with write access to the artifact store could.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from tasks.lib.core.io import InputError
from tasks.lib.retrieval.index_store import DOCS_FILE
from tasks.lib.serving.bundle import INDEX, load_bundle, load_registered_bundle
from tasks.lib.serving.champion import bundle_artifact
from tasks.lib.serving.integrity import (
    MANIFEST_DIGEST_TAG,
    MANIFEST_DIR,
    MANIFEST_FILE,
    MANIFEST_TAG,
    ArtifactIntegrityError,
    verified_download,
)
from tasks.lib.serving.registry import promote, register_folder
from tests.support.bundle import (
    QUESTIONS,
    RAG,
    SERVING,
    register_bundle,
    stored_folder,
)
from tests.support.projects import make_project

RETRIEVER, GENERATOR = SERVING.retriever_model, SERVING.generator_model


class WritesMarker:
    """Unpickling this runs `exec`: what a malicious python_model.pkl does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def marker_code(marker: Path) -> str:
    """A rag_model.py that writes `marker` when it runs, then builds the real model."""
    return (
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "from mlflow.models import set_model\n"
        "from tasks.lib.serving.bundle import RagBundle\n"
        "set_model(RagBundle())\n"
    )


def pickled_bundle(bundle_dir: Path, out: Path, marker: Path) -> Path:
    """The bundle turned into the classic MLflow attack: its flavor loads python_model.pkl."""
    shutil.copytree(bundle_dir, out)
    (out / "python_model.pkl").write_bytes(pickle.dumps(WritesMarker(marker)))
    mlmodel = yaml.safe_load((out / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    del flavor["model_code_path"]
    flavor.update(loader_module="mlflow.pyfunc.model", python_model="python_model.pkl")
    (out / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return out


@pytest.fixture
def registered(client: MlflowClient, store: tuple[str, str], parts, bundle_dir) -> dict[str, str]:
    """A fresh registration of the tiny retriever, generator and bundle: model -> version."""
    return register_bundle(client, store[1], parts, bundle_dir)


def test_a_pickled_bundle_is_refused_before_anything_is_unpickled(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    attack = pickled_bundle(bundle_dir, tmp_path / "attack", marker)
    # Even with MLflow's own pickle guard off, ragloop refuses: it never reaches MLflow.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(InputError, match=r"python_model\.pkl: a pickle in a bundle folder"):
        load_bundle(attack)
    assert not marker.exists()
    result = CliRunner().invoke(app, ["ask", "Which planet?", "--bundle", str(attack)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "python_model.pkl: a pickle" in result.stderr
    assert "Traceback" not in result.output and not marker.exists()
    # The attack is real: MLflow alone would have run it.
    with pytest.raises(Exception):  # noqa: B017 - the payload is not a model
        mlflow.pyfunc.load_model(str(attack))
    assert marker.read_text() == "pwned"


def test_a_pickle_under_another_name_or_another_loader_is_refused(
    bundle_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    hidden = shutil.copytree(bundle_dir, tmp_path / "hidden")
    (hidden / "artifacts/index/extra.bin").write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(InputError, match=r"extra\.bin: a pickle"):
        load_bundle(hidden)
    other_loader = pickled_bundle(bundle_dir, tmp_path / "loader", marker)
    (other_loader / "python_model.pkl").unlink()
    with pytest.raises(InputError, match=r"loads with 'mlflow\.pyfunc\.model'"):
        load_bundle(other_loader)
    assert not marker.exists()


def test_a_local_bundle_whose_model_code_was_replaced_is_refused(
    bundle_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    attack = shutil.copytree(bundle_dir, tmp_path / "attack")
    (attack / "rag_model.py").write_text(marker_code(marker))
    with pytest.raises(InputError, match=r"rag_model\.py: not the installed .*rag_model\.py"):
        load_bundle(attack)
    assert not marker.exists()
    mlflow.pyfunc.load_model(str(attack))  # the attack is real: MLflow alone runs that code
    assert marker.read_text() == "pwned"


def test_a_registered_bundle_whose_code_was_edited_in_the_store_is_refused(
    client: MlflowClient, registered: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    version = registered[RAG]
    (stored_folder(client, RAG, version) / "rag_model.py").write_text(marker_code(marker))
    expected = (
        rf"artifact rag_model\.py of {RAG} v{version} does not match its registered sha256 "
        r"\(its bytes changed\): the artifact store was modified after registration; "
        "re-register or restore it"
    )
    with pytest.raises(ArtifactIntegrityError, match=expected):
        load_registered_bundle(client, RAG, version, tmp_path / "dl")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("model", "file", "reason"),
    [
        (RETRIEVER, "model.safetensors", "its bytes changed"),
        (GENERATOR, "config.json", "its bytes changed"),
        (GENERATOR, "tokenizer.json", "it is missing"),
        (RAG, "python_model.pkl", "it was never registered"),
    ],
)
def test_a_changed_missing_or_added_file_of_a_registered_version_is_named(
    client: MlflowClient, registered: dict[str, str], tmp_path: Path, model, file, reason
) -> None:
    path = stored_folder(client, model, registered[model]) / file
    if reason == "it is missing":
        path.unlink()
    elif reason == "it was never registered":
        path.write_bytes(pickle.dumps({"a": 1}))
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one byte
        path.write_bytes(bytes(data))
    # Through the bundle, which pins the components: the component download is refused.
    with pytest.raises(ArtifactIntegrityError) as refused:
        load_registered_bundle(client, RAG, registered[RAG], tmp_path / "dl")
    assert f"artifact {file} of {model} v{registered[model]} does not match" in str(refused.value)
    assert f"({reason})" in str(refused.value)


def test_ask_from_the_registry_refuses_a_tampered_champion_in_the_error_style(
    client: MlflowClient, registered: dict[str, str], tmp_path: Path
) -> None:
    params_file = make_project(
        tmp_path,
        tracked=True,
        register__models={RETRIEVER: "r", GENERATOR: "g", RAG: "b"},
        register__judged=RAG,
    )
    version = registered[RAG]
    promote(client, RAG, version, by="test")
    ask = ["ask", QUESTIONS[0], "--params", str(params_file)]
    served = CliRunner().invoke(app, ask)
    assert served.exit_code == 0, served.output
    assert f"sources (models:/{RAG}/{version} (@champion)):" in served.stdout
    data = stored_folder(client, RETRIEVER, registered[RETRIEVER]) / "config.json"
    data.write_text(data.read_text().replace("32", "33"))
    # This machine keeps serving the bytes it checked when it downloaded them; a machine
    # without them in its component cache downloads the tampered ones and refuses them.
    assert CliRunner().invoke(app, ask).exit_code == 0
    shutil.rmtree(tmp_path / "data" / "cache" / "components")
    result = CliRunner().invoke(app, ask)
    assert result.exit_code == 1
    message = result.stderr.splitlines()[-1]  # after MLflow's download progress bars
    assert message.startswith("error: ") and "re-register or restore it" in message
    assert f"artifact config.json of {RETRIEVER} v{registered[RETRIEVER]}" in message
    assert "Traceback" not in result.output


def test_an_untampered_registered_bundle_answers_and_leaves_no_component_download(
    client: MlflowClient,
    registered: dict[str, str],
    bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the components download
    served = load_registered_bundle(client, RAG, registered[RAG], tmp_path / "dl")
    assert served.predict(QUESTIONS) == load_bundle(bundle_dir).predict(QUESTIONS)
    assert not list(scratch.iterdir())  # loaded, then deleted: the models are in memory


def test_untampered_downloads_pass_whole_and_in_part_and_a_partial_one_is_checked(
    client: MlflowClient, registered: dict[str, str], tmp_path: Path
) -> None:
    version = registered[RAG]
    folder = verified_download(client, RAG, version, tmp_path / "all")
    assert set(json.loads(client.get_model_version(RAG, version).tags[MANIFEST_TAG])) == {
        path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
    }
    docs = bundle_artifact(client, RAG, version, INDEX, tmp_path / "part", DOCS_FILE)
    assert docs.name == DOCS_FILE and docs.read_text()
    stored = stored_folder(client, RAG, version) / "artifacts" / INDEX / DOCS_FILE
    stored.write_text(stored.read_text().replace("Saturn", "Uranus"))
    with pytest.raises(ArtifactIntegrityError, match=rf"artifact artifacts/index/{DOCS_FILE} of"):
        bundle_artifact(client, RAG, version, INDEX, tmp_path / "again", DOCS_FILE)
    stored.unlink()
    lost = rf"cannot download artifacts/index/{DOCS_FILE} of {RAG} v{version}"
    with pytest.raises(ArtifactIntegrityError, match=lost):
        bundle_artifact(client, RAG, version, INDEX, tmp_path / "gone", DOCS_FILE)


def test_a_version_registered_without_a_manifest_is_refused(
    client: MlflowClient, store: tuple[str, str], parts, tmp_path: Path
) -> None:
    run_id = client.create_run(store[1]).info.run_id
    client.log_artifacts(run_id, str(parts["encoder"]), artifact_path="old")
    client.create_registered_model("old-retriever")  # as register_folder did before manifests
    source = f"{client.get_run(run_id).info.artifact_uri}/old"
    client.create_model_version("old-retriever", source=source, run_id=run_id)
    with pytest.raises(ArtifactIntegrityError, match=r"old-retriever v1: no registered sha256"):
        verified_download(client, "old-retriever", "1", tmp_path)
    assert not list(tmp_path.iterdir())  # refused before any download


def test_a_manifest_too_long_for_a_tag_is_a_file_pinned_by_its_digest(
    client: MlflowClient, store: tuple[str, str], tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(500):  # each entry ~170 characters: the manifest outgrows a tag
        (shards / f"{'s' * 90}{i:05d}.bin").write_bytes(bytes([i % 256]))
    run_id = client.create_run(store[1]).info.run_id
    version = register_folder(client, "sharded", shards, run_id)
    tags = client.get_model_version("sharded", version).tags
    assert MANIFEST_TAG not in tags
    digest = tags[MANIFEST_DIGEST_TAG]
    checked = verified_download(client, "sharded", version, tmp_path / "ok")
    assert len(list(checked.iterdir())) == 500
    # An attacker rewrites a shard and the manifest file to match: the digest in the DB holds.
    stored = stored_folder(client, "sharded", version)
    shard = next(stored.iterdir())
    shard.write_bytes(b"evil")
    run_dir = stored.parent
    manifest_file = run_dir / MANIFEST_DIR / digest / MANIFEST_FILE
    manifest = json.loads(manifest_file.read_text())
    manifest[shard.name] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    refused = rf"sharded v{version}: its manifest .* does not match its registered sha256"
    with pytest.raises(ArtifactIntegrityError, match=refused):
        verified_download(client, "sharded", version, tmp_path / "bad")
