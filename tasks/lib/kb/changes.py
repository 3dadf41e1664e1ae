"""The KB change set: which doc ids the new KB adds, modifies or deletes against the KB the
champion serves, and the champion versions a refresh must keep.

A doc's content is what retrieval sees of it, its title and text, hashed; its other fields
(source, description) may change without the index changing. The change set is written sorted
and without timestamps, so an unchanged KB and champion give a byte-identical file and the
stages after it skip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tasks.lib.core.io import InputError, read_text
from tasks.lib.core.records import Doc
from tasks.lib.core.skipped import write_skipped_folder

NO_REGISTRY = "tracking is disabled (tracking.enabled: false): no registry, so no champion"
NO_CHAMPION = "no champion in the registry yet: the retrain path makes the first one"
UNCHANGED = "the champion already serves this KB"


def content_hash(title: str, text: str) -> str:
    """sha256 of what retrieval sees of a doc."""
    return hashlib.sha256(json.dumps([title, text], ensure_ascii=False).encode()).hexdigest()


def content_hashes(docs: Iterable[Doc | Mapping[str, str]]) -> dict[str, str]:
    """Doc id -> content hash, for canonical docs or an index's `docs.jsonl` rows."""
    rows = (d.model_dump() if isinstance(d, Doc) else d for d in docs)
    return {row["id"]: content_hash(row["title"], row["text"]) for row in rows}


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pinned(_Record):
    """A registered model version."""

    model: str
    version: str


class ChampionRef(_Record):
    """The champion bundle version and the component versions it serves with."""

    model: str
    version: str
    retriever: Pinned
    generator: Pinned


class ChangeSet(_Record):
    """The new KB against the champion's; `nothing_to_refresh` says why there is no refresh."""

    champion: ChampionRef | None
    nothing_to_refresh: str | None
    counts: dict[str, int]
    added: list[str]
    modified: list[str]
    deleted: list[str]

    @classmethod
    def without_champion(cls, reason: str) -> ChangeSet:
        counts = dict.fromkeys(("added", "modified", "deleted", "unchanged"), 0)
        return cls(
            champion=None,
            nothing_to_refresh=reason,
            counts=counts,
            added=[],
            modified=[],
            deleted=[],
        )

    @model_validator(mode="after")
    def _says_why_not(self) -> ChangeSet:
        if self.champion is None and not self.nothing_to_refresh:
            raise ValueError("no champion, and no nothing_to_refresh reason")
        return self

    @property
    def changed(self) -> list[str]:
        """The docs a refresh must embed and question: added and modified."""
        return sorted([*self.added, *self.modified])


def diff_kb(new: Mapping[str, str], served: Mapping[str, str], champion: ChampionRef) -> ChangeSet:
    """The change set from `served` (the champion's id -> content hash) to `new`."""
    added = sorted(new.keys() - served.keys())
    deleted = sorted(served.keys() - new.keys())
    common = new.keys() & served.keys()
    modified = sorted(i for i in common if new[i] != served[i])
    return ChangeSet(
        champion=champion,
        nothing_to_refresh=None if added or modified or deleted else UNCHANGED,
        counts={
            "added": len(added),
            "modified": len(modified),
            "deleted": len(deleted),
            "unchanged": len(common) - len(modified),
        },
        added=added,
        modified=modified,
        deleted=deleted,
    )


def read_change_set(path: Path) -> ChangeSet:
    try:
        return ChangeSet.model_validate_json(read_text(path))
    except ValidationError as err:
        problem = err.errors()[0]["msg"]
        raise InputError(f"{path}: not a change set ({problem}): rerun kb_changes") from err


def champion_to_refresh(changes: ChangeSet, out_dir: Path, stage: str) -> ChampionRef | None:
    """The champion a refresh stage works from; None, with only the marker left in the stage's
    output folder `out_dir`, when there is nothing to refresh."""
    if changes.nothing_to_refresh is None and changes.champion is not None:
        return changes.champion
    reason = str(changes.nothing_to_refresh)
    write_skipped_folder(out_dir, reason)
    print(f"{stage}: nothing to refresh: {reason}")
    return None
