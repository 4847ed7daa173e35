"""ImportExampleGen that copies already-encoded splits instead of re-encoding them
(see executor.py)."""
