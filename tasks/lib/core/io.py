"""Reading and writing stage data safely.

Readers fail with a message that names the file, the line and the field, because a user fixing
a 10,000-line KB needs to know where to look. Writers go through a temporary sibling that is
renamed into place only when complete, so a failed run leaves the previous outputs intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Record = TypeVar("Record", bound=BaseModel)


class InputError(Exception):
    """Bad input a user can fix: the message says where and what."""


def read_text(path: Path) -> str:
    """Read UTF-8 text, naming the line and byte when the encoding is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise InputError(f"{path}: file not found") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from err


def jsonl_records(path: Path, model: type[Record]) -> Iterator[tuple[int, Record]]:
    """(line number, record) for each non-blank line of a JSON Lines file, parsed as `model`."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{path}:{number}: malformed JSON: {err.msg} (column {err.colno})"
            ) from err
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        yield number, parse_record(obj, model, f"{path}:{number}")


def read_jsonl(path: Path, model: type[Record], allow_empty: bool = False) -> list[Record]:
    """Parse a JSON Lines file into `model` records with unique ids; blank lines are skipped.

    A file with no record is an error unless `allow_empty` (a stage's output that may be empty).
    """
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
        records.append(record)
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


def run_stage(main: Callable[[], None]) -> None:
    """Entry point of a stage script (or a flow): every failure is one `error:` line, exit 1."""
    with reported_failures(entry_name(main)):
        main()
