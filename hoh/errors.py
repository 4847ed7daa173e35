"""The exception types the CLI turns into a clean message and a documented exit code.

Schedulers (cron, Kubeflow recurring runs, CI) act on exit codes, so each outcome a script may
branch on has its own: a bad flag is not a failed run, and a run whose model was refused is not
a crash. README.md ("Exit codes") lists them.
"""
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done: pushed, or nothing to do
    FAILED = 1  # the run or command failed (a component, a file, a service)
    USAGE = 2  # bad flags, unknown or invalid config values (argparse uses 2 as well)
    NOT_BLESSED = 3  # `hoh run --fail-if-not-blessed`: ran, the Evaluator refused the model
    DATA_ANOMALIES = 4  # the data broke the schema; nothing was trained
    INTERRUPTED = 130  # Ctrl-C


class HohError(Exception):
    """A problem with the user's input or environment; the message names the input and the fix."""

    exit_code = ExitCode.USAGE  # TEMP: flipped to FAILED once parallel work lands


class UsageError(HohError):
    """The command line or the configuration asks for something impossible."""

    exit_code = ExitCode.USAGE


class DataAnomaliesError(HohError):
    """The examples do not match the schema; the message lists what and where."""

    exit_code = ExitCode.DATA_ANOMALIES
