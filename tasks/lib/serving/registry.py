"""The MLflow model registry as ragloop uses it: versions, aliases, promotion and rollback.

Aliases, not the deprecated stages: `challenger` is the newest registered version, `champion`
the one that serves, `previous-champion` the one `rollback` restores. The order of champions
is kept in a registered-model tag, so rollback works more than once and survives the aliases
being moved in the UI.

A version may *pin* versions of other models (tags `pin.<model>`): the RAG bundle pins the
retriever and generator it was evaluated with, and promoting or rolling back the bundle moves
their `champion` aliases with it, so an index never serves with another encoder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.lib.core.config import Params
from tasks.lib.core.tracking import ensure_experiment, tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
HISTORY_TAG = "ragloop.champion_history"  # comma-separated versions, oldest first
PIN_PREFIX = "pin."
TEST_SPLIT_TAG = "test_split"  # run tag: fingerprint of the split the metrics were computed on


class RegistryError(Exception):
    """A registry request that cannot be carried out as asked (the message says why)."""


def registry_client(params: Params) -> MlflowClient:
    """A client on the project's store (env > params > local sqlite), experiment created."""
    from mlflow import MlflowClient

    ensure_experiment(params)
    return MlflowClient(tracking_uri(params))


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register_folder(
    client: MlflowClient,
    name: str,
    folder: Path,
    run_id: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Upload `folder` into the run's artifacts and register it as a new version of `name`.

    `mlflow.register_model("runs:/...")` wants a logged model (MLmodel file); a plain folder
    (a sentence-transformers save, a HF save, a saved pyfunc) is registered from its artifact
    URI instead, and `models:/name/N` then downloads exactly that folder.
    """
    if not folder.is_dir():
        raise RegistryError(f"{folder}: model folder not found (did its stage run?)")
    client.log_artifacts(run_id, str(folder), artifact_path=name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{name}"
    ensure_registered_model(client, name)
    version = client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags or {}))
    return str(version.version)


def register_models(
    client: MlflowClient,
    run_id: str,
    folders: Mapping[str, Path],
    judged: str,
    pin_into: Callable[[Path, dict[str, str]], None] | None = None,
) -> dict[str, str]:
    """Register every folder as a new version, the judged model last pinning all the others.

    `pin_into(copy, versions)` may write the component versions into a copy of the judged
    folder before it is uploaded (the RAG bundle loads its components by those versions); the
    pins are also tags of the judged version. Every new version becomes its model's `challenger`.
    """
    versions = {
        name: register_folder(client, name, folder, run_id)
        for name, folder in folders.items()
        if name != judged
    }
    pins = {f"{PIN_PREFIX}{name}": version for name, version in versions.items()}
    with tempfile.TemporaryDirectory(prefix="ragloop-register.") as staging:
        judged_folder = folders[judged]
        if pin_into is not None:
            judged_folder = Path(shutil.copytree(judged_folder, Path(staging) / judged))
            pin_into(judged_folder, dict(versions))
        versions[judged] = register_folder(client, judged, judged_folder, run_id, pins)
    for name, version in versions.items():
        client.set_registered_model_alias(name, CHALLENGER, version)
    return versions


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of `name`; empty when the model is not registered yet."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(v) for alias, v in held.items()}


def champion_history(client: MlflowClient, name: str) -> list[str]:
    value = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in value.split(",") if v]


def _point_champion(client: MlflowClient, name: str, history: list[str]) -> None:
    """Make the aliases and the history tag agree with `history` (last = champion)."""
    client.set_registered_model_alias(name, CHAMPION, history[-1])
    if len(history) > 1:
        client.set_registered_model_alias(name, PREVIOUS, history[-2])
    elif PREVIOUS in aliases(client, name):
        client.delete_registered_model_alias(name, PREVIOUS)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))
    # Components pinned by the new champion serve with it.
    pins = client.get_model_version(name, history[-1]).tags
    for key, version in pins.items():
        if key.startswith(PIN_PREFIX):
            client.set_registered_model_alias(key.removeprefix(PIN_PREFIX), CHAMPION, version)


def promote(client: MlflowClient, name: str, version: str, by: str) -> str | None:
    """Make `version` the champion; return the champion it replaced (None if there was none).

    `by` ("gate" or "manual: <who>") is tagged on the version, so the UI shows why it serves.
    """
    from mlflow.exceptions import MlflowException

    version = str(version)
    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        raise RegistryError(f"{name}: no version {version} ({err.message})") from err
    history = champion_history(client, name)
    current = aliases(client, name).get(CHAMPION)
    if current and (not history or history[-1] != current):
        history.append(current)  # the alias was moved by hand: keep that champion in history
    if current == version:
        return current
    history.append(version)
    _point_champion(client, name, history)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, version, "promoted_by", by)
    client.set_model_version_tag(name, version, "promoted_at", now)
    return current


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Put the previous champion back; return (retired version, restored version)."""
    history = champion_history(client, name)
    if len(history) < 2:
        raise RegistryError(f"{name}: no previous champion to roll back to (history {history})")
    retired = history.pop()
    _point_champion(client, name, history)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, retired, "rolled_back_at", now)
    return retired, history[-1]


def version_metrics(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    """The metrics of the run that registered `version` (the register stage logs them there)."""
    run_id = client.get_model_version(name, version).run_id
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def version_run_tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    run_id = client.get_model_version(name, version).run_id
    return dict(client.get_run(run_id).data.tags) if run_id else {}


@dataclass(frozen=True)
class AliasStatus:
    model: str
    alias: str
    version: str
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)


def status(client: MlflowClient, names: Iterable[str]) -> list[AliasStatus]:
    """Champion, challenger and previous champion of each registered model, with metrics."""
    rows = []
    for name in names:
        held = aliases(client, name)
        for alias in ALIASES:
            if alias in held:
                version = held[alias]
                run_id = client.get_model_version(name, version).run_id
                rows.append(
                    AliasStatus(
                        name, alias, version, run_id, version_metrics(client, name, version)
                    )
                )
    return rows
