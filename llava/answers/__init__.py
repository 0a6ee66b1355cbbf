"""Answer files: the one batched answer engine, provenance records, JSON/JSONL reading."""
