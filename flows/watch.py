"""Prefect flow `watch-kb`: retrain only when the KB source changed since the last success.

Cheap enough to run every few minutes: it hashes the files ingest would read and compares
with the fingerprint the last successful `retrain` recorded; no stage, no MLflow run, and no
retrain run when they match.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow

from flows.kb_state import last_trained_fingerprint, source_fingerprint
from flows.retrain import retrain
from tasks.lib.core.config import load_params


@flow(name="watch-kb", log_prints=True)
def watch(params_file: str = "params.yaml") -> dict[str, Any]:
    """Start `retrain` as a subflow if and only if the KB fingerprint moved."""
    params_path = Path(params_file).resolve()
    params = load_params(params_path)
    current = source_fingerprint(params.ingest)
    last = last_trained_fingerprint(params.project_dir)
    if current == last:
        print(f"watch: KB unchanged since the last successful retrain ({current[:12]})")
        return {"changed": False, "fingerprint": current, "retrain": None}
    print(f"watch: KB changed ({(last or 'never trained')[:12]} -> {current[:12]}): retrain")
    return {"changed": True, "fingerprint": current, "retrain": retrain(str(params_path))}


if __name__ == "__main__":
    watch(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
