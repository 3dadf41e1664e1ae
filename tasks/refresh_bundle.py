"""Stage `refresh_bundle`: the champion with its index refreshed, as a bundle to judge.

The refreshed index (`refresh_index`) with the champion's own fusion and its components file,
both downloaded from the champion bundle version the change set names: the same registered
retriever and generator versions (already pinned), the same prompt contract and serving
settings. Only the KB differs, so the refresh gate judges the KB change alone.

Nothing to refresh (see `kb_changes`): the folder holds only the marker.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.io import read_text, run_stage
from tasks.lib.core.tracking import stage_run
from tasks.lib.kb.changes import champion_to_refresh, read_change_set
from tasks.lib.serving.bundle import COMPONENTS, FUSION, save_bundle
from tasks.lib.serving.champion import bundle_artifact
from tasks.lib.serving.registry import registry_client


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths = params.paths
    changes = read_change_set(paths.kb_changes)
    out_dir = paths.refresh_bundle_dir
    champion = champion_to_refresh(changes, out_dir, "refresh_bundle")
    if champion is None:
        return
    with (
        stage_run("refresh_bundle", params) as run,
        tempfile.TemporaryDirectory(prefix="ragloop-refresh-bundle.") as tmp,
    ):
        client = registry_client(params)
        model, version = champion.model, champion.version
        spec_file = bundle_artifact(client, model, version, COMPONENTS, Path(tmp))
        fusion_file = bundle_artifact(client, model, version, FUSION, Path(tmp))
        spec = json.loads(read_text(spec_file))
        save_bundle(out_dir, paths.refresh_index_dir, fusion_file, spec)
        run.set_tags({"champion_version": version})
        run.log_artifact(out_dir / "artifacts" / f"{COMPONENTS}.json")
    print(
        f"refresh_bundle: {out_dir} = {paths.refresh_index_dir} + the fusion and "
        f"components of {model} v{version} ({spec['retriever']['model']} "
        f"v{spec['retriever']['version']}, {spec['generator']['model']} "
        f"v{spec['generator']['version']})"
    )


if __name__ == "__main__":
    run_stage(main)
