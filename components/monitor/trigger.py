"""The retraining trigger of `hoh monitor` (`monitor.on_alert`): start a run when the model's
answers are in question, at most once per cooldown, and remember when and why.

What fires it: a window that drifted or whose online accuracy fell below the threshold. A
breached latency objective does not (retraining does not make a slow service fast), nor does a
window with too few images (no evidence either way). The run itself is a subprocess of hoh's
own CLI, `hoh run ARGS` (local) or `hoh kfp submit ARGS` (Kubeflow, through the existing client
and its credential handling), so this module imports no pipeline code and a components-layer
job can start it. The Evaluator of that run still decides whether its model ships.

The state file is the memory across windows: every firing is appended (time, verdict, reasons,
command, and the pid or the submission's output), and a firing within `cooldown_hours` of the
last one is skipped with the reason said. It is written beside itself and renamed, under a
lock, so two monitor runs at once cannot both fire. A state file that is not hoh's (broken
JSON, another shape) is an error naming it: guessing would either fire again or never.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

from hoh.durable import write_hidden_temp
from hoh.errors import UsageError

FIRES_ON = ("drift", "accuracy_low")
STATE_VERSION = 1
KEEP = 100  # firings kept in the state file

# (argv, log file, wait) -> what to record: {"pid": ...} or {"returncode": ..., "output": ...}
Launcher = Callable[[list[str], Path, bool], dict]


def command(mode: str, args: Sequence[str]) -> list[str]:
    """The retraining command of `mode`; checked before any monitoring work is done."""
    hoh = [sys.executable, "-m", "hoh.cli"]
    if mode == "local":
        return [*hoh, "run", *args]
    if mode == "kubeflow":
        if not any(a == "--host" or a.startswith("--host=") for a in args):
            raise UsageError(
                "monitor.on_alert kubeflow needs the Kubeflow Pipelines API in "
                "monitor.trigger_args (e.g. --trigger-args '--host https://kfp.example.com')"
            )
        return [*hoh, "kfp", "submit", *args]
    raise UsageError(f"monitor.on_alert {mode!r} is not one of none, local, kubeflow")


def launch(argv: list[str], log: Path, wait: bool) -> dict:
    """Start `argv` in its own session, its output in `log`. A local run takes hours: the
    monitor records its pid and returns. `hoh kfp submit` only uploads: it is waited for."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        if wait:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=600)
            text = log.read_text(encoding="utf-8", errors="replace")
            return {"returncode": done.returncode, "output": text[-2000:]}
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return {"pid": child.pid}


def read_state(path: Path) -> dict:
    if not path.exists():
        return {"version": STATE_VERSION, "fired": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(
            f"trigger state {path} cannot be read ({exc}); fix or delete it "
            "(deleting it lets the trigger fire again at once)"
        ) from None
    fired = state.get("fired") if isinstance(state, dict) else None
    if not isinstance(fired, list) or not all(
        isinstance(f, dict) and isinstance(f.get("ts"), (int, float)) for f in fired
    ):
        raise UsageError(
            f"trigger state {path} is not a hoh trigger state (no 'fired' list of firings with "
            "'ts'); fix or delete it (deleting it lets the trigger fire again at once)"
        )
    return state


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def maybe_fire(
    checks: dict,
    reasons: list[str],
    verdict: str,
    mode: str,
    args: Sequence[str],
    cooldown_hours: float,
    state_path: Path,
    log: Path,
    now: float,
    launcher: Optional[Launcher] = None,
) -> Optional[dict]:
    """Fire when a check in FIRES_ON holds and the cooldown allows; returns what the summary
    says about it (None when the trigger is off)."""
    if mode == "none":
        return None
    argv = command(mode, args)
    why = [name for name in FIRES_ON if checks.get(name)]
    result = {"mode": mode, "fired": False, "state": str(state_path), "why": why}
    if not why:
        return {**result, "skipped": f"verdict {verdict}: nothing that retraining would fix"}
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(state_path.with_name(f".{state_path.name}.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(state_path)
        last = max((f["ts"] for f in state["fired"]), default=None)
        if last is not None and now - last < cooldown_hours * 3600:
            return {
                **result,
                "skipped": f"cooldown: fired at {_iso(last)}, "
                f"{(now - last) / 3600:.1f} h ago (monitor.cooldown_hours={cooldown_hours:g}); "
                f"next possible at {_iso(last + cooldown_hours * 3600)}",
            }
        started = (launcher or launch)(argv, log, mode == "kubeflow")
        if started.get("returncode", 0) != 0:  # a failed submission is not a firing
            return {**result, "error": f"exit status {started['returncode']}", **started}
        firing = {
            "ts": now,
            "time": _iso(now),
            "mode": mode,
            "verdict": verdict,
            "why": why,
            "reasons": reasons,
            "command": argv,
            "log": str(log),
            **started,
        }
        state["fired"] = [*state["fired"], firing][-KEEP:]
        temp = write_hidden_temp(state_path.parent, state_path.name, json.dumps(state, indent=2))
        os.replace(temp, state_path)
        return {**result, "fired": True, "command": argv, "log": str(log), **started}
    finally:
        os.close(lock)
