"""`hoh monitor` over a window of captured 300x300 images: wall time at 1k/2k/4k captures.

    .venv/bin/python -m bench.monitor                       # windows of 1000, 2000, 4000
    .venv/bin/python -m bench.monitor --sizes 1000 --out /tmp/bench-monitor

The target (issue 16): 1,000 captures with embeddings in <= 60 s on 2 cores, and a cost linear in
the window. Setup, not timed: a real MobileNetV2 (224 px, alpha 1.0, the offline ImageNet file
when present) exported with the real Transform graph and pushed into a Triton repository
(bench/model_setup.py), a reference span of demo images imported with `hoh data import`'s code,
and the push-time record of the model's eval predictions (what the TritonPusher writes; its
cost is reported on its own). Each window is written with the gateway's own `Capturer.write`
(images as PNG, one results line each); the served answers are drawn from the model's eval
predictions, so an in-distribution window stays `ok` and no labelling batch is written (that
path costs one more backbone pass over the window; `--shifted` measures it).

Timed: `hoh monitor` as a user runs it, a fresh process (imports and model load included), with
its Evidently workspace. The load average is recorded before each run: other processes share
the two cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.measure import run_measured  # noqa: E402

DAY = date(2026, 12, 1)
REFERENCE_PER_CLASS = 150


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def write_window(root: Path, size: int, model: dict, shifted: bool) -> None:
    """`size` captures in the gateway's layout (`Capturer.write`), answers drawn from `rows`."""
    from PIL import ImageEnhance

    from hoh.data.demo import render_image
    from hoh.data.images import content_id
    from hoh.serving.gateway.capture import Capture, Capturer

    rng = random.Random(size)
    rows, classes = model["rows"], model["classes"]
    name, version = Path(model["version_dir"]).parent.name, Path(model["version_dir"]).name
    capturer = Capturer(root, rate=1.0, queue_size=1)
    try:
        for i in range(size):
            cls = classes[i % len(classes)]
            image = render_image(cls, REFERENCE_PER_CLASS + i // len(classes), size=300)
            if shifted:
                image = ImageEnhance.Brightness(image.convert("RGB")).enhance(0.45).rotate(90)
            data = _png(image)
            predicted, confidence = rows[rng.randrange(len(rows))]
            rest = (1.0 - confidence) / max(1, len(classes) - 1)
            probabilities = {c: confidence if c == predicted else rest for c in classes}
            result = {"class": predicted, "probability": confidence, "probabilities": probabilities}
            when = datetime(DAY.year, DAY.month, DAY.day, 12, 0, tzinfo=timezone.utc)
            capture = Capture(
                f"req{i:06d}",
                0,
                name,
                version,
                data,
                content_id(data),
                result,
                when,
            )
            capturer.write(capture)
    finally:
        capturer.close()


def setup(workdir: Path, weights: str) -> dict:
    """Build once per --out: a rerun reuses the model and the windows written for it."""
    done = workdir / "setup.json"
    if done.is_file():
        return json.loads(done.read_text())
    from bench.model_setup import build_and_push
    from hoh.components.triton_pusher.repository import TritonPushSettings
    from hoh.data.sources import span_source
    from hoh.trainer import eval_predictions

    model = build_and_push(
        workdir,
        TritonPushSettings(flavor="tensorflow"),  # predict_split loads the version's SavedModel
        image_size=224,
        alpha=1.0,
        weights=weights,
        images_per_class=REFERENCE_PER_CLASS,
        source_size=300,
    )
    version_dir = model.model_dir / str(model.version)
    started = time.perf_counter()
    record = eval_predictions.predict_split(
        str(version_dir), span_source(str(workdir / "data"), 1, ("eval",))
    )
    (version_dir / eval_predictions.RECORD_FILE).write_bytes(eval_predictions.record_bytes(record))
    model = {
        "version_dir": str(version_dir),
        "classes": model.class_names,
        "weights": model.weights,
        "record_seconds": round(time.perf_counter() - started, 2),
        "record_images": record["summary"]["images"],
        "rows": [(p["predicted"], p["confidence"]) for p in record["predictions"]],
    }
    done.write_text(json.dumps(model))
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hoh-bench-monitor"))
    parser.add_argument("--weights", default="auto", help="'auto', 'none' or an .h5 path")
    parser.add_argument("--shifted", action="store_true", help="darkened, rotated captures")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = setup(out / "model", args.weights)
    print(
        f"model: {model['version_dir']} (weights {model['weights']}); push-time record of "
        f"{model['record_images']} eval images: {model['record_seconds']} s",
        flush=True,
    )
    results = []
    for size in sizes:
        captures = out / f"captures-{size}"
        if not captures.exists():
            write_window(captures, size, model, args.shifted)
        run_dir = out / "runs" / f"{size}-{int(time.time())}"
        command = [
            sys.executable, "-m", "hoh.cli", "monitor", "--capture", str(captures),
            "--model", model["version_dir"], "--reference", str(out / "model" / "data"),
            "--since", str(DAY), "--until", str(DAY), "--out", str(run_dir),
            "--workspace", str(out / "evidently"),
        ]  # fmt: skip
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        measured = run_measured(command, out / "logs" / f"monitor-{size}.log").check()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {
            "captures": size,
            "served_images": summary["counts"]["served_images"],
            "verdict": summary["verdict"],
            "seconds": round(measured.seconds, 1),
            "ms_per_image": round(1000 * measured.seconds / size, 1),
            "cpu_seconds": round(cpu, 1),  # user + system of the monitor process, all threads
            "peak_rss_mb": round(measured.peak_rss_mb),
            "load_before": round(load, 2),
            "embeddings": bool((summary["input_drift"] or {}).get("embeddings")),
            "label_batch": bool(summary["label_batch"]),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "cpus": os.cpu_count(),
        "push_time_record": {k: model[k] for k in ("record_seconds", "record_images")},
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| captures | verdict | wall s | ms/image | CPU s | peak RSS MB | load before |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['captures']} | {r['verdict']} | {r['seconds']} | {r['ms_per_image']} | "
            f"{r['cpu_seconds']} | {r['peak_rss_mb']} | {r['load_before']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
