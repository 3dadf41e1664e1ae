"""The library the stages call: never imports a stage.

core/        config (the typed params loader), io, records, tracking, stats, report, plots,
             the refresh stages' "nothing to refresh" marker
kb/          reading KB sources (the packaged Wikipedia summaries and FanOutQA, a folder KB,
             the updates folder), the KB change set, description questions
retrieval/   encoders, the embedding cache, index files, the retriever, retrieval metrics
generation/  the generator: loading, prompts, training examples, answer metrics, doc-to-query
serving/     the RAG bundle (an MLflow pyfunc), the registry, the champion's state, the gate
"""
