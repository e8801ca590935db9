"""Conformance helpers for tests and benchmarks: deterministic generated weights in the official
key layouts (``conformance.generated_weights``). Nothing here is used by the pipeline itself."""
