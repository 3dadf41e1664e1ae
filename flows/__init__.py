"""ragloop's Prefect flows: thin orchestration over the DVC stages in `tasks/`."""

import tasks  # noqa: F401  (pins the environment before Prefect loads)
