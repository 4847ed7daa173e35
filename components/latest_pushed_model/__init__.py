"""LatestPushedModel: the production model as the Evaluator's baseline (see component.py)."""
