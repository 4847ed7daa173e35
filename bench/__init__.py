"""Benchmarks for hoh, run from a checkout (e.g. `python -m bench.serving`); not installed.

They live outside the package because they build throwaway models and data, reuse the tests'
support code, and exist to produce the numbers in docs/BENCHMARKS.md, not to run in production.
"""
