"""Prefect flow `watch-kb`: serve the KB only when its source changed since the last success.

Cheap enough to run every few minutes: it hashes the files ingest would read and compares
with the fingerprint the last successful `refresh` or `retrain` recorded; no stage, no MLflow
run, and no flow run when they match. A change starts the `refresh` flow, which re-indexes the
KB with the champion's own models and lets the refresh gate decide in minutes; training waits
for the scheduled `retrain`. With no champion yet there is nothing to refresh, so a change
starts `retrain`, which makes the first one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow

from flows.kb_state import last_consumed_fingerprint, source_fingerprint
from flows.refresh import refresh
from flows.retrain import retrain
from tasks.lib.core.config import Params, load_params


def has_champion(params: Params) -> bool:
    """Whether the registry holds a champion of the judged model (no registry: no)."""
    if not params.tracking.enabled:
        return False
    from tasks.lib.serving.registry import CHAMPION, aliases, registry_client

    return CHAMPION in aliases(registry_client(params), params.register_.judged)


@flow(name="watch-kb", log_prints=True)
def watch(params_file: str = "params.yaml") -> dict[str, Any]:
    """Start `refresh` (or `retrain`, before the first champion) as a subflow if and only if
    the KB fingerprint moved."""
    params_path = Path(params_file).resolve()
    params = load_params(params_path)
    current = source_fingerprint(params.ingest)
    last = last_consumed_fingerprint(params.project_dir)
    if current == last:
        print(f"watch: KB unchanged since the last successful run ({current[:12]})")
        return {"changed": False, "fingerprint": current, "flow": None, "result": None}
    target = refresh if has_champion(params) else retrain
    print(f"watch: KB changed ({(last or 'never served')[:12]} -> {current[:12]}): {target.name}")
    result = target(str(params_path))
    return {"changed": True, "fingerprint": current, "flow": target.name, "result": result}


if __name__ == "__main__":
    watch(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
