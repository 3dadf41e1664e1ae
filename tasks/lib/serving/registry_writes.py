"""Registry writes that complete or change nothing.

MLflow has no transaction over aliases and tags: a champion move is several calls, and a store
that fails halfway would leave the champion, its history and its pinned components
disagreeing. So a move is planned first as data (`Writes`: each slot and the value it must
hold), the slots' values are read, and only the slots that change are written; when a write
fails, the ones already made are put back (best effort, and the error says whether it worked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tasks.lib.core.io import InputError

if TYPE_CHECKING:
    from mlflow import MlflowClient


class RegistryError(InputError):
    """A registry request that cannot be carried out as asked (the message says why).

    An InputError, so a stage's `run_stage` prints it as one line, as the CLI does."""


@dataclass(frozen=True)
class Slot:
    """One value a move writes: an alias of a model, a tag of a model, or a tag of a version."""

    kind: Literal["alias", "tag", "version tag"]
    model: str
    key: str
    version: str | None = None  # the tagged version, for a version tag

    def __str__(self) -> str:
        if self.kind == "alias":
            return f"{self.model}@{self.key}"
        owner = f"{self.model} v{self.version}" if self.version else self.model
        return f"{owner} tag {self.key}"


Writes = Mapping[Slot, str | None]  # slot -> value it must hold; None: absent


def alias_slot(model: str, alias: str) -> Slot:
    return Slot("alias", model, alias)


def tag_slot(model: str, key: str) -> Slot:
    return Slot("tag", model, key)


def version_tag_slot(model: str, version: str, key: str) -> Slot:
    return Slot("version tag", model, key, version)


def read_slot(client: MlflowClient, slot: Slot) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        if slot.kind == "version tag":
            return client.get_model_version(slot.model, slot.version).tags.get(slot.key)
        held = client.get_registered_model(slot.model)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if slot.kind == "alias":
        version = held.aliases.get(slot.key)
        return None if version is None else str(version)
    return held.tags.get(slot.key)


def write_slot(client: MlflowClient, slot: Slot, value: str | None) -> None:
    if slot.kind == "alias":
        if value is None:
            client.delete_registered_model_alias(slot.model, slot.key)
        else:
            client.set_registered_model_alias(slot.model, slot.key, value)
    elif slot.kind == "tag":
        if value is None:
            client.delete_registered_model_tag(slot.model, slot.key)
        else:
            client.set_registered_model_tag(slot.model, slot.key, value)
    elif value is None:
        client.delete_model_version_tag(slot.model, slot.version, slot.key)
    else:
        client.set_model_version_tag(slot.model, slot.version, slot.key, value)


def apply_writes(client: MlflowClient, writes: Writes, what: str) -> None:
    """Write every slot that changes, in order; on a failure put back those written, then raise
    a RegistryError naming the failed slot and the outcome of the restore."""
    prior = {slot: read_slot(client, slot) for slot in writes}
    changed = [slot for slot, value in writes.items() if value != prior[slot]]
    for done, slot in enumerate(changed):
        try:
            write_slot(client, slot, writes[slot])
        except Exception as err:  # any failure: the store must not stay half-moved
            # One call is one store transaction: the failed write itself left nothing.
            restored = restore(client, {s: prior[s] for s in changed[:done]})
            raise RegistryError(f"{what}: writing {slot} failed ({err}); {restored}") from err


def restore(client: MlflowClient, prior: Writes) -> str:
    """Put `prior` back, last write first; say whether it worked and, if not, what to set."""
    for slot in reversed(list(prior)):
        try:
            write_slot(client, slot, prior[slot])
        except Exception as err:  # reported with what is left to set by hand
            by_hand = ", ".join(f"{s} = {v or 'none'}" for s, v in prior.items())
            return (
                f"restoring the prior state failed too at {slot} ({err}): set by hand "
                f"(MLflow UI) {by_hand}, then check `ragloop status`"
            )
    return "nothing was changed (the writes made were undone): retry when the store answers"
