"""The exception types the CLI turns into a clean message and a documented exit code.

Schedulers (cron, Kubeflow recurring runs, CI) act on exit codes, so each outcome a script may
branch on has its own: a bad flag is not a failed run, and a run whose model was refused is not
a crash. README.md ("Exit codes") lists them.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done: pushed, or nothing to do
    FAILED = 1  # the work failed: a pipeline step, a server or service, the disk (may be retried)
    USAGE = 2  # the input is wrong: flags, config values, paths or files given (fix, then rerun)
    NOT_BLESSED = 3  # `hoh run --fail-if-not-blessed`: ran, the Evaluator refused the model
    DATA_ANOMALIES = 4  # the data broke the schema; nothing was trained
    DRIFT_DETECTED = 5  # `hoh drift --fail-on-drift`: the current data drifted
    INTERRUPTED = 130  # Ctrl-C


class HohError(Exception):
    """A problem with the user's input; the message names the input and the fix."""

    exit_code = ExitCode.USAGE


class UsageError(HohError):
    """The command line or the configuration asks for something impossible."""


class RunFailed(HohError):
    """The input was fine but the work failed (a pipeline step, a server, a service, the disk):
    a scheduler may retry, where rerunning a refused input would fail the same way."""

    exit_code = ExitCode.FAILED


class DataAnomaliesError(HohError):
    """The examples do not match the schema; the message lists what and where."""

    exit_code = ExitCode.DATA_ANOMALIES
