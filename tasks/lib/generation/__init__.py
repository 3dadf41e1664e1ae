"""The generator: loading, prompts and generation, training examples, answer metrics, and
doc-to-query questions."""
