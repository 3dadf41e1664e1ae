"""Reading KB sources into the canonical docs and QA records."""
