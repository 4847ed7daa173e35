"""Helpers for running the pipeline step by step in Jupyter (InteractiveContext) and showing
outputs."""
