"""Which files of a source folder ingest reads, and which it skips and why.

A user's KB folder holds more than docs: notebook and editor copies (`.ipynb_checkpoints`), PDFs
waiting to be converted, links. What ingest reads must be exactly the docs the user meant: a
hidden copy must not replace the doc the questions cite, and a link must not bring in a file from
outside the folder (`notes.md -> /etc/passwd` would be indexed and served to anyone who asks).
Every file skipped is named with its reason, so a doc missing from the KB is found in one place.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path

from tasks.lib.core.io import InputError

NAMES_SHOWN = 5  # names quoted per summary line, so it stays one line; the report has them all


class Skip(StrEnum):
    """Why a path below a source folder was not read."""

    OUTSIDE = "outside"  # a link whose real path is outside the folder
    UNSUPPORTED = "unsupported"  # a suffix ingest cannot read
    IGNORED = "ignored"  # its name matches an `ingest.ignore` pattern (hidden, by default)
    DUPLICATE = "duplicate"  # a link to a file read under another name
    LOOP = "loop"  # a link to a folder it is in
    BROKEN = "broken"  # a link to nothing, or not a regular file (a FIFO would block the read)


@dataclass(frozen=True)
class SkippedPath:
    """One path ingest did not read: relative to its folder, with what explains the reason
    (the ignore pattern, the link's real path, the suffix, or the name the file was read as)."""

    path: str
    reason: Skip
    detail: str = ""


SkippedByFolder = dict[str, list[SkippedPath]]  # params key of the folder -> its skipped paths


@dataclass(frozen=True)
class FolderScan:
    """The files to read, sorted, and the paths skipped."""

    files: list[Path] = field(default_factory=list)
    skipped: list[SkippedPath] = field(default_factory=list)


def suffix_of(path: Path) -> str:
    """The suffix that decides how a file is read: case does not matter (`.MD` is Markdown)."""
    return path.suffix.lower() or "(none)"


def scan_folder(
    folder: Path, suffixes: Sequence[str], ignore: Sequence[str], skip: Path | None = None
) -> FolderScan:
    """The files below `folder` with one of `suffixes`, each real file once.

    A path whose name matches an `ignore` glob is not entered. Links are followed while their
    real path stays inside the folder's real path; a folder link to one of its own ancestors is
    a loop and not entered. A file reached by several paths is read under its real location
    when that is one of them, else under the first name. `skip` is a file there that is not a
    doc (the updates folder's deletions file).
    """
    root = Path(os.path.realpath(folder))
    skipped: list[SkippedPath] = []
    names_of: dict[Path, list[Path]] = {}  # real file -> the paths that reach it

    def skipping(path: Path, reason: Skip, detail: str = "") -> None:
        skipped.append(SkippedPath(path.relative_to(folder).as_posix(), reason, detail))

    def visit(directory: Path, real_directory: Path, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(directory.iterdir())
        except OSError as err:
            raise InputError(
                f"{directory}: cannot list the folder ({err.strerror}): fix its permissions, or "
                "add its name to ingest.ignore"
            ) from err
        for path in entries:
            pattern = next((p for p in ignore if fnmatchcase(path.name, p)), None)
            if pattern is not None:
                skipping(path, Skip.IGNORED, pattern)
                continue
            try:  # only a link can lead elsewhere: resolving every path costs a syscall each
                real = (
                    Path(os.path.realpath(path, strict=True))
                    if path.is_symlink()
                    else real_directory / path.name
                )
            except FileNotFoundError:
                skipping(path, Skip.BROKEN, os.readlink(path))
                continue
            except OSError:  # ELOOP: a chain of links that leads back to itself
                skipping(path, Skip.LOOP)
                continue
            if not real.is_relative_to(root):
                skipping(path, Skip.OUTSIDE, str(real))
            elif real.is_dir():
                if real in ancestors:
                    skipping(path, Skip.LOOP, real.relative_to(root).as_posix())
                else:
                    visit(path, real, ancestors | {real})
            elif not real.is_file():
                skipping(path, Skip.BROKEN, "not a regular file")
            elif path == skip:
                continue
            elif suffix_of(path) not in suffixes:
                skipping(path, Skip.UNSUPPORTED, suffix_of(path))
            else:
                names_of.setdefault(real, []).append(path)

    visit(folder, root, frozenset({root}))
    files = []
    for real, paths in names_of.items():
        at_home = [p for p in paths if p.relative_to(folder) == real.relative_to(root)]
        chosen = (at_home or sorted(paths))[0]
        files.append(chosen)
        for other in sorted(set(paths) - {chosen}):
            skipping(other, Skip.DUPLICATE, chosen.relative_to(folder).as_posix())
    return FolderScan(sorted(files), skipped)


SUMMARY = {  # reason -> what is counted, and the clause after the count; most serious first
    Skip.OUTSIDE: (
        "link",
        "to a path outside the folder: {names} (copy a file into the folder to include it)",
    ),
    Skip.UNSUPPORTED: ("file", "it cannot read: {suffixes} ({hint})"),
    Skip.IGNORED: ("hidden or ignored path", "(ingest.ignore): {names}"),
    Skip.DUPLICATE: ("link", "to a file already read: {names}"),
    Skip.LOOP: ("link", "to a folder it is in (a symlink loop): {names}"),
    Skip.BROKEN: ("broken or special path", "(a link to nothing, a FIFO): {names}"),
}


def named(item: SkippedPath) -> str:
    """A skipped path as the summary names it: a link with where it leads."""
    if item.reason == Skip.OUTSIDE:
        return f"{item.path} -> {item.detail}"
    if item.reason == Skip.DUPLICATE:
        return f"{item.path} (read as {item.detail})"
    return item.path


def skip_summary(skipped: Sequence[SkippedPath], convert_hint: str) -> list[str]:
    """One clause per reason for the paths skipped in a folder: the count, the first few names,
    and for files of other suffixes the count per suffix with how to make them readable."""
    lines = []
    for reason, (noun, clause) in SUMMARY.items():
        items = [item for item in skipped if item.reason == reason]
        if not items:
            continue
        more = len(items) - NAMES_SHOWN
        names = ", ".join(named(item) for item in items[:NAMES_SHOWN])
        suffixes = Counter(item.detail for item in items)
        commonest = sorted(suffixes.items(), key=lambda pair: (-pair[1], pair[0]))
        text = clause.format(
            names=names + (f" and {more} more" if more > 0 else ""),
            suffixes=", ".join(f"{suffix} {count}" for suffix, count in commonest),
            hint=convert_hint,
        )
        lines.append(f"skipped {len(items)} {noun}{'' if len(items) == 1 else 's'} {text}")
    return lines


def skip_metrics(skipped: Sequence[SkippedPath]) -> dict[str, int]:
    """Counts per reason (every reason, so runs compare), and per suffix of unreadable files."""
    by_reason = Counter(item.reason for item in skipped)
    suffixes = Counter(item.detail for item in skipped if item.reason == Skip.UNSUPPORTED)
    return {f"skipped_{reason}": by_reason[reason] for reason in Skip} | {
        f"skipped_unsupported_{suffix.strip('.()')}": count for suffix, count in suffixes.items()
    }
