"""Monitoring: what the served model actually sees, judged against the data it knows.

Pure modules read a window of gateway captures (`window.py`), test the served predictions
(`predictions.py`), write Prometheus figures (`prom.py`) and tie them to the drift check and the
active-learning sampler (`monitor.py`); `cli.py` is the `hoh monitor` command. Nothing here
imports TensorFlow or Evidently at module level, so the CLI starts at once.
"""
