"""Reading and writing stage data safely.

Readers fail with a message that names the file, the line and the field, because a user fixing
a 10,000-line KB needs to know where to look. Writers go through a temporary sibling that is
renamed into place only when complete, so a failed run leaves the previous outputs intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Record = TypeVar("Record", bound=BaseModel)


class InputError(Exception):
    """Bad input a user can fix: the message says where and what."""


def read_text(path: Path) -> str:
    """Read UTF-8 text, naming the line and byte when the encoding is wrong.

    A leading byte order mark is dropped: Windows editors write one, and it is not text (it
    would hide a Markdown heading and break the JSON of a first line).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"{path}: file not found") from err
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from err


def text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) split on "\n" only, a trailing "\r" dropped.

    JSON Lines separates records by "\n"; `str.splitlines` also splits on U+2028, U+0085, form
    feeds and more, which a JSON string may hold raw, and would cut a valid record in two.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _reject_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal} is too large for a float")
    return value


def _strings(obj: Any, field: str = "") -> Iterator[tuple[str, str]]:
    """(dotted field, text) for every key and string value of a parsed JSON value."""
    if isinstance(obj, str):
        yield field or "(record)", obj
    elif isinstance(obj, dict | list):
        for key, value in obj.items() if isinstance(obj, dict) else enumerate(obj):
            name = f"{field}.{key}" if field else str(key)
            if isinstance(key, str):
                yield name, key
            yield from _strings(value, name)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_surrogates(obj: Any, line: str, where: str) -> None:
    """A lone surrogate decodes in Python but no UTF-8 writer can encode it later."""
    if not _SURROGATE_ESCAPE.search(line):  # decoded UTF-8 holds none: only an escape makes one
        return
    for field, text in _strings(obj):
        found = _SURROGATE.search(text)
        if found:
            field = field.encode("utf-8", "backslashreplace").decode()  # a key may hold it too
            raise InputError(
                f"{where}: field '{field}': lone surrogate escape \\u{ord(found.group()):04x} "
                "(half of a UTF-16 pair, not a character; UTF-8 cannot hold it): write the "
                "character itself, or its full pair of \\u escapes"
            )


def parse_json(line: str, where: str) -> Any:
    """Strict JSON: what Python's json accepts but UTF-8 or other JSON readers do not is an
    error naming `where` (NaN and Infinity, floats beyond range, lone surrogate escapes), and so
    are the limits of this reader (nesting depth, digits of an integer)."""
    try:
        obj = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
        _check_surrogates(obj, line, where)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
    except RecursionError as err:
        raise InputError(f"{where}: JSON nested too deeply for this reader: flatten it") from err
    except ValueError as err:  # from parse_constant, parse_float or the integer digits limit
        problem = str(err)
        if "integer string conversion" in problem:
            problem = f"an integer of more than {sys.get_int_max_str_digits()} digits"
        raise InputError(f"{where}: {problem}: write it as a string (or null)") from err
    return obj


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON Lines file."""
    for number, line in text_lines(read_text(path)):
        if line.strip():
            yield number, parse_json(line, f"{path}:{number}")


def jsonl_records(path: Path, model: type[Record]) -> Iterator[tuple[int, Record]]:
    """(line number, record) for each non-blank line of a JSON Lines file, parsed as `model`."""
    for number, obj in json_lines(path):
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        yield number, parse_record(obj, model, f"{path}:{number}")


def read_jsonl(path: Path, model: type[Record], allow_empty: bool = False) -> list[Record]:
    """Parse a JSON Lines file into `model` records with unique ids; blank lines are skipped.

    A file with no record is an error unless `allow_empty` (a stage's output that may be empty).
    """
    return [record for _, record in read_jsonl_numbered(path, model, allow_empty)]


def read_jsonl_numbered(
    path: Path, model: type[Record], allow_empty: bool = False
) -> list[tuple[int, Record]]:
    """`read_jsonl` with each record's line number, for messages that point back into the file."""
    records = []
    first_line: dict[str, int] = {}
    for number, record in jsonl_records(path, model):
        record_id = record.id  # type: ignore[attr-defined]
        if record_id in first_line:
            raise InputError(
                f"{path}:{number}: field 'id': duplicate id {record_id!r} "
                f"(first at line {first_line[record_id]})"
            )
        first_line[record_id] = number
        records.append((number, record))
    if not records and not allow_empty:
        raise InputError(f"{path}: no records (the file is empty)")
    return records


def parse_record(obj: dict[str, Any], model: type[Record], where: str) -> Record:
    """Validate one record, turning pydantic's report into 'where: field 'x': problem'."""
    try:
        return model.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        problem = "is missing" if first["type"] == "missing" else first["msg"]
        raise InputError(f"{where}: field '{field}' {problem}") from err


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `target` (file or folder) and move it into place on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def jsonl_lines(records: Iterable[BaseModel | dict[str, Any]]) -> str:
    rows = (r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in records)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl_lines(records), encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run_stage(main: Callable[[], None]) -> None:
    """Entry point of a stage script: user-fixable errors print one clear message and exit 1."""
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
