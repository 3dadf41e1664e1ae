"""The served RAG system: the bundle, the registry and the promotion gate."""
