"""Kubeflow Pipelines client side: compile/submit/schedule commands, run parameters,
Beam presets."""
