"""Reading and writing stage data safely.

Readers fail with a message that names the file, the line and the field, because a user fixing
a 10,000-line KB needs to know where to look. Writers go through a temporary sibling that is
renamed into place only when complete, so a failed run leaves the previous outputs intact.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import traceback
import warnings
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
    except PermissionError as err:
        raise InputError(
            f"{path}: cannot read it (permission denied): make it readable for this user "
            "(ls -l, chmod) and rerun"
        ) from err
    except IsADirectoryError as err:
        raise InputError(f"{path}: a folder stands where a file is needed: move it away") from err
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


class DuplicateKeyError(ValueError):
    """One key twice in an object: Python's json keeps the last silently, other readers differ."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKeyError(key)
        obj[key] = value
    return obj


def parse_json(line: str, where: str) -> Any:
    """Strict JSON: what Python's json accepts but UTF-8 or other JSON readers do not is an
    error naming `where` (NaN and Infinity, floats beyond range, lone surrogate escapes, a key
    twice in one object), and so are the limits of this reader (nesting depth, digits of an
    integer)."""
    try:
        obj = json.loads(
            line,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
        _check_surrogates(obj, line, where)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
    except DuplicateKeyError as err:
        raise InputError(
            f"{where}: key {err.args[0]!r} appears twice in one object: keep one of them"
        ) from err
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
    """Yield a temporary sibling of `target` (file or folder) and move it into place on success.

    A folder is swapped in two renames, through `.<name>.old`; a run killed between them left
    the output missing, so entering first puts that copy back. Temporary siblings carry their
    writer's pid, so those of killed runs are removed here too.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    tmp = tmp_root / target.name
    old = target.with_name(f".{target.name}.old")
    try:
        recover_previous(target, old, tmp_root)
        remove_stale_temporaries(target)
        yield tmp
        if target.is_dir() and not target.is_symlink():
            target.rename(old)
            tmp.rename(target)
            old.rename(tmp_root / "old")  # `.old` is only ever a whole copy: it goes in one step
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def recover_previous(target: Path, old: Path, trash: Path) -> None:
    """Put back the output a killed folder swap left as `old`, or drop `old` once it is stale."""
    if not old.exists():
        return
    if target.exists() or target.is_symlink():
        old.rename(trash / "stale")  # the swap had finished; removed with `trash`
    else:
        old.rename(target)


def remove_stale_temporaries(target: Path) -> None:
    """Remove the temporary siblings of `target` whose writing process is gone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.tmp")
    for sibling in target.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match and not process_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def jsonl_lines(records: Iterable[BaseModel | dict[str, Any]]) -> str:
    rows = (r.model_dump(mode="json") if isinstance(r, BaseModel) else r for r in records)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonl_lines(records), encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


DEBUG_ENV = "RAGLOOP_DEBUG"  # "1": a failure prints its traceback too
DEBUG_HINT = f"(set {DEBUG_ENV}=1 for the traceback)"  # ends every unexpected failure's line

_MAKE_WRITABLE = "make that folder writable for this user (ls -ld, chmod, chown) and rerun"
# What a user can do about a file the OS refused, by errno.
_OS_FIXES = {
    errno.ENOSPC: "free space on that disk (df -h) and rerun",
    errno.EDQUOT: "the disk quota is used up: free space and rerun",
    errno.EACCES: _MAKE_WRITABLE,
    errno.EPERM: _MAKE_WRITABLE,
    errno.EROFS: "that file system is read-only: point `paths` in params.yaml at a writable one",
    errno.ENOTDIR: "a parent of that path is a file, not a folder: move the file away",
    errno.EEXIST: "a file stands where a folder is needed: move it away",
    errno.EISDIR: "a folder stands where a file is needed: move it away",
}


def failure_message(err: Exception, what: str) -> str:
    """The one line a user reads for a failure of `what` (a stage or a command): what went
    wrong, where, and how to fix it; an unexpected failure names its type and the debug switch.
    """
    if isinstance(err, InputError):
        return str(err)
    if isinstance(err, OSError) and (err.filename is not None or err.errno in _OS_FIXES):
        where = f" {err.filename}" if err.filename is not None else ""
        reason = err.strerror or str(err)
        if err.errno in _OS_FIXES:
            return f"cannot write{where}: {reason}: {_OS_FIXES[err.errno]}"
        return f"cannot open{where}: {reason}: check the path in params.yaml (`paths`)"
    # Only a process that imported mlflow can hold its exception: do not import it here.
    mlflow_errors = sys.modules.get("mlflow.exceptions")
    if mlflow_errors is not None and isinstance(err, mlflow_errors.MlflowException):
        return f"MLflow: {err.message}"
    return f"{what} failed: {type(err).__name__}: {err} {DEBUG_HINT}"


@contextlib.contextmanager
def reported_failures(
    what: str, passthrough: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Any failure inside is one `error:` line on stderr and exit 1, never a traceback (unless
    RAGLOOP_DEBUG=1); Ctrl-C is a short line and exit 130. `passthrough` exceptions (a CLI
    framework's own exits) propagate untouched."""
    try:
        yield
    except passthrough:
        raise
    except KeyboardInterrupt:
        print(f"error: {what} interrupted; its earlier outputs are intact", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {failure_message(err, what)}", file=sys.stderr)
        sys.exit(1)


def user_error_reported(output: Iterable[str]) -> bool:
    """Whether a stage's output lines report a failure its user must fix (a retry cannot help):
    an `error:` line, and no unexpected failure, whose message (maybe of several lines) ends
    with the debug hint."""
    lines = [line.rstrip() for line in output]
    reported = any(line.startswith("error: ") for line in lines)
    return reported and not any(line.endswith(DEBUG_HINT) for line in lines)


def entry_name(main: Callable[[], None]) -> str:
    """The name of the script `main` belongs to: `dedup` for `python -m tasks.dedup`."""
    module = getattr(main, "__module__", None) or "__main__"
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return module.rpartition(".")[2]


VERBOSE_ENV = "RAGLOOP_VERBOSE"  # "1": the libraries' own bars, INFO lines and warnings too

# Read by each library when it is imported: for what a stage imports later, and its subprocesses.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
}
# Loggers whose INFO and WARNING lines speak to the libraries' developers, not to a stage's user.
_QUIET_LOGGERS = (
    "transformers",
    "sentence_transformers",
    "huggingface_hub",
    "datasets",
    "peft",
    "accelerate",
    "mlflow",
    "alembic",
    "great_expectations",
)
# (package, module, function) turning off the bars of a package already imported (a stage
# imports its libraries before `run_stage` runs, so their environment was read already).
_BAR_SWITCHES = (
    ("transformers", "transformers.utils.logging", "disable_progress_bar"),
    ("huggingface_hub", "huggingface_hub.utils", "disable_progress_bars"),
    ("datasets", "datasets.utils", "disable_progress_bars"),
)
# Python warnings of API changes: for whoever upgrades the code, not for whoever runs it.
_QUIET_WARNINGS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet_libraries() -> None:
    """Keep the libraries' loading bars ("Loading weights", "Writing model shards"), INFO lines
    and advisory warnings out of a stage's output, where they bury its own lines; their errors,
    and every line of the project, still show."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for package, module, switch in _BAR_SWITCHES:
        if package in sys.modules:
            getattr(importlib.import_module(module), switch)()
    for category in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=category)


def run_stage(main: Callable[[], None]) -> None:
    """Entry point of a stage script (or a flow): every failure is one `error:` line, exit 1;
    the libraries are quiet unless RAGLOOP_VERBOSE=1."""
    if not verbose():
        quiet_libraries()
    with reported_failures(entry_name(main)):
        main()
