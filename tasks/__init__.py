"""ragloop stages. Importing the package pins the environment every stage needs.

The stack's libraries phone home and write state into the home folder by default; a pipeline
that must run on an air-gapped box and reproduce from its own folder turns that off first.
A value the user already exported wins (e.g. HF_HUB_OFFLINE=0 to pull hub models).
"""

import os
from pathlib import Path

_PROJECT = Path(__file__).resolve().parent.parent

for _name, _value in {
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Loading a model must never unpickle from the artifact store; the bundle is model-from-code.
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": str(_PROJECT / ".state" / "prefect"),
    "HF_HOME": str(_PROJECT / ".state" / "huggingface"),
    "TOKENIZERS_PARALLELISM": "false",
    # The temporary Prefect API's telemetry phones home and, on a fresh sqlite database,
    # races the migrations ("database is locked" at every start).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)

# Prefect creates its home without parents; when it cannot, its temporary API times out.
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
