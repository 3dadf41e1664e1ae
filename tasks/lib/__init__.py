"""The library the stages call: never imports a stage.

core/        config (the typed params loader), io, records, tracking, stats, report, plots
kb/          reading KB sources (the packaged Wikipedia summaries and FanOutQA, a folder KB)
retrieval/   encoders, the embedding cache, index files, the retriever, retrieval metrics
generation/  the generator: loading, prompts, training examples, answer metrics
serving/     the RAG bundle (an MLflow pyfunc), the registry and the promotion gate
"""
