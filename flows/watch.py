"""Prefect flow `watch-kb`: serve the KB only when its source changed since the last success.

Cheap enough to run every few minutes: it hashes the files ingest would read, the docs part
and the QA part apart, and compares them with the fingerprints the last successful `refresh`
or `retrain` recorded; no stage, no MLflow run, and no flow run when they match. Changed docs
alone start the `refresh` flow, which re-indexes the KB with the champion's own models and lets
the refresh gate decide in minutes; training waits for the scheduled `retrain`. Changed
questions (added, edited or removed) start `retrain`: real questions change what both models
learn from and the test split they are judged on, which a refresh never looks at. With no
champion yet there is nothing to refresh, so any change starts `retrain`, which makes the first.

Feedback on served answers retrains too, KB changed or not: once `feedback.retrain_threshold`
feedback rows that would become training records are newer than the watermark the last
successful retrain recorded (the highest feedback id its `feedback_export` read).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow

from flows.refresh import refresh
from flows.retrain import flow_main, retrain
from tasks.lib.core.config import Params, load_params
from tasks.lib.kb.source_state import (
    SourceFingerprint,
    last_consumed_fingerprint,
    source_fingerprint,
)
from tasks.lib.serving.feedback import FeedbackStore, consumed_feedback_id, trainable_feedback


def has_champion(params: Params) -> bool:
    """Whether the registry holds a champion of the judged model (no registry: no)."""
    if not params.tracking.enabled:
        return False
    from tasks.lib.serving.registry import CHAMPION, aliases, registry_client

    return CHAMPION in aliases(registry_client(params), params.register_.judged)


def choose_flow(
    current: SourceFingerprint, last: SourceFingerprint | None, champion: bool
) -> tuple[str | None, str]:
    """The flow a KB source change needs, and why: none when nothing changed, `refresh` when
    only the docs did and a champion serves them, else `retrain`."""
    if current == last:
        return None, "KB unchanged since the last successful run"
    if not champion:
        return retrain.name, "no champion to refresh yet"
    if last is None:
        return retrain.name, "no record of the questions the champion's run consumed"
    if current.qa != last.qa:
        return retrain.name, "the questions changed: they move the training and the test sets"
    return refresh.name, "only the docs changed: the champion's models serve them"


def untrained_feedback(params: Params) -> int:
    """Feedback rows that would become training records, newer than the last retrain's."""
    store = FeedbackStore.open(params.feedback, params.project_dir)
    try:
        return trainable_feedback(store, consumed_feedback_id(params.project_dir))
    finally:
        store.close()


def with_feedback(
    chosen: str | None, why: str, untrained: int, threshold: int
) -> tuple[str | None, str]:
    """`choose_flow`'s choice, turned into `retrain` when enough feedback waits to be trained
    on (a retrain runs the refresh stages too, so a docs change is still served)."""
    if untrained < threshold or chosen == retrain.name:
        return chosen, why
    waiting = (
        f"{untrained} feedback records not yet trained on (feedback.retrain_threshold {threshold})"
    )
    return retrain.name, waiting if chosen is None else f"{waiting}; {why}"


@flow(name="watch-kb", log_prints=True)
def watch(params_file: str = "params.yaml") -> dict[str, Any]:
    """Start `refresh` or `retrain` as a subflow, as `choose_flow` decides, if and only if the
    KB source's fingerprint moved, or `retrain` when enough feedback waits (`with_feedback`)."""
    params_path = Path(params_file).resolve()
    params = load_params(params_path)
    current = source_fingerprint(params.ingest)
    last = last_consumed_fingerprint(params.project_dir)
    state = {"fingerprint": asdict(current)}
    untrained, threshold = untrained_feedback(params), params.feedback.retrain_threshold
    waiting = f"{untrained} feedback records not yet trained on (retrain at {threshold})"
    changed = current != last
    if not changed and untrained < threshold:  # the registry is not asked: about a second
        print(f"watch: KB unchanged since the last successful run ({current.short()}); {waiting}")
        return {"changed": False, **state, "flow": None, "result": None}
    if changed:
        chosen, why = choose_flow(current, last, has_champion(params))
        was = last.short() if last else "never served"
        kb = f"KB changed ({was} -> {current.short()})"
    else:
        chosen, why = None, "KB unchanged since the last successful run"
        kb = f"KB unchanged ({current.short()})"
    chosen, why = with_feedback(chosen, why, untrained, threshold)
    print(f"watch: {kb}: {chosen} ({why})")
    target = refresh if chosen == refresh.name else retrain
    result = target(str(params_path))
    return {"changed": changed, **state, "flow": chosen, "result": result}


if __name__ == "__main__":
    flow_main(watch, "flows.watch")
