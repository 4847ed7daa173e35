"""Active-learning sampling: pick the unlabeled images a human should label next.

Pure modules (scoring, Label Studio files, the contact sheet, the two-pass sampler) do the work;
`component.py` is the thin TFX glue and `cli.py` the `hoh sample` / `hoh labels` commands.
Nothing here imports TensorFlow or TFX at module level, so the CLI starts at once.
"""
