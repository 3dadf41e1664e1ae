"""Write a ragloop KB folder from the packaged Wikipedia summaries, as a user's own KB would be.

For trying the bring-your-own-KB path on real text nobody here wrote: the docs carry title and
text only (no `description`, which a user's documents do not have), so `kb_questions` must
generate its questions. Two KBs this makes:

    # Spanish (or fr-fr) summaries, no QA set: the no-QA path
    python scripts/kb_from_wiki_summaries.py --lang es-es --out data/sources/wiki-es
    # an English subset with its real FanOutQA questions in a QA folder: the real-QA path
    python scripts/kb_from_wiki_summaries.py --lang en-us --docs 3000 --with-fanoutqa \
        --out data/sources/wiki-en

`--docs N` keeps a seeded sample of N docs (every FanOutQA evidence page first, with
--with-fanoutqa, so each question keeps its gold doc). The folder gets `kb/docs.jsonl` and
`qa/qa.jsonl` (empty folder without --with-fanoutqa): point `ingest.kb_folder` and
`ingest.qa_folder` at them.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tasks.lib.core.assets import package_file
from tasks.lib.core.io import read_text
from tasks.lib.kb.sources import (
    FANOUT_FILE,
    FANOUT_PACKAGE,
    WIKI_PACKAGE,
    docs_from_wiki_summaries,
    qa_from_fanout,
)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows), "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lang", default="es-es", help="summaries file: en-us | es-es | fr-fr")
    parser.add_argument("--out", type=Path, required=True, help="folder for kb/ and qa/")
    parser.add_argument("--docs", type=int, default=0, help="seeded sample of N docs; 0: all")
    parser.add_argument("--with-fanoutqa", action="store_true", help="en-us: its real questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    summaries_file = package_file(WIKI_PACKAGE, f"data/summaries_{args.lang}.json")
    summaries = json.loads(read_text(summaries_file))
    docs = docs_from_wiki_summaries(summaries)
    records = []
    if args.with_fanoutqa:
        questions = json.loads(read_text(package_file(FANOUT_PACKAGE, FANOUT_FILE)))
        records = qa_from_fanout(questions, {doc.id for doc in docs})
    if args.docs:
        gold = {d for r in records for d in r.doc_ids}
        rest = sorted(doc.id for doc in docs if doc.id not in gold)
        chosen = gold | set(random.Random(args.seed).sample(rest, max(args.docs - len(gold), 0)))
        docs = [doc for doc in docs if doc.id in chosen]
    rows = [
        {"id": d.id, "title": d.title, "text": d.text, "source": f"{WIKI_PACKAGE}/{args.lang}"}
        for d in docs
    ]
    write_jsonl(args.out / "kb" / "docs.jsonl", rows)
    (args.out / "qa").mkdir(parents=True, exist_ok=True)
    if records:
        rows_qa = [r.model_dump(exclude_none=True) for r in records]
        write_jsonl(args.out / "qa" / "qa.jsonl", rows_qa)
    print(
        f"kb_from_wiki_summaries: {len(rows)} docs ({args.lang}, no descriptions) -> "
        f"{args.out / 'kb'}; {len(records)} QA records -> {args.out / 'qa'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
