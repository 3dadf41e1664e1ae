"""Stage `dedup`: drop quarantined, exact and near-duplicate passages, and fix QA to match.

The docs validate quarantined go first: they leave the KB and the QA records' gold docs, and a
record left with no gold doc is dropped, as for a deleted doc.

Exact duplicates share the hash of their normalized text. Near duplicates are found with MinHash
LSH (datasketch) over word shingles, then confirmed with the true Jaccard similarity of the two
shingle sets, so an LSH false positive never drops a doc. Docs are visited in id order, so the
kept doc of a cluster is always its smallest id and reruns are deterministic.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from datasketch import MinHash, MinHashLSH
from tqdm import tqdm

from tasks.lib.core.config import DedupParams, load_params
from tasks.lib.core.io import InputError, atomic_path, run_stage, write_json, write_jsonl
from tasks.lib.core.records import (
    Doc,
    QARecord,
    QuarantinedDoc,
    read_docs,
    read_qa_splits,
    read_quarantine,
    unlink_docs,
)
from tasks.lib.core.tracking import stage_run

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Dropped:
    """Why a doc was removed: `reason` is 'exact', 'near' (with the kept doc and the shingle
    Jaccard) or 'quarantined:<expectation>' (validate's; nothing kept in its place)."""

    id: str
    title: str
    reason: str
    kept_id: str | None
    kept_title: str | None
    similarity: float | None


def normalize_text(text: str) -> str:
    """Unicode-compatible, case-folded, whitespace-squeezed: trivially different copies match."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def shingles(text: str, size: int) -> set[str]:
    """Word n-grams; a text shorter than `size` words is one shingle."""
    words = _WORD.findall(normalize_text(text))
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def find_duplicates(docs: list[Doc], params: DedupParams) -> list[Dropped]:
    """Visit docs in id order; each is an exact copy, a near copy, or kept (and indexed)."""
    # Candidates are confirmed by the true Jaccard, so a false positive costs only a set
    # comparison while a false negative keeps a duplicate: weight LSH's banding for recall.
    lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, weights=(0.05, 0.95))
    kept_by_hash: dict[str, Doc] = {}
    kept: dict[str, tuple[Doc, set[str]]] = {}
    dropped: list[Dropped] = []
    for doc in tqdm(sorted(docs, key=lambda d: d.id), desc="dedup", unit="doc", disable=None):
        digest = text_hash(doc.text)
        if digest in kept_by_hash:
            original = kept_by_hash[digest]
            dropped.append(Dropped(doc.id, doc.title, "exact", original.id, original.title, 1.0))
            continue
        doc_shingles = shingles(doc.text, params.shingle_size)
        signature = MinHash(num_perm=params.num_perm, seed=params.seed)
        signature.update_batch([s.encode("utf-8") for s in doc_shingles])
        candidates = [kept[key] for key in sorted(lsh.query(signature))]
        scored = [(jaccard(doc_shingles, their), other) for other, their in candidates]
        best = max(scored, key=lambda pair: pair[0], default=None)  # ties: the smallest id
        if best is not None and best[0] >= params.threshold:
            similarity, original = best
            dropped.append(
                Dropped(
                    doc.id, doc.title, "near", original.id, original.title, round(similarity, 4)
                )
            )
            continue
        kept_by_hash[digest] = doc
        kept[doc.id] = (doc, doc_shingles)
        lsh.insert(doc.id, signature)
    return dropped


def remap_qa(records: list[QARecord], kept_id: dict[str, str]) -> tuple[list[QARecord], int]:
    """Point doc_ids at kept docs (order kept, repeats removed); also count rewritten records."""
    remapped, rewritten = [], 0
    for record in records:
        doc_ids = list(dict.fromkeys(kept_id.get(d, d) for d in record.doc_ids))
        rewritten += doc_ids != record.doc_ids
        remapped.append(record.model_copy(update={"doc_ids": doc_ids}))
    return remapped, rewritten


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    docs = read_docs(params.paths.kb_docs)
    qa_splits = read_qa_splits(params.paths.qa_dir)
    quarantine = read_quarantine(params.paths.validate_quarantine)
    out_dir = params.paths.dedup_dir
    qa_dir = params.paths.dedup_qa_dir.relative_to(out_dir)

    with stage_run("dedup", params) as run:
        metrics = deduplicate(docs, qa_splits, quarantine, params.dedup, out_dir, qa_dir)
        run.log_metrics(metrics)
        run.log_artifact(out_dir / "dropped.jsonl")


def drop_quarantined(
    docs: list[Doc], qa_splits: dict[str, list[QARecord]], quarantine: list[QuarantinedDoc]
) -> tuple[list[Doc], dict[str, list[QARecord]], list[Dropped], int]:
    """The docs and QA without the quarantined docs, the drop rows, and the QA records dropped
    for citing only quarantined docs."""
    reason = {q.id: f"quarantined:{q.expectation}" for q in quarantine}
    dropped = [
        Dropped(d.id, d.title, reason[d.id], None, None, None) for d in docs if d.id in reason
    ]
    unlinked = {split: unlink_docs(records, reason.keys()) for split, records in qa_splits.items()}
    kept_splits = {split: records for split, (records, _, _) in unlinked.items()}
    qa_dropped = sum(count for _, _, count in unlinked.values())
    return [d for d in docs if d.id not in reason], kept_splits, dropped, qa_dropped


def deduplicate(
    docs: list[Doc],
    qa_splits: dict[str, list[QARecord]],
    quarantine: list[QuarantinedDoc],
    params: DedupParams,
    out_dir: Path,
    qa_dir: Path,
) -> dict[str, int]:
    """Write the kept docs, the remapped QA (in `qa_dir`, relative to `out_dir`), the drop
    report and metrics; return the metrics."""
    valid_docs, valid_splits, quarantined, qa_dropped = drop_quarantined(
        docs, qa_splits, quarantine
    )
    duplicates = find_duplicates(valid_docs, params)
    kept_id = {d.id: d.kept_id for d in duplicates}
    kept_docs = [doc for doc in valid_docs if doc.id not in kept_id]
    remapped = {split: remap_qa(records, kept_id) for split, records in valid_splits.items()}
    for split in ("dev", "test"):  # later stages tune and score on them
        if qa_splits[split] and not valid_splits[split]:
            raise InputError(
                f"dedup: the {split} split has no question left: its questions "
                f"({len(qa_splits[split])}) cite only docs validate quarantined: fix those docs "
                "(validate lists them), or set their check in validate.on_failure to stop"
            )
    dropped = quarantined + duplicates
    metrics = {
        "docs_in": len(docs),
        "docs_out": len(kept_docs),
        "quarantined": len(quarantined),
        "exact_duplicates": sum(d.reason == "exact" for d in dropped),
        "near_duplicates": sum(d.reason == "near" for d in dropped),
        "qa_records_rewritten": sum(count for _, count in remapped.values()),
        "qa_records_dropped": qa_dropped,  # every gold doc quarantined
    }

    with atomic_path(out_dir) as out:
        write_jsonl(out / "docs.jsonl", kept_docs)
        for split, (records, _) in remapped.items():
            write_jsonl(out / qa_dir / f"{split}.jsonl", records)
        write_jsonl(out / "dropped.jsonl", [asdict(d) for d in dropped])
        write_json(out / "metrics.json", metrics)

    print("dedup: " + ", ".join(f"{key} {value}" for key, value in metrics.items()))
    for d in [d for d in dropped if d.reason == "near"][:3]:
        print(f"dedup: near duplicate {d.id!r} ~ kept {d.kept_id!r} (Jaccard {d.similarity})")
    return metrics


if __name__ == "__main__":
    run_stage(main)
