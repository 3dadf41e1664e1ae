"""The fingerprint of the KB *source*, and the one the last successful retrain or refresh consumed.

The source is what `ingest` reads (the packaged files, or the user's KB folder and QA file, and
the updates folder with its deletions file), fingerprinted before ingest runs, so the watcher
can tell a changed KB without running any stage. The recorded fingerprint lives in `.state/`
of the project and is written only when a flow succeeds: a failed run leaves the old one, and
the next check tries again.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from tasks.lib.core.assets import package_file
from tasks.lib.core.config import IngestParams
from tasks.lib.core.io import InputError, atomic_path, write_json
from tasks.lib.core.tracking import file_digest
from tasks.lib.kb.sources import FANOUT_FILE, FANOUT_PACKAGE, WIKI_FILE, WIKI_PACKAGE, kb_files

STATE_FILE = Path(".state") / "kb_source_fingerprint.json"


def source_files(params: IngestParams) -> list[tuple[str, Path]]:
    """(stable name, path) of every file ingest reads, in a deterministic order.

    Names are relative, so moving the project folder does not look like a KB change, while
    renaming a KB file (which renames its doc id) does.
    """
    updates, deletions = params.updates_folder, params.deletions_path
    added = kb_files(updates, deletions) if updates.is_dir() else []
    named_updates = [(f"updates/{p.relative_to(updates).as_posix()}", p) for p in added]
    if deletions.is_file():
        named_updates.append(("deletions", deletions))
    if params.source == "packaged":
        return [
            ("packaged/kb", package_file(WIKI_PACKAGE, WIKI_FILE)),
            ("packaged/qa", package_file(FANOUT_PACKAGE, FANOUT_FILE)),
            *named_updates,
        ]
    folder = params.kb_folder
    if not folder.is_dir():
        raise InputError(f"{folder}: KB folder not found")
    named = [(f"kb/{p.relative_to(folder).as_posix()}", p) for p in kb_files(folder)]
    return [*named, ("qa", params.qa_file), *named_updates]


def source_fingerprint(params: IngestParams) -> str:
    """sha256 over the names and content hashes of the source files."""
    digest = hashlib.sha256()
    for name, path in source_files(params):
        if not path.is_file():
            raise InputError(f"{path}: KB source file not found")
        digest.update(f"{name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def last_consumed_fingerprint(project: Path) -> str | None:
    path = project / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["fingerprint"]


def record_consumed_fingerprint(project: Path, fingerprint: str, flow_run_id: str | None) -> None:
    """Remember the KB a successful retrain or refresh consumed (call only after it succeeded)."""
    with atomic_path(project / STATE_FILE) as tmp:
        write_json(
            tmp,
            {
                "fingerprint": fingerprint,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "flow_run_id": flow_run_id,
            },
        )
