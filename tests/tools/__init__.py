"""The CLI, demo, docs, examples, packaging, benchmarks and the architecture checks."""
