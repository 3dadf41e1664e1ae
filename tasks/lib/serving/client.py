"""`ragloop ask` through a running `ragloop serve`, when one serves the alias asked for.

A new process pays seconds for importing torch, transformers and MLflow and loading the
models before its first answer; a server has paid that once. So `ask` first asks the server
the project's `serve` params name, and loads the bundle itself only when none answers there
(or it serves another model or alias). Only httpx is imported on this path.
"""

from __future__ import annotations

from typing import Any

import httpx

from tasks.lib.core.io import InputError

HEALTH_TIMEOUT_S = 0.5  # a server on this machine answers /health in milliseconds


def server_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def served_answer(url: str, model: str, alias: str, question: str) -> dict[str, Any] | None:
    """The server's answer to `question`, or None when no server at `url` serves `alias` of
    `model`; a server that refuses the question is an error with its reason."""
    try:
        health = httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S).json()
    except (httpx.HTTPError, ValueError):
        return None
    if health.get("model") != model or health.get("alias") != alias:
        return None
    response = httpx.post(f"{url}/ask", json={"question": question}, timeout=None)
    if response.status_code != 200:
        detail = response.json().get("detail", response.text)
        raise InputError(f"{url}/ask refused the question ({response.status_code}): {detail}")
    return response.json()
