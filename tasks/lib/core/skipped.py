"""The marker a refresh stage leaves when there is nothing to refresh, so the next one can tell.

A folder output holds `nothing_to_refresh.json`; a file output is that JSON itself. Both read
`{"nothing_to_refresh": "<why>"}` and carry no timestamp: while the reason holds they stay
byte-identical, and DVC skips the stages after them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.lib.core.io import atomic_path, read_text, write_json

MARKER_FILE = "nothing_to_refresh.json"
KEY = "nothing_to_refresh"


def write_skipped_folder(out_dir: Path, reason: str) -> None:
    """Replace the folder output `out_dir` by the marker alone."""
    with atomic_path(out_dir) as tmp:
        write_json(tmp / MARKER_FILE, {KEY: reason})


def write_skipped_file(out_file: Path, reason: str) -> None:
    """Replace the file output `out_file` by the marker."""
    with atomic_path(out_file) as tmp:
        write_json(tmp, {KEY: reason})


def skipped_reason(path: Path) -> str | None:
    """Why the stage writing `path` (its folder or JSON file output) had nothing to refresh;
    None when it did its work."""
    marker = path / MARKER_FILE if path.is_dir() else path
    if not marker.is_file() or marker.suffix != ".json":
        return None
    try:
        content = json.loads(read_text(marker))
    except json.JSONDecodeError:
        return None
    return content.get(KEY) if isinstance(content, dict) else None
