"""Benchmarks, not tests: run each with `python -m benchmarks.<name>` from the repository root (`make bench`)."""
