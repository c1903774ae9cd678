"""Benchmarks of the service (speed is measured here, never in tests). See ``bench/README.md``."""
