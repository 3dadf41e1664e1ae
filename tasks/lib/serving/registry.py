"""The MLflow model registry as ragloop uses it: versions, aliases, promotion and rollback.

Aliases, not the deprecated stages: `challenger` is the newest registered version, `champion`
the one that serves, `previous-champion` the one `rollback` restores. The order of champions
is kept in a registered-model tag, so rollback works more than once and survives the aliases
being moved in the UI.

A version may *pin* versions of other models (tags `pin.<model>`): the RAG bundle pins the
retriever and generator it was evaluated with, and promoting or rolling back the bundle moves
their `champion` aliases with it, so an index never serves with another encoder.

MLflow keeps no history of alias moves, so every move made here (the gate's promotion, a
manual promote, a rollback) is recorded as an event on the registered model: a tag
`ragloop.event.<n>` holding a small JSON (`promotion_events` reads them back, oldest first).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.lib.core.config import Params
from tasks.lib.core.tracking import ensure_experiment, tracking_uri
from tasks.lib.serving.integrity import manifest_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
HISTORY_TAG = "ragloop.champion_history"  # comma-separated versions, oldest first
EVENT_PREFIX = "ragloop.event."  # + zero-padded number: one alias move, as JSON
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
    URI instead, and `models:/name/N` then downloads exactly that folder. The sha256 of its
    every file is tagged on the version (`integrity.manifest_tags`): downloads are checked
    against it before anything is loaded.
    """
    if not folder.is_dir():
        raise RegistryError(f"{folder}: model folder not found (did its stage run?)")
    tags = {**(tags or {}), **manifest_tags(client, run_id, folder)}
    client.log_artifacts(run_id, str(folder), artifact_path=name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{name}"
    ensure_registered_model(client, name)
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
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
    with tempfile.TemporaryDirectory(prefix="ragloop-register.") as staging:
        judged_folder = folders[judged]
        if pin_into is not None:
            judged_folder = Path(shutil.copytree(judged_folder, Path(staging) / judged))
            pin_into(judged_folder, dict(versions))
        versions[judged] = register_folder(
            client, judged, judged_folder, run_id, pin_tags(versions)
        )
    for name, version in versions.items():
        client.set_registered_model_alias(name, CHALLENGER, version)
    return versions


def pin_tags(versions: Mapping[str, str]) -> dict[str, str]:
    return {f"{PIN_PREFIX}{name}": version for name, version in versions.items()}


def version_pins(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """model -> version that `version` of `name` pins."""
    tags = client.get_model_version(name, version).tags
    return {k.removeprefix(PIN_PREFIX): v for k, v in tags.items() if k.startswith(PIN_PREFIX)}


def register_pinned(
    client: MlflowClient, run_id: str, name: str, folder: Path, pins: Mapping[str, str]
) -> str:
    """Register `folder` alone, pinning component versions registered before (a refreshed
    index over the champion's models); the new version becomes the `challenger`."""
    version = register_folder(client, name, folder, run_id, pin_tags(pins))
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def _version_exists(client: MlflowClient, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


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
    for model, version in version_pins(client, name, history[-1]).items():
        client.set_registered_model_alias(model, CHAMPION, version)


def record_event(
    client: MlflowClient,
    name: str,
    action: str,
    version: str,
    previous: str | None,
    by: str,
    decision: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Append one alias move to the registered model's history and return it."""
    events = promotion_events(client, name)
    number = events[-1]["n"] + 1 if events else 1
    event = {
        "n": number,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "version": version,
        "previous": previous,
        "by": by,
        "decision": dict(decision) if decision is not None else None,
    }
    client.set_registered_model_tag(name, f"{EVENT_PREFIX}{number:06d}", json.dumps(event))
    return event


def promotion_events(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of `name`, oldest first; empty when it is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return [json.loads(tags[key]) for key in sorted(tags) if key.startswith(EVENT_PREFIX)]


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    by: str,
    decision: Mapping[str, Any] | None = None,
) -> str | None:
    """Make `version` the champion; return the champion it replaced (None if there was none).

    `by` ("gate" or "manual: <who>") is tagged on the version, so the UI shows why it serves,
    and recorded in the history with the gate's `decision` summary when there is one.
    """
    version = str(version)
    if not _version_exists(client, name, version):
        raise RegistryError(f"{name}: no version {version}")
    history = champion_history(client, name)
    current = aliases(client, name).get(CHAMPION)
    if current and (not history or history[-1] != current):
        history.append(current)  # the alias was moved by hand: keep that champion in history
    if current == version:
        return current
    history.append(version)
    _point_champion(client, name, history)
    event = record_event(client, name, "promote", version, current, by, decision)
    client.set_model_version_tag(name, version, "promoted_by", by)
    client.set_model_version_tag(name, version, "promoted_at", event["at"])
    return current


def rollback(client: MlflowClient, name: str, by: str) -> tuple[str, str]:
    """Put the previous champion back; return (retired version, restored version)."""
    history = champion_history(client, name)
    if len(history) < 2:
        raise RegistryError(f"{name}: no previous champion to roll back to (history {history})")
    retired = history.pop()
    _point_champion(client, name, history)
    event = record_event(client, name, "rollback", history[-1], retired, by, None)
    client.set_model_version_tag(name, retired, "rolled_back_at", event["at"])
    return retired, history[-1]


def version_metrics(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    """The metrics of the run that registered `version` (the register stage logs them there)."""
    run_id = client.get_model_version(name, version).run_id
    return dict(client.get_run(run_id).data.metrics) if run_id else {}


def version_run_tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    run_id = client.get_model_version(name, version).run_id
    return dict(client.get_run(run_id).data.tags) if run_id else {}


def version_run_file(
    client: MlflowClient, name: str, version: str, artifact: str, dst: Path
) -> Path | None:
    """Download one artifact file of the run that registered `version`; None if it has none."""
    from mlflow.exceptions import MlflowException

    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None
    try:
        return Path(client.download_artifacts(run_id, artifact, str(dst)))
    except (MlflowException, OSError):
        return None


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
