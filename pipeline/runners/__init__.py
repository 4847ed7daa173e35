"""Runners: the same DAG run here (LocalDagRunner) or compiled for Kubeflow Pipelines."""
