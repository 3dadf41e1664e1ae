"""The `ragloop` command: what people run besides `dvc repro`."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="ragloop: keep a RAG system fine-tuned as its knowledge base changes.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """ragloop: keep a RAG system fine-tuned as its knowledge base changes."""
