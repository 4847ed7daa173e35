"""What MLflow tracking adds to a pipeline run (issue 14: at most 3 s).

    .venv/bin/python -m bench.tracking --repeat 2 --json-out bench-tracking.json

Each measured step is its own `hoh run` process, as a user runs it (MLflow imported, its store
opened, the run logged), on the same generated span with the tiny profile (32 px, 1 epoch: the
pipeline is short, so the overhead is as visible as it gets). Per repetition, alternating so a
slow minute on the shared machine hits both sides alike:

- first run in a fresh output directory, tracking off (the same-run baseline) vs on (the
  embedded SQLite store is created);
- a second run in each directory with another setting (`training.epochs=2`: cache hits up to
  the Trainer), off vs on (an existing store: the steady state).

Wall time is the process's (`wait4`), and so is its CPU time (user + system, the tracking
worker process included): on a shared machine the wall time swings by tens of seconds with
the other load, the CPU time far less. The post-run step's own time is what `hoh run` prints
in its `tracked: ... (N s)` line. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.measure import run_measured  # noqa: E402

_TRACKED = re.compile(r"^tracked: .*\(([\d.]+) s\)$", re.M)


def _span(root: Path) -> Path:
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    make_demo_dataset(root / "images", per_class=24, size=64)
    import_images(root / "images", root / "data")
    return root / "data"


def _hoh_run(data: Path, out: Path, log: Path, *overrides: str):
    command = [
        str(Path(sys.executable).with_name("hoh")),
        "run",
        "--profile",
        "tiny",
        "--data",
        str(data),
        "--output",
        str(out),
    ]
    for override in overrides:
        command += ["--set", override]
    return run_measured(command, log).check()


def measure(workdir: Path, repeat: int) -> dict:
    data = _span(workdir)
    off = "tracking.enabled=false"
    runs: dict = {}
    _hoh_run(data, workdir / "warm", workdir / "warm.log", off)  # page cache, pyc files
    for i in range(repeat):
        for kind, extra in (("first", ()), ("second", ("training.epochs=2",))):
            for tracked in (False, True):
                name = f"{kind} run, tracking {'on' if tracked else 'off'} #{i}"
                out = workdir / f"{'on' if tracked else 'off'}{i}"
                overrides = extra if tracked else (off, *extra)
                m = _hoh_run(data, out, workdir / f"{name}.log".replace(" ", "_"), *overrides)
                step = _TRACKED.search(m.stdout)
                runs[name] = {
                    "run_s": round(m.seconds, 2),
                    "cpu_s": round(m.cpu_s, 2),
                    "post_run_step_s": float(step.group(1)) if step else None,
                }
                print(
                    f"{name}: {m.seconds:.1f} s, CPU {m.cpu_s:.1f} s"
                    + (f" (post-run step {step.group(1)} s)" if step else ""),
                    flush=True,
                )
    summary = {}
    for kind in ("first", "second"):
        added = [
            runs[f"{kind} run, tracking on #{i}"]["run_s"]
            - runs[f"{kind} run, tracking off #{i}"]["run_s"]
            for i in range(repeat)
        ]
        ratios = [
            runs[f"{kind} run, tracking on #{i}"]["run_s"]
            / runs[f"{kind} run, tracking off #{i}"]["run_s"]
            for i in range(repeat)
        ]
        added_cpu = [
            runs[f"{kind} run, tracking on #{i}"]["cpu_s"]
            - runs[f"{kind} run, tracking off #{i}"]["cpu_s"]
            for i in range(repeat)
        ]
        summary[kind] = {
            "added_s_median": round(statistics.median(added), 2),
            "added_s": [round(a, 2) for a in added],
            "ratio_on_off_median": round(statistics.median(ratios), 3),
            "added_cpu_s_median": round(statistics.median(added_cpu), 2),
            "added_cpu_s": [round(a, 2) for a in added_cpu],
        }
    return {"runs": runs, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out")
    parser.add_argument("--repeat", type=int, default=2, help="off/on pairs of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hoh-bench-tracking-") as tmp:
        results = measure(Path(tmp), args.repeat)
    print(json.dumps(results, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
