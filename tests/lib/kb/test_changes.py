"""A KB change: the updates folder editing and deleting docs through ingest, and the change set
between the KB the champion serves and the new one (pure library calls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import ingest
from tasks.lib.core.config import load_params
from tasks.lib.core.io import InputError, write_json
from tasks.lib.core.records import Doc, read_docs, read_qa_splits
from tasks.lib.kb.changes import (
    NO_CHAMPION,
    UNCHANGED,
    ChampionRef,
    ChangeSet,
    Pinned,
    content_hashes,
    diff_kb,
    read_change_set,
)
from tasks.lib.kb.questions import title_question
from tasks.lib.kb.source_state import source_fingerprint
from tests.support.projects import make_project, qa_rows, write_jsonl

CHAMPION = ChampionRef(
    model="rag",
    version="3",
    retriever=Pinned(model="retriever", version="2"),
    generator=Pinned(model="generator", version="1"),
)


def doc(doc_id: str, text: str, title: str = "", **extra: str) -> Doc:
    return Doc(id=doc_id, title=title or doc_id.title(), text=text, source="s", **extra)


def test_change_set_names_added_modified_and_deleted_docs() -> None:
    # The champion's index rows carry id, title and text only.
    served = content_hashes(
        [
            {"id": "a", "title": "A", "text": "Alpha."},
            {"id": "b", "title": "B", "text": "Beta."},
            {"id": "c", "title": "C", "text": "Gamma."},
            {"id": "d", "title": "D", "text": "Delta."},
        ]
    )
    new = content_hashes(
        [
            doc("a", "Alpha.", description="a new description, not what retrieval sees"),
            doc("b", "Beta, edited."),
            doc("d", "Delta.", title="D renamed"),
            doc("e", "Epsilon."),
        ]
    )
    changes = diff_kb(new, served, CHAMPION)
    assert (changes.added, changes.modified, changes.deleted) == (["e"], ["b", "d"], ["c"])
    assert changes.counts == {"added": 1, "modified": 2, "deleted": 1, "unchanged": 1}
    assert changes.changed == ["b", "d", "e"]
    assert changes.nothing_to_refresh is None and changes.champion == CHAMPION

    same = diff_kb(served, served, CHAMPION)
    assert same.nothing_to_refresh == UNCHANGED
    assert same.added == same.modified == same.deleted == []
    assert same.counts["unchanged"] == 4


def test_change_set_file_round_trips_and_refuses_a_silent_no_champion(tmp_path: Path) -> None:
    path = tmp_path / "changes.json"
    first = ChangeSet.without_champion(NO_CHAMPION)
    write_json(path, first.model_dump(mode="json"))
    assert read_change_set(path) == first
    assert json.loads(path.read_text())["champion"] is None
    write_json(path, first.model_dump(mode="json") | {"nothing_to_refresh": None})
    with pytest.raises(InputError, match=r"not a change set.*rerun kb_changes"):
        read_change_set(path)


def kb_project(tmp_path: Path) -> Path:
    """The tiny folder KB, plus a QA record citing two docs (one of them to be deleted)."""
    params_file = make_project(tmp_path)
    two_docs = {
        "id": "q_two",
        "question": "What do a glacier and a volcano share?",
        "answers": ["rock"],
        "doc_ids": ["volcano", "glacier"],
        "group": "g_two",
    }
    write_jsonl(tmp_path / "my_qa/qa.jsonl", [*qa_rows(), two_docs])
    return params_file


def ingested(params_file: Path) -> tuple[list[Doc], dict[str, dict[str, list[str]]]]:
    ingest.main(params_file)
    root = params_file.parent
    splits = read_qa_splits(root / "data/qa")
    records = {r.id: r.doc_ids for split in splits.values() for r in split}
    return read_docs(root / "data/kb/docs.jsonl"), records


def test_updates_folder_edits_adds_and_deletes_folder_kb_docs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = kb_project(tmp_path)
    updates = tmp_path / "data/sources/updates"
    before, _ = ingested(params_file)

    # Comments and blank lines only: nothing deleted, byte-identical outputs.
    kb_file, test_qa = tmp_path / "data/kb/docs.jsonl", tmp_path / "data/qa/test.jsonl"
    untouched = kb_file.read_bytes(), test_qa.read_bytes()
    (updates / "deleted.txt").write_text("# nothing yet\n\n", encoding="utf-8")
    ingested(params_file)
    assert (kb_file.read_bytes(), test_qa.read_bytes()) == untouched
    assert "updates folder" not in capsys.readouterr().out

    # A .md file named like a jsonl doc's id replaces it; a new id is added.
    (updates / "lighthouse.md").write_text(
        "# Lighthouse\n\nA lighthouse now guides drones too.\n", encoding="utf-8"
    )
    write_jsonl(
        updates / "new.jsonl",
        [{"id": "comet", "title": "Comet", "text": "A comet has a tail.", "source": "feed"}],
    )
    (updates / "deleted.txt").write_text("# retired\nvolcano\n\n  faq  \nvolcano\n", "utf-8")
    docs, records = ingested(params_file)

    ids = [d.id for d in docs]
    expected = [d.id for d in before if d.id not in {"volcano", "faq"}] + ["comet"]
    assert ids == expected  # the edit keeps its place; the new doc comes last
    by_id = {d.id: d for d in docs}
    assert by_id["lighthouse"].text == "A lighthouse now guides drones too."
    assert by_id["lighthouse"].source == "lighthouse.md"
    # q0 cited only faq and q4 only volcano: dropped; q_two keeps its other gold doc.
    assert "q0" not in records and "q4" not in records
    assert records["q_two"] == ["glacier"]
    assert len(records) == len(qa_rows()) + 1 - 2
    out = capsys.readouterr().out
    assert "1 docs added, 1 replaced, 2 deleted; 3 QA records lost a deleted gold doc" in out
    assert "2 of them dropped" in out


def test_deleting_an_unknown_doc_names_the_line_and_changes_nothing(tmp_path: Path) -> None:
    params_file = kb_project(tmp_path)
    ingested(params_file)
    kb_file = tmp_path / "data/kb/docs.jsonl"
    before = kb_file.read_bytes()
    deletions = tmp_path / "data/sources/updates/deleted.txt"
    deletions.write_text("glacier\n# a comment\nno-such-doc\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"deleted.txt:3: doc id 'no-such-doc' is not in the KB"):
        ingest.main(params_file)
    assert kb_file.read_bytes() == before


def test_duplicate_ids_inside_the_updates_folder_are_still_refused(tmp_path: Path) -> None:
    params_file = kb_project(tmp_path)
    updates = tmp_path / "data/sources/updates"
    (updates / "comet.md").write_text("# Comet\n\nA comet has a tail.\n", encoding="utf-8")
    write_jsonl(updates / "more.jsonl", [{"id": "comet", "title": "C", "text": "t", "source": "s"}])
    with pytest.raises(InputError, match=r"more.jsonl: field 'id': duplicate id 'comet'"):
        ingest.main(params_file)


def test_deletions_file_is_part_of_the_watched_source(tmp_path: Path) -> None:
    params = load_params(kb_project(tmp_path)).ingest
    empty = source_fingerprint(params)
    params.deletions_path.write_text("glacier\n", encoding="utf-8")
    deleting = source_fingerprint(params)
    assert deleting != empty
    params.deletions_path.write_text("glacier\nvolcano\n", encoding="utf-8")
    assert source_fingerprint(params) not in {empty, deleting}


def test_every_changed_doc_without_a_description_gets_a_title_probe() -> None:
    doc = Doc(id="new", title="Lake Oshuno", text="A crater lake in Peru.", source="update")
    probe = title_question(doc, "What is {title}?")
    assert (probe.id, probe.question, probe.answers, probe.doc_ids) == (
        "title:new",
        "What is Lake Oshuno?",
        [],
        ["new"],
    )
