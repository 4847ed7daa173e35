"""The one exception type the CLI turns into a clean message instead of a traceback."""


class HohError(Exception):
    """A problem with the user's input or environment; the message names the input and the fix."""
