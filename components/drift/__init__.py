"""Data-drift check: does the new span look like the data the model knows?

Pure modules (descriptors, sources, profiles, the Evidently evaluation, report writing) do the
work; `component.py` is the thin TFX glue and `cli.py` the `hoh drift` command. Nothing here
imports TensorFlow, TFX or Evidently at module level, so the CLI starts at once.
"""
