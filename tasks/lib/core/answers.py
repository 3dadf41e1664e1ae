"""SQuAD-style answer normalization, shared by ingest (is a question answerable from its gold
passage?) and generation evaluation (exact match, token F1), so both judge text the same way."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (the SQuAD v1.1 recipe)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def answer_in_text(answer: str, text: str) -> bool:
    """True when the normalized answer occurs in the normalized text on token boundaries."""
    needle = normalize_answer(answer)
    return bool(needle) and f" {needle} " in f" {normalize_answer(text)} "
