"""The probe's bad inputs: JSONL, QA, KB folder and params cases, with the checks that tell a
wrong result behind an exit 0 (see bench/probe_failures.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.probe_harness import Case, Outcome
from tests.support.projects import qa_rows

KB_DOCS = "my_kb/docs.jsonl"
QA_FILE = "my_qa/qa.jsonl"
DOC = {"id": "probe", "title": "Probe", "source": "probe"}
LONG = "a passage long enough to pass the length checks of validate"


def append(rel: str, line: bytes | str) -> Callable[[Path], None]:
    data = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line

    def apply(root: Path) -> None:
        path = root / rel
        path.write_bytes(path.read_bytes() + data + b"\n")

    return apply


def doc_line(**fields: Any) -> str:
    return json.dumps(DOC | {"text": LONG} | fields, ensure_ascii=False)


def raw_doc(tail: str) -> str:
    """A doc line whose last field is spelled by hand (JSON that json.dumps would not write)."""
    return doc_line()[:-1] + ", " + tail + "}"


def qa_line(**fields: Any) -> str:
    row = {"id": "q99", "question": "What is a glacier made of?", "answers": ["ice"]}
    return json.dumps(row | {"doc_ids": ["glacier"], "group": "g99"} | fields)


def write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return apply


def edit_params(dotted: str, value: Any) -> Callable[[Path], None]:
    """Set (or, with value None, delete) a dotted key of params.yaml."""

    def apply(root: Path) -> None:
        path = root / "params.yaml"
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        if value is None:
            del node[key]
        else:
            node[key] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")

    return apply


def chain(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        for step in steps:
            step(root)

    return apply


def nothing(root: Path) -> None:
    """The fault is in the command's environment, not the project."""


def kb_docs(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "data/kb/docs.jsonl"
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]
    return {row["id"]: row for row in rows}


def doc_kept(doc_id: str, **expected: str) -> Callable[[Path, Outcome], str | None]:
    """After an exit 0: the doc is in the KB with these field values (else what went wrong)."""

    def check(root: Path, outcome: Outcome) -> str | None:
        if outcome.rc != 0:
            return None
        doc = kb_docs(root).get(doc_id)
        if doc is None:
            return f"doc {doc_id!r} silently dropped"
        wrong = {k: doc.get(k) for k, v in expected.items() if doc.get(k) != v}
        return f"doc {doc_id!r} mangled: {wrong!r:.80}" if wrong else None

    return check


def text_keeps(char: str) -> Callable[[Path, Outcome], str | None]:
    def check(root: Path, outcome: Outcome) -> str | None:
        if outcome.rc != 0:
            return None
        doc = kb_docs(root).get("probe")
        if doc is None or char not in doc["text"]:
            return f"U+{ord(char):04X} lost from the text"
        return None

    return check


def ids_unchanged(root: Path, outcome: Outcome) -> str | None:
    """After an exit 0: the KB holds the same doc ids as the scratch project's."""
    if outcome.rc != 0:
        return None
    extra = sorted(i for i in kb_docs(root) if i.startswith(".") or "/." in i)
    return f"hidden files ingested: {extra}" if extra else None


def warned_about(name: str) -> Callable[[Path, Outcome], str | None]:
    """A file the KB cannot read may be skipped, but not in silence: the output names it, or
    counts it by its suffix in a skipped line."""

    def check(root: Path, outcome: Outcome) -> str | None:
        said = outcome.out + outcome.err
        counted = any("skipped" in line and Path(name).suffix in line for line in said.splitlines())
        if outcome.rc == 0 and name not in said and not counted:
            return f"{name} ignored without a word"
        return None

    return check


def no_passwd(root: Path, outcome: Outcome) -> str | None:
    docs = root / "data/kb/docs.jsonl"
    if outcome.rc == 0 and "root:" in docs.read_text(encoding="utf-8"):
        return "/etc/passwd ingested as a doc"
    return None


def question_once(question: str) -> Callable[[Path, Outcome], str | None]:
    """After an exit 0: the question is left once in dedup's QA splits (no leak across them)."""

    def check(root: Path, outcome: Outcome) -> str | None:
        if outcome.rc != 0:
            return None
        seen = [
            split.stem
            for split in sorted((root / "data/dedup/qa").glob("*.jsonl"))
            for ln in split.read_text(encoding="utf-8").split("\n")
            if ln.strip() and json.loads(ln)["question"] == question
        ]
        return f"the same question kept in splits {seen}" if len(seen) > 1 else None

    return check


