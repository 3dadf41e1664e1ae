"""Stage `kb_changes`: the new KB against the KB the champion serves, as a change set.

The champion's KB is read from the registry (the docs its bundle's index holds), never from a
local file, so a champion promoted by hand or elsewhere is diffed correctly. A doc is modified
when its title or text changed (`tasks.lib.kb.changes`). The change set also records the
champion bundle version and the retriever and generator versions it pins: the refresh stages
re-index and re-bundle with exactly those.

No champion (the first run, or tracking disabled): `champion` is null and `nothing_to_refresh`
says why; so it is when the KB is the champion's. Every refresh stage then leaves a small
marker and the retrain path alone makes a champion.

dvc.yaml marks the stage `always_changed` (DVC cannot hash the registry); its output is
byte-identical while KB and champion are, so the refresh stages after it skip.

Output `paths.kb_changes`: {champion, nothing_to_refresh, counts, added, modified, deleted}.
"""

from __future__ import annotations

from pathlib import Path

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import atomic_path, run_stage, write_json
from tasks.lib.core.records import read_docs
from tasks.lib.core.tracking import stage_run
from tasks.lib.kb.changes import (
    NO_CHAMPION,
    NO_REGISTRY,
    ChampionRef,
    ChangeSet,
    Pinned,
    content_hashes,
    diff_kb,
)
from tasks.lib.serving.champion import champion_state
from tasks.lib.serving.registry import registry_client


def against_champion(params: Params, new: dict[str, str]) -> ChangeSet:
    """The change set from the registry's champion of `register.judged` to `new`."""
    if not params.tracking.enabled:
        return ChangeSet.without_champion(NO_REGISTRY)
    state = champion_state(registry_client(params), params.register_.judged)
    if state is None:
        return ChangeSet.without_champion(NO_CHAMPION)
    champion = ChampionRef(
        model=state.model,
        version=state.version,
        retriever=Pinned(**state.components["retriever"]),
        generator=Pinned(**state.components["generator"]),
    )
    return diff_kb(new, content_hashes(state.docs), champion)


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    new = content_hashes(read_docs(params.paths.retrieval_docs))
    out = params.paths.kb_changes
    with stage_run("kb_changes", params) as run:
        changes = against_champion(params, new)
        with atomic_path(out) as tmp:
            write_json(tmp, changes.model_dump(mode="json"))
        run.log_metrics(changes.counts)
        champion = changes.champion
        run.set_tags({"champion_version": champion.version if champion else "none"})
        run.log_artifact(out)

    if champion is None:
        print(f"kb_changes: no champion: {changes.nothing_to_refresh}")
    else:
        pins = f"retriever v{champion.retriever.version}, generator v{champion.generator.version}"
        print(f"kb_changes: against champion {champion.model} v{champion.version} ({pins})")
    print("kb_changes: " + ", ".join(f"{key} {value}" for key, value in changes.counts.items()))
    if changes.nothing_to_refresh:
        print(f"kb_changes: nothing to refresh: {changes.nothing_to_refresh}")


if __name__ == "__main__":
    run_stage(main)
