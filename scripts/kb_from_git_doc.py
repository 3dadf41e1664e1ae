"""Turn the git documentation (Debian package `git-doc`) into a ragloop KB folder.

A real KB nobody here wrote, for trying the bring-your-own-KB path: every HTML page of the
package (man pages, user manual, guides) is cut at its section headings (h2/h3), and each
section into passages of at most `--max-words` words at paragraph boundaries, because an
encoder reads a few hundred tokens and a whole OPTIONS section is thousands of words. One
canonical doc per passage: id `<page>#<section anchor>[-<part>]`, title `<page title>: <section>`.

    python scripts/kb_from_git_doc.py --out data/sources/git-doc         # downloads git-doc
    python scripts/kb_from_git_doc.py --html-dir /usr/share/doc/git-doc --out ...

The download uses `apt-get download` (no root needed) and `dpkg -x`; nothing is installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

HEADINGS = {"h2", "h3"}
BLOCKS = {"p", "pre", "dt", "dd", "li", "td", "h4", "div"}
SKIPPED = {"script", "style", "head"}
SKIPPED_SECTIONS = {"git", "author", "documentation", "reporting bugs"}  # boilerplate footers


@dataclass
class Section:
    anchor: str
    heading: str
    paragraphs: list[str] = field(default_factory=list)


class SectionParser(HTMLParser):
    """Collects the page title (h1) and the text of each h2/h3 section, paragraph by paragraph."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[Section] = [Section("top", "")]
        self._in: str | None = None  # "h1" or a heading tag while its text is read
        self._skip = 0
        self._buffer: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED:
            self._skip += 1
        elif tag == "h1" or tag in HEADINGS:
            self._flush()
            self._in = tag
            anchor = dict(attrs).get("id") or f"s{len(self.sections)}"
            if tag in HEADINGS:
                self.sections.append(Section(anchor.lstrip("_"), ""))
        elif tag in BLOCKS or tag == "br":
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED:
            self._skip -= 1
        elif tag == self._in:
            text = " ".join("".join(self._buffer).split())
            self._buffer = []
            if tag == "h1" and not self.title:
                self.title = text.removesuffix(" Manual Page")
            elif tag in HEADINGS:
                self.sections[-1].heading = text
            self._in = None
        elif tag in BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._buffer.append(data)

    def _flush(self) -> None:
        if self._in:
            return
        text = " ".join("".join(self._buffer).split())
        self._buffer = []
        if text:
            self.sections[-1].paragraphs.append(text)


def passages(paragraphs: list[str], max_words: int) -> list[str]:
    """Consecutive paragraphs packed into passages of at most `max_words` words (a longer
    paragraph is cut on word boundaries)."""
    out: list[str] = []
    current: list[str] = []
    for paragraph in paragraphs:
        words = paragraph.split()
        while len(words) > max_words:
            out.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if len(current) + len(words) > max_words and current:
            out.append(" ".join(current))
            current = []
        current += words
    if current:
        out.append(" ".join(current))
    return out


def page_docs(path: Path, max_words: int) -> list[dict[str, str]]:
    parser = SectionParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    title = parser.title or path.stem
    docs = []
    for section in parser.sections:
        if section.heading.casefold() in SKIPPED_SECTIONS:
            continue
        heading = f"{title}: {section.heading.title()}" if section.heading else title
        parts = passages(section.paragraphs, max_words)
        for number, text in enumerate(parts, start=1):
            suffix = f"-{number}" if len(parts) > 1 else ""
            docs.append(
                {
                    "id": f"{path.stem}#{section.anchor}{suffix}",
                    "title": heading,
                    "text": text,
                    "source": f"git-doc/{path.name}",
                }
            )
    return docs


def downloaded_html_dir(workdir: Path) -> Path:
    """`apt-get download git-doc` and unpack it into `workdir` (Debian's mirror, no install)."""
    subprocess.run(["apt-get", "download", "-q", "git-doc"], cwd=workdir, check=True)
    (deb,) = workdir.glob("git-doc_*.deb")
    subprocess.run(["dpkg", "-x", str(deb), str(workdir / "root")], check=True)
    return workdir / "root/usr/share/doc/git-doc"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="KB folder to write docs.jsonl in")
    parser.add_argument("--html-dir", type=Path, help="git-doc's HTML folder (default: download)")
    parser.add_argument("--max-words", type=int, default=200, help="words per passage at most")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        html_dir = args.html_dir or downloaded_html_dir(Path(tmp))
        pages = sorted(html_dir.glob("*.html"))
        if not pages:
            where = f"no .html pages in {html_dir}"
            print(f"error: {where}: pass git-doc's HTML folder as --html-dir", file=sys.stderr)
            return 2
        docs = [doc for page in pages for doc in page_docs(page, args.max_words)]
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        print(f"error: duplicate section ids {dupes}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "docs.jsonl"
    target.write_text(
        "".join(json.dumps(d, ensure_ascii=True) + "\n" for d in docs), encoding="utf-8"
    )
    words = [len(d["text"].split()) for d in docs]
    short = sum(n < 5 for n in words)
    print(
        f"kb_from_git_doc: {len(pages)} pages -> {len(docs)} passages in {target} "
        f"(median {sorted(words)[len(words) // 2]} words, {short} under 5 words)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
