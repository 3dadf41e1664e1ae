"""The served RAG system: the bundle, the registry, the champion's state and the promotion
gate."""
