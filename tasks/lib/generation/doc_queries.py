"""Doc-to-query: the local generator writes one question per KB doc, kept when it is one clean,
new question whose source doc the retriever finds again (the round trip).

A small model often writes vague questions ("What is the purpose of a laser?" for an optics
article), answers instead of asking, or writes several; `filter_questions` says why it dropped
each one. `synthesize_queries` makes training questions this way, `refresh_questions` the
questions that test a refreshed bundle on the docs a KB change touched.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tasks.lib.core.config import Params, SynthesizeQueriesParams
from tasks.lib.core.precision import Precision, resolve_precision
from tasks.lib.core.records import Doc, QARecord, normalize_question
from tasks.lib.generation.generation_cache import (
    CachedGenerator,
    GenerationCache,
    GenerationStats,
)
from tasks.lib.generation.generator import Decoding, uses_chat_template
from tasks.lib.generation.loader import load_generator

ID_PREFIX = "syn:"
_LEAD_IN = re.compile(r"^\s*(?:\*\*)?(?:question|q)\s*\d*\s*[:.)-]\s*(?:\*\*)?\s*", re.IGNORECASE)
_MIN_WORDS, _MAX_WORDS = 3, 40


def sample_docs(docs: list[Doc], excluded: set[str], n: int, seed: int) -> list[Doc]:
    """A seeded sample of `n` docs (fewer if the KB is small), none of them in `excluded`."""
    pool = sorted((d for d in docs if d.id not in excluded), key=lambda d: d.id)
    return random.Random(seed).sample(pool, min(n, len(pool)))


def load_base_generator(
    folder: Path, fallback: str, stage: str, cache: GenerationCache
) -> CachedGenerator:
    """prepare_generator's folder, in eval mode, answering through `cache` with progress lines
    labelled `stage`; before it exists (a run outside dvc) the `prepare_generator.model` it
    would convert, in memory and slower."""
    if folder.is_dir():
        model, tokenizer = load_generator(folder)
    else:
        print(f"{stage}: {folder} missing, loading {fallback}")
        model, tokenizer = load_generator(fallback)
    return CachedGenerator(model.eval(), tokenizer, cache, progress=stage)


def questions_for_docs(
    params: Params, docs: list[Doc], stage: str
) -> tuple[list[str], GenerationStats, Precision]:
    """The base generator's raw question for each doc (`generate_questions`), through the
    generation cache, in `precision.generate`; the model is freed before the caller loads an
    encoder for the round trip."""
    precision = resolve_precision(params.precision.generate, "generate")
    with GenerationCache(params.paths.generation_cache) as cache:
        generator = load_base_generator(
            params.paths.generator_base_dir, params.prepare_generator.model, stage, cache
        )
        generated, stats = generate_questions(generator, docs, params.synthesize_queries, precision)
    print(f"{stage}: {stats.summary()} (greedy, {precision})")
    return generated, stats, precision


def doc_prompt(
    tokenizer: PreTrainedTokenizerBase, doc: Doc, params: SynthesizeQueriesParams
) -> str:
    """The params prompt with the doc's title and first `doc_words` words, as a chat user turn."""
    text = " ".join(doc.text.split()[: params.doc_words])
    user = params.prompt.replace("{title}", doc.title).replace("{text}", text)
    if not uses_chat_template(tokenizer):
        return f"{user}\nQuestion:"
    messages = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_questions(
    generator: CachedGenerator,
    docs: list[Doc],
    params: SynthesizeQueriesParams,
    precision: Precision,
) -> tuple[list[str], GenerationStats]:
    """The generator's raw reply for each doc, greedy, in order (a doc asked before with the
    same prompt settings is answered from the cache)."""
    prompts = [doc_prompt(generator.tokenizer, doc, params) for doc in docs]
    decoding = Decoding(params.max_new_tokens, precision)
    return generator.answers(prompts, params.batch_size, decoding)


def clean_question(generated: str) -> str | None:
    """The first line, without a "Question:" lead-in or quotes, if it is one question.

    A small model sometimes answers, chats or writes several questions instead: a line that
    does not end in "?" once, or is too short or long to be a search query, is refused.
    """
    lines = [line.strip() for line in generated.strip().splitlines() if line.strip()]
    if not lines:
        return None
    question = _LEAD_IN.sub("", lines[0]).strip().strip("\"'“”").strip()
    words = len(question.split())
    if not question.endswith("?") or question.count("?") != 1:
        return None
    return question if _MIN_WORDS <= words <= _MAX_WORDS else None


def filter_questions(
    docs: list[Doc],
    generated: list[str],
    ranks_of: Callable[[list[str], list[str]], list[int | None]],
    k: int,
    forbidden: set[str],
) -> tuple[list[QARecord], list[dict[str, Any]]]:
    """Keep parsable, new, round-trip-consistent questions; say why each other one was dropped.

    `ranks_of(questions, source_ids)` gives the source docs' ranks (a function, so the retrieval
    runs once over the questions that survived the cheap checks).
    """
    rejected: list[dict[str, Any]] = []
    candidates: list[tuple[Doc, str]] = []
    seen = set(forbidden)
    for doc, text in zip(docs, generated, strict=True):
        question = clean_question(text)
        key = normalize_question(question) if question else ""
        if question is None or key in seen:
            reason = (
                "not_a_question"
                if question is None
                else ("evaluation_question" if key in forbidden else "duplicate")
            )
            rejected.append({"doc_id": doc.id, "generated": text, "reason": reason})
            continue
        seen.add(key)
        candidates.append((doc, question))

    ranks = ranks_of([q for _, q in candidates], [d.id for d, _ in candidates])
    kept: list[QARecord] = []
    for (doc, question), rank in zip(candidates, ranks, strict=True):
        if rank is None:
            rejected.append(
                {"doc_id": doc.id, "generated": question, "reason": f"source_not_in_top_{k}"}
            )
            continue
        kept.append(
            QARecord(
                id=f"{ID_PREFIX}{doc.id}",
                question=question,
                answers=[],
                doc_ids=[doc.id],
                group=f"{ID_PREFIX}{doc.id}",
            )
        )
    return kept, rejected
