"""Run history and model lifecycle in MLflow, beside MLMD (docs/LIFECYCLE.md): the post-run
step that logs a run and registers its model (`log.track_run`), the registry kept in step with
the Triton repository (`registry`), model cards (`model_card`) and `hoh runs` / `hoh models`."""
