"""Stage `bundle`: the RAG system as one MLflow pyfunc model, so the registry can serve it.

The bundle (`tasks.lib.serving.bundle`) carries the tuned index, the fusion chosen for it and
the prompt contract and the precision it generates in, and names the encoder and generator it
serves with.
"""

from __future__ import annotations

from pathlib import Path

from tasks.lib.core.config import load_params
from tasks.lib.core.io import run_stage
from tasks.lib.core.tracking import stage_run
from tasks.lib.serving.bundle import COMPONENTS, components_spec, save_bundle


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    paths = params.paths
    index_dir = paths.index_tuned_dir
    fusion_file = paths.fusion_tuned
    spec = components_spec(
        paths.retriever_model,
        paths.generator_model,
        params.generator,
        params.bundle,
        params.precision,
    )
    out_dir = paths.bundle_dir
    with stage_run("bundle", params) as run:
        save_bundle(out_dir, index_dir, fusion_file, spec)
        run.log_artifact(out_dir / "artifacts" / f"{COMPONENTS}.json")
    print(
        f"bundle: {out_dir} = index {index_dir.name} + fusion {fusion_file} "
        f"+ {spec['retriever']['model']} + {spec['generator']['model']} (named, not copied); "
        f"queries embedded in precision.encode={params.precision.encode}, resolved where loaded"
    )


if __name__ == "__main__":
    run_stage(main)
