"""dvc.yaml's code deps are complete by construction, and the code keeps to its three bands.

A stage's code deps are its own script, `tasks/__init__.py`, `tasks/lib/__init__.py` and whole
library folders (`tasks/lib/core` always, plus each of kb, retrieval, generation, serving the
stage imports). Here every stage's import closure over the project's modules (`tasks.*`,
`flows.*`, found with `ast`: nothing of the project is imported) must be covered by its deps,
so editing any module a stage runs makes DVC rerun that stage.

The bands: a stage script (`tasks/<stage>.py`) never imports another stage, the library
(`tasks/lib/`) never imports a stage, and nothing under `tasks/` imports `flows`.

    python tests/test_dvc_deps.py [DVC_YAML] [--root PROJECT]   # the same checks, printed
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("tasks", "flows")
STAGE_PACKAGE = "tasks"
LIBRARY_PACKAGE = "tasks.lib"
_STAGE_CMD = re.compile(r"\bpython\s+-m\s+(tasks\.\w+)")
_INTERPOLATION = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def module_file(root: Path, module: str) -> Path | None:
    """The file Python runs for `module` under `root` (a package's `__init__.py`), if any."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def direct_imports(root: Path, path: Path) -> set[str]:
    """Project modules `path` imports anywhere in it (inside functions and `if` blocks too)."""
    module = module_name(root, path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package `level - 1` levels up
                base = package[: len(package) - node.level + 1]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            names.add(origin)
            # `from tasks.lib.core import config` imports a module; `... import load_params` not
            names |= {f"{origin}.{alias.name}" for alias in node.names}
    return {
        name
        for name in names
        if name.split(".")[0] in PROJECT_PACKAGES and module_file(root, name) is not None
    }


def with_packages(module: str) -> Iterator[str]:
    """`module` and every package above it: importing it runs each of their `__init__.py`."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def import_closure(root: Path, module: str) -> set[str]:
    """Every project module that running `python -m <module>` can import."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in with_packages(todo.pop()):
            path = module_file(root, name)
            if name in seen or path is None:
                continue
            seen.add(name)
            todo += sorted(direct_imports(root, path))
    return seen


def stage_modules(dvc: dict[str, Any]) -> dict[str, str]:
    """dvc stage name -> the module its cmd runs with `python -m tasks.X`."""
    modules = {}
    for name, stage in (dvc.get("stages") or {}).items():
        cmd = stage.get("cmd", "")
        found = _STAGE_CMD.search(" ".join(cmd) if isinstance(cmd, list) else cmd)
        if found:
            modules[name] = found.group(1)
    return modules


def interpolate(text: str, params: dict[str, Any]) -> str | None:
    """`${a.b}` replaced by params' value; None when a key is not in params."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        node: Any = params
        for key in match.group(1).split("."):
            if not isinstance(node, dict) or key not in node:
                missing = True
                return match.group(0)
            node = node[key]
        return str(node)

    resolved = _INTERPOLATION.sub(value, text)
    return None if missing else resolved


def dep_paths(stage: dict[str, Any], root: Path, params: dict[str, Any]) -> list[Path]:
    deps = []
    for dep in stage.get("deps") or []:
        text = dep if isinstance(dep, str) else next(iter(dep))
        resolved = interpolate(text, params)
        if resolved is not None:
            deps.append((root / resolved).resolve())
    return deps


def uncovered_modules(dvc_yaml: Path, root: Path | None = None) -> dict[str, list[str]]:
    """Stage -> the files of its import closure that no dep of it covers (a file dep equal to
    one, or a folder dep holding it). Stages with none are left out."""
    root = (root or dvc_yaml.parent).resolve()
    dvc = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    params_file = root / "params.yaml"
    params = (
        yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.is_file() else {}
    )
    missing: dict[str, list[str]] = {}
    for name, module in stage_modules(dvc).items():
        deps = dep_paths(dvc["stages"][name], root, params)
        files = [module_file(root, m) for m in import_closure(root, module)]
        uncovered = sorted(
            str(path.relative_to(root))
            for path in files
            if path is not None and not any(path.resolve().is_relative_to(d) for d in deps)
        )
        if uncovered:
            missing[name] = uncovered
    return missing


def band_violations(root: Path = REPO) -> list[str]:
    """Imports across the bands: stage -> stage, library -> stage, tasks -> flows."""
    stages = {
        module_name(root, path)
        for path in (root / STAGE_PACKAGE).glob("*.py")
        if path.name != "__init__.py"
    }
    problems = []
    for path in sorted((root / STAGE_PACKAGE).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        module = module_name(root, path)
        imported = direct_imports(root, path)
        wrong: set[str] = set()
        if module in stages:
            wrong |= (imported & stages) - {module}
        if module == LIBRARY_PACKAGE or module.startswith(LIBRARY_PACKAGE + "."):
            wrong |= imported & stages
        wrong |= {m for m in imported if m.split(".")[0] == "flows"}
        problems += [f"{module} imports {name}" for name in sorted(wrong)]
    return problems


def test_every_stage_has_its_whole_import_closure_as_deps() -> None:
    missing = uncovered_modules(REPO / "dvc.yaml")
    assert not missing, "dvc.yaml code deps miss modules the stage imports:\n" + "\n".join(
        f"  {stage}: {', '.join(files)}" for stage, files in missing.items()
    )


def test_every_stage_command_runs_a_stage_script() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    modules = stage_modules(dvc)
    assert set(modules) == set(dvc["stages"]), "a stage without `python -m tasks.X`"
    scripts = {m for m in modules.values() if module_file(REPO, m) is not None}
    assert scripts == set(modules.values()), f"no such script: {set(modules.values()) - scripts}"


def test_imports_keep_to_the_bands() -> None:
    problems = band_violations(REPO)
    assert not problems, "imports across the bands:\n  " + "\n  ".join(problems)


def test_dvc_yaml_uses_the_paths_entry_of_a_sub_path() -> None:
    """`${paths.retriever_dir}/model` where `paths.retriever_model` names it is a second
    spelling of a file name: dvc.yaml must use the entry."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    entries = {str(value): key for key, value in params["paths"].items()}
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    spelled = [
        f"{match.group(0)} (paths.{entries[value]})"
        for match in re.finditer(r"\$\{paths\.(\w+)\}(/[\w./-]+)", text)
        if (value := f"{params['paths'][match.group(1)]}{match.group(2)}") in entries
    ]
    assert not spelled, f"dvc.yaml spells paths entries by hand: {spelled}"


def test_fusion_paths_are_the_file_tune_retrieval_writes() -> None:
    """tune_retrieval writes FUSION_FILE in its `--out`; params must name that very file."""
    source = REPO / "tasks/lib/retrieval/retriever.py"
    (name,) = [
        node.value.value
        for node in ast.parse(source.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["FUSION_FILE"]
        and isinstance(node.value, ast.Constant)
    ]
    paths = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["paths"]
    assert paths["fusion"] == f"{paths['tune_retrieval_dir']}/{name}"
    assert paths["fusion_tuned"] == f"{paths['tune_retrieval_tuned_dir']}/{name}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dvc_yaml", type=Path, nargs="?", default=REPO / "dvc.yaml")
    parser.add_argument("--root", type=Path, help="project folder (default: the file's)")
    parser.add_argument("--no-bands", action="store_true", help="only the deps check")
    args = parser.parse_args()
    root = (args.root or args.dvc_yaml.parent).resolve()
    for stage, files in uncovered_modules(args.dvc_yaml, root).items():
        print(f"{stage}: {len(files)} modules uncovered: {', '.join(files)}")
    if not args.no_bands:
        for problem in band_violations(root):
            print(f"band: {problem}")
