"""Benchmark scripts: ``python -m bench.<name>``; shared harness in :mod:`bench.common`."""
