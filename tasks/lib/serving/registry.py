"""The MLflow model registry as ragloop uses it: versions, aliases, promotion and rollback.

Aliases, not the deprecated stages: `challenger` is the newest registered version, `champion`
the one that serves, `previous-champion` the one `rollback` restores. The order of champions
is kept in a registered-model tag, so rollback works more than once and survives the aliases
being moved in the UI: versions deleted since are skipped, and an alias moved by hand counts
as the newest champion (`served_history`).

A version may *pin* versions of other models (tags `pin.<model>`): the RAG bundle pins the
retriever and generator it was evaluated with, and promoting or rolling back the bundle moves
their `champion` aliases with it, so an index never serves with another encoder; a component
alone may only be promoted to the version the bundle's champion pins.

A move checks everything first (the version exists, so does every version it pins), plans
every alias and tag it sets, then writes them; a write that fails undoes those made
(`registry_writes`), so a move completes or changes nothing.

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
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.lib.core.config import Params
from tasks.lib.core.tracking import ensure_experiment, tracking_uri
from tasks.lib.serving.integrity import manifest_tags
from tasks.lib.serving.registry_writes import (
    RegistryError,
    Slot,
    alias_slot,
    apply_writes,
    read_slot,
    tag_slot,
    version_tag_slot,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
HISTORY_TAG = "ragloop.champion_history"  # comma-separated versions, oldest first
EVENT_PREFIX = "ragloop.event."  # + zero-padded number: one alias move, as JSON
PIN_PREFIX = "pin."
TEST_SPLIT_TAG = "test_split"  # run tag: fingerprint of the split the metrics were computed on


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
    """The history tag as written; it may name versions deleted since (see `served_history`)."""
    value = read_slot(client, tag_slot(name, HISTORY_TAG)) or ""
    return [v for v in value.split(",") if v]


def served_history(client: MlflowClient, name: str) -> tuple[list[str], list[str]]:
    """The champions of `name` as they served, oldest first, and notes on what was reconciled.

    Versions deleted since are left out (rollback skips them), and a champion alias moved
    outside ragloop (in the UI) counts as the newest champion, so rollback restores what
    served before it. Every reader of the history goes through here.
    """
    recorded = champion_history(client, name)
    kept = [v for v in recorded if _version_exists(client, name, v)]
    notes = [
        f"{name} v{v} no longer exists: left out of the champion history"
        for v in dict.fromkeys(recorded)
        if v not in kept
    ]
    current = aliases(client, name).get(CHAMPION)
    if current is not None and kept[-1:] != [current]:
        last = _named(kept[-1] if kept else None)
        notes.append(
            f"{name}@champion is v{current}, not {last} as on record: "
            f"v{current} counts as the newest champion"
        )
        kept.append(current)
    return [v for v, _ in groupby(kept)], notes


def _named(version: str | None) -> str:
    return f"v{version}" if version else "none"


def named_versions(versions: Iterable[str]) -> str:
    """Versions as messages and `ragloop history` name them: "v1, v3" (or "none")."""
    return ", ".join(_named(v) for v in versions) or "none"


def _serving_writes(client: MlflowClient, name: str, history: list[str]) -> dict[Slot, str | None]:
    """Every alias and tag that must agree with `history` (last = champion): the champion, the
    previous champion, the history tag, and the champions of the models the champion pins
    (components serve with the bundle that pins them). Refused when a pinned version is gone."""
    champion = history[-1]
    pins = version_pins(client, name, champion)
    gone = [f"{model} v{v}" for model, v in pins.items() if not _version_exists(client, model, v)]
    if gone:
        raise RegistryError(
            f"{name} v{champion} pins {', '.join(gone)}, deleted from the registry, so it "
            f"cannot serve: promote a version of {name} whose pinned versions exist"
        )
    writes: dict[Slot, str | None] = {alias_slot(name, CHAMPION): champion}
    writes |= {alias_slot(model, CHAMPION): v for model, v in pins.items()}
    writes[alias_slot(name, PREVIOUS)] = history[-2] if len(history) > 1 else None
    writes[tag_slot(name, HISTORY_TAG)] = ",".join(history)
    return writes


def _recorded(
    client: MlflowClient, name: str, event: Mapping[str, Any], stamps: Mapping[str, str]
) -> dict[Slot, str | None]:
    """The tag recording one move as the next event, and the version tags (key -> version)
    stamped with its time."""
    events = promotion_events(client, name)
    number = events[-1]["n"] + 1 if events else 1
    at = datetime.now(UTC).isoformat(timespec="seconds")
    record = json.dumps({"n": number, "at": at, **event})
    writes: dict[Slot, str | None] = {tag_slot(name, f"{EVENT_PREFIX}{number:06d}"): record}
    writes |= {version_tag_slot(name, version, key): at for key, version in stamps.items()}
    return writes


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


def _check_pinned(client: MlflowClient, bundle: str | None, name: str, version: str) -> None:
    """A component serves only with the bundle champion that pins it: refuse another version."""
    served = aliases(client, bundle).get(CHAMPION) if bundle and bundle != name else None
    pinned = version_pins(client, bundle, served).get(name) if bundle and served else None
    if pinned is None or pinned == version:
        return
    pinning = [
        f"v{v.version}"
        for v in client.search_model_versions(f"name = '{bundle}'")
        if v.tags.get(f"{PIN_PREFIX}{name}") == version
    ]
    fix = (
        f"promote {bundle} {' or '.join(pinning)}, which pins it"
        if pinning
        else f"register and promote a {bundle} version that pins it"
    )
    raise RegistryError(
        f"{name} v{version}: the serving bundle {bundle} v{served} pins {name} v{pinned}, and a "
        f"component serves only with the bundle that pins it: {fix} (`ragloop promote --version N`)"
    )


@dataclass(frozen=True)
class Move:
    """A champion move as made: the champion now, the one it replaced, and what was reconciled
    on the way (deleted versions skipped, an alias moved by hand)."""

    version: str
    replaced: str | None
    notes: tuple[str, ...] = ()


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    by: str,
    decision: Mapping[str, Any] | None = None,
    bundle: str | None = None,
) -> Move:
    """Make `version` the champion, with every alias and tag that follows, or change nothing.

    `by` ("gate" or "manual: <who>") is tagged on the version, so the UI shows why it serves,
    and recorded in the history with the gate's `decision` summary when there is one.
    `bundle` (register.judged) names the model whose champion pins the components: a component
    is refused at any version but the pinned one. Promoting the champion again re-points its
    components if they were moved away.
    """
    version = str(version)
    if not _version_exists(client, name, version):
        raise RegistryError(f"{name}: no version {version}: `ragloop status` lists the versions")
    _check_pinned(client, bundle, name, version)
    history, notes = served_history(client, name)
    current = aliases(client, name).get(CHAMPION)
    if history[-1:] != [version]:
        history.append(version)
    writes = _serving_writes(client, name, history)
    if current != version:
        event = {"action": "promote", "version": version, "previous": current, "by": by}
        event |= {"decision": dict(decision) if decision is not None else None, "notes": notes}
        writes |= _recorded(client, name, event, {"promoted_at": version})
        writes[version_tag_slot(name, version, "promoted_by")] = by
    apply_writes(client, writes, f"promote {name} v{version}")
    return Move(version, current, tuple(notes))


def promote_judged(
    client: MlflowClient,
    name: str,
    version: str,
    judged_against: str | None,
    decision: Mapping[str, Any],
) -> Move:
    """The gate's promotion, refused when the champion moved after the gate judged `version`
    against it: never replace a champion the candidate was not compared with."""
    now = aliases(client, name).get(CHAMPION)
    if now != judged_against:
        raise RegistryError(
            f"{name}: the gate judged v{version} against champion {_named(judged_against)}, "
            f"but the champion is now {_named(now)}: not promoted; rerun evaluate and register "
            f"to judge it against {_named(now)}, or promote it by hand "
            f"(`ragloop promote --version {version}`)"
        )
    return promote(client, name, version, by="gate", decision=decision)


def rollback(client: MlflowClient, name: str, by: str, bundle: str | None = None) -> Move:
    """Put back the champion before the current one: the newest earlier one still registered
    (with no champion alias, e.g. its version deleted, the newest on record)."""
    history, notes = served_history(client, name)
    current = aliases(client, name).get(CHAMPION)
    earlier = history[:-1] if current is not None else history
    if not earlier:
        known = "; ".join(notes) or f"champions on record: {named_versions(history)}"
        raise RegistryError(
            f"{name}: no earlier champion that still exists to roll back to ({known}): "
            "promote a version by hand (`ragloop promote --version N`)"
        )
    restored = earlier[-1]
    if current is None:
        notes.append(f"{name} has no champion alias: restoring the newest champion on record")
    _check_pinned(client, bundle, name, restored)
    writes = _serving_writes(client, name, earlier)
    event = {"action": "rollback", "version": restored, "previous": current, "by": by}
    event |= {"decision": None, "notes": notes}
    writes |= _recorded(client, name, event, {"rolled_back_at": current} if current else {})
    apply_writes(client, writes, f"roll {name} back to v{restored}")
    return Move(restored, current, tuple(notes))


def serving_notes(client: MlflowClient, name: str) -> list[str]:
    """What in `name`'s serving state is out of line: the history's reconciliation, and pinned
    components whose champion was moved away from the champion's pins."""
    _, notes = served_history(client, name)
    champion = aliases(client, name).get(CHAMPION)
    for model, pinned in (version_pins(client, name, champion) if champion else {}).items():
        held = aliases(client, model).get(CHAMPION)
        if held != pinned:
            notes.append(
                f"{model}@champion is {_named(held)}, but {name} v{champion} pins v{pinned}: "
                f"`ragloop promote --version {champion}` re-points it"
            )
    return notes


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
