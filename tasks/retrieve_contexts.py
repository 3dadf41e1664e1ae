"""Stage `retrieve_contexts`: the top-k doc ids of every question the generator trains or is
judged on (real QA splits and KB questions), through the tuned retriever (tuned encoder
index, hybrid weights re-tuned for it: `Retriever.tuned`).

Writing them once to `paths.retrieved_contexts` keeps the generator stages free of retrieval
code and lets DVC retrain the generator exactly when the retrieved passages change. It prints
recall@k of the gold docs, so generator numbers can be read against retrieval quality.
"""

from __future__ import annotations

from pathlib import Path

from tasks.lib.core.config import Params, load_params
from tasks.lib.core.io import atomic_path, run_stage, write_jsonl
from tasks.lib.core.records import KB_SPLITS, SPLITS, QARecord, read_qa
from tasks.lib.core.tracking import stage_run
from tasks.lib.retrieval.retriever import Retriever


def question_sets(params: Params) -> dict[str, list[QARecord]]:
    qa_dir = params.paths.retrieval_qa_dir
    kb_dir = params.paths.kb_questions_dir
    sets = {f"real/{s}": read_qa(qa_dir / f"{s}.jsonl", allow_empty=True) for s in SPLITS}
    return sets | {f"kb/{s}": read_qa(kb_dir / f"{s}.jsonl", allow_empty=True) for s in KB_SPLITS}


def main(params_file: Path = Path("params.yaml")) -> None:
    params = load_params(params_file)
    settings = params.retrieve_contexts
    with stage_run("retrieve_contexts", params) as run:
        retriever = Retriever.tuned(params)
        rows = []
        recalls: dict[str, float] = {}
        for name, records in question_sets(params).items():
            if (
                not records
            ):  # e.g. the KB dev / held-out sets when they are the QA dev / test splits
                print(f"retrieve_contexts: {name:12s}    0 questions, skipped")
                continue
            hits = retriever.search([r.question for r in records], k=settings.k, mode=settings.mode)
            found = dict.fromkeys(sorted({1, params.generator.top_k, settings.k}), 0)
            for record, ranked in zip(records, hits, strict=True):
                ids = [hit.id for hit in ranked]
                rows.append({"id": record.id, "doc_ids": ids, "scores": [h.score for h in ranked]})
                for cut in found:
                    found[cut] += bool(set(ids[:cut]) & set(record.doc_ids))
            recalls |= {f"{name}.recall_at_{cut}": n / len(records) for cut, n in found.items()}
            recall = ", ".join(f"R@{cut} {n / len(records):.2f}" for cut, n in found.items())
            print(
                f"retrieve_contexts: {settings.mode} {name:12s} {len(records):4d} questions, "
                f"{recall} (embedded in {retriever.embedder.precision})"
            )
        with atomic_path(params.paths.retrieved_contexts) as path:
            write_jsonl(path, rows)
        run.log_metrics(recalls)
        run.set_tags({"precision.encode": retriever.embedder.precision})


if __name__ == "__main__":
    run_stage(main)
