"""JSON Lines as the project reads and writes them: records split on "\n" only, and JSON that
Python's json module accepts but a later stage could not use refused with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.lib.core.io import InputError, read_jsonl, text_lines, write_jsonl
from tasks.lib.core.records import Doc

# Each is a line break to str.splitlines but plain text inside a JSON string.
LINE_BREAKS_OF_SPLITLINES = "\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e"


def test_text_with_unicode_line_breaks_round_trips(tmp_path: Path) -> None:
    docs = [
        Doc(id="a", title="Para\u2028graph", text=f"one{LINE_BREAKS_OF_SPLITLINES}two", source="s"),
        Doc(id="b", title="B", text="plain", source="s"),
    ]
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, docs)
    assert path.read_bytes().count(b"\n") == 2
    assert read_jsonl(path, Doc) == docs


def test_crlf_lines_and_line_numbers(tmp_path: Path) -> None:
    assert list(text_lines("a\r\nb\u2028c\n")) == [(1, "a"), (2, "b\u2028c"), (3, "")]
    path = tmp_path / "docs.jsonl"
    row = {"id": "a", "title": "A", "text": "t", "source": "s"}
    path.write_bytes(json.dumps(row).encode() + b"\r\n\r\n" + b'{"id": \r\n')
    with pytest.raises(InputError, match=r"docs\.jsonl:3: malformed JSON"):
        read_jsonl(path, Doc)


def test_surrogate_pair_escape_is_one_character(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"id": "a", "title": "A", "text": "smile \\ud83d\\ude00", "source": "s"}\n', "utf-8"
    )
    assert read_jsonl(path, Doc)[0].text == "smile \U0001f600"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"id": "x", "title": "X", "text": "half \\ud800 pair", "source": "s"}',
            "field 'text': lone surrogate escape \\ud800 (half of a UTF-16 pair",
        ),
        (
            '{"id": "x", "title": "X", "text": "t", "source": "s", "tags": {"\\uDC00": 1}}',
            "field 'tags.\\udc00': lone surrogate escape \\udc00",
        ),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply for this reader: flatten it"),
        (
            '{"id": "x", "title": "X", "text": "t", "source": "s", "n": ' + "9" * 5000 + "}",
            "an integer of more than 4300 digits: write it as a string (or null)",
        ),
        (
            '{"id": "x", "title": "X", "text": "t", "source": "s", "n": NaN}',
            "NaN is not a JSON number: write it as a string (or null)",
        ),
        (
            '{"id": "x", "title": "X", "text": "t", "source": "s", "n": Infinity}',
            "Infinity is not a JSON number",
        ),
        (
            '{"id": "x", "title": "X", "text": "t", "source": "s", "n": [-Infinity]}',
            "-Infinity is not a JSON number",
        ),
        (
            '{"id": "x", "title": "X", "text": "t", "source": "s", "n": 1e999}',
            "1e999 is too large for a float: write it as a string (or null)",
        ),
        (
            '{"id": "x", "title": "X", "text": "first", "text": "second", "source": "s"}',
            "key 'text' appears twice in one object: keep one of them",
        ),
    ],
    ids=[
        "lone-surrogate",
        "surrogate-key",
        "nesting",
        "huge-int",
        "nan",
        "inf",
        "-inf",
        "1e999",
        "duplicate-key",
    ],
)
def test_json_python_accepts_but_later_stages_cannot_use(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "docs.jsonl"
    row = {"id": "a", "title": "A", "text": "fine", "source": "s"}
    path.write_text(json.dumps(row) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_jsonl(path, Doc)
    assert str(info.value).startswith(f"{path}:2: ")
    assert message in str(info.value)


def test_a_folder_where_a_file_is_read_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").mkdir()
    with pytest.raises(InputError, match="a folder stands where a file is needed: move it away"):
        read_jsonl(tmp_path / "docs.jsonl", Doc)
