"""The pip requirements a bundle records: the installed versions of the third-party
distributions its model code imports.

MLflow would infer them by loading the whole model in a subprocess at save time; reading the
imports of the files that loading runs (`rag_model.py` and the ragloop modules it reaches, lazy
imports included) gives the same list in milliseconds, and it follows the code as it changes.
ragloop itself is not among them: it is no package on any index, so a bundle serves inside the
project's own environment (`mlflow models serve --env-manager local` from its venv).
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

from tasks.lib.core.io import InputError, read_text

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # the folder holding the `tasks` package
PROJECT_PACKAGE = "tasks"


def module_file(name: str) -> Path | None:
    """The project file of module `name`, or None when `name` is no module (an attribute
    imported with `from package import name`)."""
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_names(path: Path) -> list[str]:
    """Every absolute module name `path` imports, `from m import n` also as `m.n` (n may be a
    submodule); relative imports are the project's own and ragloop uses none."""
    names: list[str] = []
    for node in ast.walk(ast.parse(read_text(path), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def third_party_imports(entry: Path) -> set[str]:
    """The top-level names of the modules outside the standard library and the project that
    `entry` and the project modules it reaches import."""
    todo, seen, found = [entry], set[Path](), set[str]()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            top = name.split(".")[0]
            if top == PROJECT_PACKAGE:
                if (file := module_file(name)) is not None:
                    todo.append(file)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def pinned_requirements(entry: Path) -> list[str]:
    """`name==version` of each installed distribution providing a module the code reached from
    `entry` imports. A local version label (torch's `+cpu`) is dropped: no index but the
    build's own serves it, and the public release of that version runs the same code."""
    providers = importlib.metadata.packages_distributions()
    imports = third_party_imports(entry)
    missing = sorted(top for top in imports if top not in providers)
    if missing:
        raise InputError(
            f"{entry}: the bundle's code imports {missing}, which no installed distribution "
            "provides: install the project (`pip install -e .`) before saving a bundle"
        )
    dists = {dist for top in imports for dist in providers[top]}
    versions = {dist: importlib.metadata.version(dist).split("+")[0] for dist in dists}
    return sorted(f"{dist}=={version}" for dist, version in versions.items())
