"""Benchmarks (print numbers; never run as tests)."""
