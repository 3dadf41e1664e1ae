"""Benchmark: from a KB change to the new champion serving, the refresh path against the full one.

On a project whose registry holds a champion, it changes the KB through the updates folder as a
user would (three new docs, one edited doc, one deleted doc; the edited and deleted ones cited
by no question, so the standing test set stays as it is), then runs the KB watcher, which starts
the refresh flow, and times it until the flow returns. It prints the change set, the docs
embedded, the stages run and skipped, the gate's decision with its intervals, and whether the
champion now answers a question about an added doc from it and never returns the deleted one.
With `--full`, the same change then goes through the whole retrain flow (every stage DVC finds
changed), timed in the same run, and the ratio is printed. The updates folder is restored on
exit unless `--keep`.

    python bench/kb_update.py [--params params.yaml] [--full] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.records import read_docs, read_qa_splits
from tasks.lib.serving.registry import CHAMPION, aliases, registry_client

NEW_DOCS = [
    {
        "id": "Vessel Kaarna",
        "title": "Vessel Kaarna",
        "text": "Vessel Kaarna is a research icebreaker launched in 2026 by the Finnish "
        "Meteorological Institute. She carries a drilling rig that samples sea ice down to "
        "forty metres and is based in the port of Oulu.",
        "source": "kb update",
    },
    {
        "id": "Lake Oshuno",
        "title": "Lake Oshuno",
        "text": "Lake Oshuno is a crater lake in the Andes of southern Peru, formed by a "
        "volcanic eruption about 9,000 years ago. Its water is coloured turquoise by copper "
        "minerals, and the Quechua village of Chaupi lies on its northern shore.",
        "source": "kb update",
    },
    {
        "id": "Moravec Prize",
        "title": "Moravec Prize",
        "text": "The Moravec Prize is an award for open-source robotics software, given each "
        "year since 2025 by the Prague Robotics Society. The first prize went to a walking "
        "controller written by a student team from Brno.",
        "source": "kb update",
    },
]
QUESTION = "Which port is the research icebreaker Vessel Kaarna based in?"
EDIT_SENTENCE = " In November 2026 its archive opened a public reading room in Tallinn."


def uncited_docs(params: Params, n: int) -> list[dict[str, Any]]:
    """The first `n` docs, by id, that no question cites and whose id is a word (not one of the
    number articles): editing them moves no gold doc."""
    cited = {d for split in read_qa_splits(params.paths.retrieval_qa_dir).values() for r in split
             for d in r.doc_ids}  # fmt: skip
    docs = sorted(read_docs(params.paths.retrieval_docs), key=lambda d: d.id)
    return [d.model_dump() for d in docs if d.id not in cited and d.id[0].isalpha()][:n]


def apply_change(params: Params) -> tuple[str, str]:
    """Write the change into the updates folder; return (edited id, deleted id)."""
    edited, deleted = uncited_docs(params, 2)
    edited["text"] += EDIT_SENTENCE
    folder = params.ingest.updates_folder
    lines = [json.dumps(doc, ensure_ascii=False) for doc in [*NEW_DOCS, edited]]
    (folder / "bench_kb_update.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / params.ingest.deletions_file).write_text(f"{deleted['id']}\n", encoding="utf-8")
    return edited["id"], deleted["id"]


def timed(label: str, run: Any) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    print(f"kb_update: {label}: {seconds:.0f} s")
    return result, seconds


def serving_report(params: Params, deleted: str) -> None:
    """What the champion serves now: the answer to a question about an added doc, its sources,
    and whether any of its top hits is the deleted doc."""
    from tasks.lib.serving.bundle import load_registered_bundle

    client = registry_client(params)
    version = aliases(client, params.register_.judged).get(CHAMPION)
    with tempfile.TemporaryDirectory(prefix="ragloop-bench.") as tmp:
        model = load_registered_bundle(client, params.register_.judged, version, Path(tmp))
        (answer,) = model.predict([QUESTION])
        probe = model.predict([f"What is {deleted}?"])[0]
    print(f"kb_update: champion v{version} asked {QUESTION!r}")
    print(f"kb_update:   answer {answer['answer']!r}, sources {answer['sources']}")
    print(f"kb_update:   deleted doc {deleted!r} in the retrieved: {deleted in probe['retrieved']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--full", action="store_true", help="also time the full retrain path")
    parser.add_argument("--keep", action="store_true", help="leave the KB change in place")
    args = parser.parse_args()
    params = load_params(args.params)
    client = registry_client(params)
    before = aliases(client, params.register_.judged).get(CHAMPION)
    if before is None:
        raise SystemExit("error: no champion to refresh: run the pipeline first (make pipeline)")

    from flows.retrain import retrain
    from flows.watch import watch

    folder = params.ingest.updates_folder
    backup = Path(tempfile.mkdtemp()) / "updates"
    shutil.copytree(folder, backup)
    try:
        edited, deleted = apply_change(params)
        print(f"kb_update: champion v{before}; added {len(NEW_DOCS)}, edited {edited!r}, "
              f"deleted {deleted!r}")  # fmt: skip
        watched, refresh_seconds = timed("refresh path (watcher)", lambda: watch(str(args.params)))
        result = watched["result"]
        ran = set(result["ran"])
        print(f"kb_update: stages run {result['ran']}")
        print(f"kb_update: stages skipped {[s for s in result['stages'] if s not in ran]}")
        changes = json.loads(params.paths.kb_changes.read_text(encoding="utf-8"))
        print(f"kb_update: change set {changes['counts']}")
        build = json.loads((params.paths.refresh_index_dir / "manifest.json").read_text())["build"]
        print(f"kb_update: docs embedded {build['embedded']}, from the cache {build['cached']}")
        decision = json.loads(params.paths.refresh_decision.read_text(encoding="utf-8"))
        for reason in decision.get("reasons", []):
            print(f"kb_update: gate: {reason}")
        after = aliases(client, params.register_.judged).get(CHAMPION)
        print(f"kb_update: champion v{before} -> v{after}")
        serving_report(params, deleted)
        if args.full:
            _, full_seconds = timed("full path (retrain flow)", lambda: retrain(str(args.params)))
            print(f"kb_update: full / refresh = {full_seconds / refresh_seconds:.1f}x")
    finally:
        if not args.keep:
            shutil.rmtree(folder)
            shutil.copytree(backup, folder)


if __name__ == "__main__":
    main()
