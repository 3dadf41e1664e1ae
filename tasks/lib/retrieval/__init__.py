"""Dense and sparse retrieval: encoders, the embedding cache, index files, the retriever."""
