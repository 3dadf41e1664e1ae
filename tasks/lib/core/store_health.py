"""Whether the MLflow store can be used, checked in seconds before a stage does any work.

Without the check an unreachable server costs each stage many minutes of MLflow's retries before
a traceback, and a damaged sqlite store is only noticed where its damaged page is read, which
may be the registry's at the end of a pipeline run.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from tasks.lib.core.config import Params, TrackingParams
from tasks.lib.core.io import InputError


class StoreUnavailable(InputError):
    """The tracking store cannot be used now: `problem` says what is wrong, `fix` what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}: {fix}")
        self.problem = problem


def bound_http_client(settings: TrackingParams) -> None:
    """Cap MLflow's own HTTP timeout and retries, unless the user exported them.

    MLflow's defaults are tuned to ride out a rate-limiting server, so a request to a server
    that died mid-stage hangs for many minutes before it fails.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.request_timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.request_retries))


def server_problem(uri: str, timeout: float) -> str | None:
    """Why the tracking server at `uri` cannot be used now, or None when it answers.

    Any answer below 500 counts: an auth or routing refusal is for MLflow's own client to
    report, and so is TLS (MLflow has its own certificate settings).
    """
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        return None if err.code < 500 else f"its /health answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        cause = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(cause, ssl.SSLError):
            return None
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, TimeoutError):
            return f"no answer within {timeout:g} s"
        return str(cause)


def sqlite_problem(uri: str, timeout: float) -> StoreUnavailable | None:
    """A sqlite store that exists but cannot be read or is damaged (`PRAGMA quick_check`).

    A damaged store still opens, and MLflow only stumbles on the damaged page, which may be the
    registry's at the very end of a pipeline run.
    """
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    path = Path(database).resolve()
    if not path.exists():  # MLflow creates it, but not its folder
        if path.parent.is_dir():
            return None
        return StoreUnavailable(
            f"MLflow store {path}: its folder does not exist",
            f"create it (mkdir -p {path.parent}) or fix MLFLOW_TRACKING_URI / tracking.uri",
        )
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout)
        ) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as err:
        if "locked" in str(err):  # a writer holds it: not damage, and MLflow waits its turn
            return None
        return StoreUnavailable(
            f"MLflow store {path} cannot be read ({err})", "check the file's permissions"
        )
    except sqlite3.DatabaseError as err:
        detail = str(err)
    else:
        if rows == [("ok",)]:
            return None
        detail = "; ".join(str(row[0]) for row in rows[:3])
    return StoreUnavailable(
        f"MLflow store {path} is damaged (sqlite quick_check: {detail})",
        f"restore it from a backup, or move it aside (mv {path} {path}.damaged) so the next run "
        "starts a new, empty store",
    )


def store_problem(params: Params, uri: str) -> StoreUnavailable | None:
    """Why the store at `uri` cannot be used now, checked in seconds before any work starts."""
    settings = params.tracking
    if uri.startswith(("http://", "https://")):
        reason = server_problem(uri, settings.health_timeout_s)
        if reason is None:
            return None
        return StoreUnavailable(
            f"MLflow tracking server {uri} is not reachable ({reason})",
            "start it (mlflow server ...) or set MLFLOW_TRACKING_URI / tracking.uri to one that "
            "runs, or set tracking.required: false to run the stages without logging",
        )
    if uri.startswith("sqlite:"):
        return sqlite_problem(uri, settings.health_timeout_s)
    return None
