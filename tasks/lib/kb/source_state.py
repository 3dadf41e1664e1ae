"""The fingerprints of the KB *source*, and those the last successful retrain or refresh consumed.

The source is what `ingest` reads, in two parts fingerprinted apart: the docs (the packaged
summaries or the user's KB folder, and the updates folder with its deletions file) and the
questions (the packaged FanOutQA file or the user's QA folder). They are taken before ingest
reads the files, so the watcher can tell which part changed without running any stage: new docs
can be served by a refresh, new questions change what the models learn from and are judged on.

The consumed fingerprints live in one file in `.state/` of the project, written only when a run
succeeds: a failed run leaves the old ones, and the next check tries again. A flow writes them
at its end; a plain `dvc repro` through two stages, since no stage may import a flow: `ingest`
notes the fingerprint of the source it read (taken before reading, so an edit made while the
pipeline runs is still seen as a change), and `register`, the pipeline's last stage, records
that one as consumed once it succeeded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.lib.core.assets import package_file
from tasks.lib.core.config import IngestParams
from tasks.lib.core.io import InputError, atomic_path, write_json
from tasks.lib.core.tracking import file_digest
from tasks.lib.kb.sources import (
    FANOUT_FILE,
    FANOUT_PACKAGE,
    WIKI_FILE,
    WIKI_PACKAGE,
    kb_files,
    qa_files,
)

STATE_FILE = Path(".state") / "kb_source_fingerprint.json"
INGESTED_FILE = Path(".state") / "kb_source_ingested.json"  # what the last ingest read
NamedFiles = list[tuple[str, Path]]


@dataclass(frozen=True)
class SourceFingerprint:
    """sha256 of the docs part and of the QA part of the KB source."""

    docs: str
    qa: str

    def short(self) -> str:
        return f"docs {self.docs[:12]}, qa {self.qa[:12]}"


def source_files(params: IngestParams) -> tuple[NamedFiles, NamedFiles]:
    """(stable name, path) of every file ingest reads, docs part and QA part, each in a
    deterministic order.

    Names are relative, so moving the project folder does not look like a KB change, while
    renaming a KB file (which renames its doc id) does.
    """
    updates, deletions = params.updates_folder, params.deletions_path
    added = kb_files(updates, params.ignore, deletions) if updates.is_dir() else []
    named_updates = [(f"updates/{p.relative_to(updates).as_posix()}", p) for p in added]
    if deletions.is_file():
        named_updates.append(("deletions", deletions))
    if params.source == "packaged":
        return (
            [("packaged/kb", package_file(WIKI_PACKAGE, WIKI_FILE)), *named_updates],
            [("packaged/qa", package_file(FANOUT_PACKAGE, FANOUT_FILE))],
        )
    folder, qa_folder = params.kb_folder, params.qa_folder
    if not folder.is_dir():
        raise InputError(f"{folder}: KB folder not found")
    named = [(f"kb/{p.relative_to(folder).as_posix()}", p) for p in kb_files(folder, params.ignore)]
    qa = qa_files(qa_folder, params.ignore)
    named_qa = [(f"qa/{p.relative_to(qa_folder).as_posix()}", p) for p in qa]
    return [*named, *named_updates], named_qa


def files_digest(files: NamedFiles) -> str:
    """sha256 over the names and content hashes of the files (of nothing: no QA set)."""
    digest = hashlib.sha256()
    for name, path in files:
        if not path.is_file():
            raise InputError(f"{path}: KB source file not found")
        digest.update(f"{name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def source_fingerprint(params: IngestParams) -> SourceFingerprint:
    docs, qa = source_files(params)
    return SourceFingerprint(docs=files_digest(docs), qa=files_digest(qa))


def _recorded(path: Path) -> SourceFingerprint | None:
    """The fingerprints in a state file; None when there is none, or only the single fingerprint
    recorded before the parts were told apart (which part it covered is unknown)."""
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    return SourceFingerprint(**recorded) if isinstance(recorded, dict) else None


def _write(path: Path, fingerprint: SourceFingerprint, flow_run_id: str | None) -> None:
    with atomic_path(path) as tmp:
        write_json(
            tmp,
            {
                "fingerprint": asdict(fingerprint),
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "flow_run_id": flow_run_id,
            },
        )


def last_consumed_fingerprint(project: Path) -> SourceFingerprint | None:
    """The fingerprints the last successful pipeline run recorded, if any."""
    return _recorded(project / STATE_FILE)


def record_consumed_fingerprint(
    project: Path, fingerprint: SourceFingerprint, flow_run_id: str | None
) -> None:
    """Remember the KB a successful pipeline run consumed (call only after it succeeded)."""
    _write(project / STATE_FILE, fingerprint, flow_run_id)


def record_ingested_fingerprint(project: Path, fingerprint: SourceFingerprint) -> None:
    """Note the KB source `ingest` read: its outputs, and all that follows, are of this one."""
    _write(project / INGESTED_FILE, fingerprint, None)


def consume_ingested_fingerprint(project: Path) -> SourceFingerprint | None:
    """Record the source the last ingest read as consumed (call when the pipeline's last stage
    succeeded); None when no ingest noted one (it ran before ingest noted fingerprints)."""
    ingested = _recorded(project / INGESTED_FILE)
    if ingested is not None:
        record_consumed_fingerprint(project, ingested, None)
    return ingested