def remove(rel: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return apply


def empty_kb(root: Path) -> None:
    shutil.rmtree(root / "my_kb")
    (root / "my_kb").mkdir()


def symlink_passwd(root: Path) -> None:
    (root / "my_kb/passwd.txt").symlink_to("/etc/passwd")


def checkpoint_copy(root: Path) -> None:
    folder = root / "my_kb/.ipynb_checkpoints"
    folder.mkdir()
    shutil.copy(root / KB_DOCS, folder / "docs-checkpoint.jsonl")


def input_cases() -> list[Case]:
    question = qa_rows()[1]["question"]
    return [
        # JSONL
        Case("malformed JSON line", "jsonl", append(KB_DOCS, '{"id": "x", "title": ')),
        Case("non-UTF-8 bytes", "jsonl", append(QA_FILE, b'{"id": "q9", "question": "caf\xe9"}')),
        *[
            Case(
                f"U+{ord(c):04X} inside a string",
                "jsonl",
                append(KB_DOCS, doc_line(text=f"{LONG}{c}and a second line")),
                expect="accept",
                check=text_keeps(c),
            )
            for c in ("\u2028", "\u2029", "\u0085")
        ],
        Case(
            r'lone surrogate "\ud800"',
            "jsonl",
            append(KB_DOCS, json.dumps(DOC | {"text": LONG + "\ud800"})),  # the \u escape
        ),
        Case(
            "100000-deep nesting",
            "jsonl",
            append(KB_DOCS, raw_doc('"deep": ' + "[" * 100_000 + "]" * 100_000)),
        ),
        Case("5000-digit number", "jsonl", append(KB_DOCS, raw_doc('"n": ' + "7" * 5000))),
        Case("NaN literal", "jsonl", append(KB_DOCS, raw_doc('"score": NaN'))),
        Case("Infinity literal", "jsonl", append(KB_DOCS, raw_doc('"score": -Infinity'))),
        Case("JSON array, not an object", "jsonl", append(KB_DOCS, '["probe", "Probe"]')),
        Case("duplicate key in an object", "jsonl", append(KB_DOCS, raw_doc('"id": "probe2"'))),
        Case("duplicate id", "jsonl", append(KB_DOCS, doc_line(id="widget"))),
        Case("missing field", "jsonl", append(KB_DOCS, json.dumps(DOC))),
        Case("wrong type", "jsonl", append(KB_DOCS, doc_line(title=5))),
        Case("empty docs file", "jsonl", write(KB_DOCS, "")),
        Case("empty QA file", "jsonl", write(QA_FILE, "\n")),
        Case(
            "BOM at file start",
            "jsonl",
            lambda root: (root / KB_DOCS).write_bytes(
                b"\xef\xbb\xbf" + (root / KB_DOCS).read_bytes()
            ),
            expect="either",
            check=doc_kept("j1", title="J one"),
        ),
        # QA
        Case("QA doc_ids []", "qa", append(QA_FILE, qa_line(doc_ids=[]))),
        Case("QA unknown doc id", "qa", append(QA_FILE, qa_line(doc_ids=["nope"]))),
        Case(
            "QA same question, two groups",
            "qa",
            append(QA_FILE, qa_line(question=question)),
            expect="either",
            check=question_once(question),
        ),
        Case("QA empty question", "qa", append(QA_FILE, qa_line(question=""))),
        Case("QA blank question", "qa", append(QA_FILE, qa_line(question="   "))),
        Case("QA answers []", "qa", append(QA_FILE, qa_line(answers=[]))),
        # KB folder
        Case("symlink to /etc/passwd", "kb", symlink_passwd, expect="either", check=no_passwd),
        Case(
            ".ipynb_checkpoints copy of a doc",
            "kb",
            checkpoint_copy,
            expect="accept",
            check=ids_unchanged,
        ),
        Case(
            ".MD file",
            "kb",
            write("my_kb/NOTES.MD", f"# Notes\n\n{LONG}\n"),
            expect="accept",
            check=doc_kept("NOTES", title="Notes"),
        ),
        Case(
            ".markdown file",
            "kb",
            write("my_kb/howto.markdown", f"# How to\n\n{LONG}\n"),
            expect="accept",
            check=doc_kept("howto", title="How to"),
        ),
        Case(
            ".pdf file",
            "kb",
            write("my_kb/manual.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"),
            expect="either",
            check=warned_about("manual.pdf"),
        ),
        Case(
            ".html file",
            "kb",
            write("my_kb/page.html", f"<html><h1>Page</h1><p>{LONG}</p></html>"),
            expect="either",
            check=warned_about("page.html"),
        ),
        Case(
            "BOM before # Title",
            "kb",
            write("my_kb/bom.md", f"\ufeff# Title\n\n{LONG}\n"),
            expect="accept",
            check=doc_kept("bom", title="Title"),
        ),
        Case("empty KB folder", "kb", empty_kb),
        Case("KB folder does not exist", "kb", remove("my_kb")),
        # params
        Case("params unknown key", "params", edit_params("dedup.treshold", 0.5)),
        Case("params out-of-range value", "params", edit_params("dedup.threshold", 1.5)),
        Case('params "128" for an int', "params", edit_params("dedup.num_perm", "128")),
        Case('params "no" for a bool', "params", edit_params("tracking.enabled", "no")),
        Case(
            "params split fractions > 1",
            "params",
            edit_params("ingest.split", {"train": 0.7, "dev": 0.4, "seed": 0}),
        ),
        Case("params not YAML", "params", write("params.yaml", "ingest: [unclosed\n  a: : b\n")),
        Case("params file empty", "params", write("params.yaml", "")),
        Case("params section missing", "params", edit_params("dedup", None)),
        Case("params file missing", "params", remove("params.yaml")),
    ]
