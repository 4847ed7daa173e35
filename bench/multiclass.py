"""Adding a class to a served model: retrain with a warm embedding store vs a cold one vs the
plain Keras script, on the same images, split and machine.

    .venv/bin/python -m bench.multiclass                  # scales 1 and 4, 300 new-class images
    .venv/bin/python -m bench.multiclass --scales 4 --new-images 300

For each scale S: the real horses-or-humans training set grown to S times its size (the originals
plus mirrored/rotated/darkened variants, each a new image with its own content hash) is imported
as span 1 and trained with `hoh run --profile real` (2 classes), which fills the embedding store
beside the data. Span 2 adds a third class (generated `birds`, 300x300 like the real images).
Then, each in its own process:

- warm: `hoh run` on span 2 with data.classes=horses,humans,birds: the store holds every horse
  and human, so only the birds go through the backbone;
- cold: the same run into a fresh output with an empty store (`embeddings.store=<new dir>`):
  every image goes through the backbone, exactly what every retrain cost before the store;
- baseline: bench/baseline_keras.py (3-way softmax) on span 2's own train/eval split.

Ratios are the headline (absolute seconds on a shared 2-core machine are noisy). The Trainer
time is the retraining itself; the whole run also has steps the store does not touch
(statistics, Transform's analysis pass, the Evaluator's inference over the eval split). The drift
check is off in the measured runs (`drift.enabled=false`): with it on, it reaches the new images
first (same frozen backbone, same store) and the Trainer then finds them all stored, which would
hide the new-image work from the Trainer's time; its descriptor pass is its own cost
(docs/DRIFT.md). Per-class precision/recall of the warm run's 3-class model are computed on span 2's
eval split through the pushed model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.measure import run_measured  # noqa: E402
from bench.pipeline import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_WEIGHTS,
    _hoh,
    _step,
    baseline_run,
    component_seconds,
    split_sources,
    write_scaled_copy,
)

CLASSES = "horses,humans,birds"


def _latest_timing(output: Path) -> dict:
    runs = sorted(
        (output / "pipeline_root" / "Trainer" / "model_run").glob("*/timing.json"),
        key=lambda p: int(p.parent.name),
    )
    return json.loads(runs[-1].read_text())


def hoh_run(data: Path, output: Path, log: Path, weights: Path, epochs: int, *sets: str) -> dict:
    command = [_hoh(), "run", "--profile", "real", "--data", str(data), "--output", str(output)]
    for value in (f"model.weights={weights}", f"training.epochs={epochs}", *sets):
        command += ["--set", value]
    ran = run_measured(command, log).check()
    timing = _latest_timing(output)
    return {
        **_step(ran),
        "components_seconds": component_seconds(ran.stdout),
        "trainer_fit_seconds": round(timing["fit_seconds"], 2),
        "embedding_store": timing.get("embedding_store"),
    }


def per_class_metrics(model_version_dir: Path, data: Path, span: int) -> dict:
    """Precision/recall per class and the confusion matrix of a pushed model on a span's eval."""
    import numpy as np

    import hoh  # noqa: F401
    from hoh.data.sources import span_source
    from hoh.trainer.predictor import Predictor

    predictor = Predictor(model_version_dir, embeddings=False)
    names = predictor.class_names
    truth, guess, batch = [], [], []

    def flush():
        out = predictor.predict([r.data for r in batch])
        truth.extend(names.index(batch[i].label) for i in out.ok)
        guess.extend(int(j) for j in out.probabilities.argmax(axis=1))
        batch.clear()

    for record in span_source(str(data), span, ["eval"]):
        batch.append(record)
        if len(batch) == 64:
            flush()
    if batch:
        flush()
    confusion = np.zeros((len(names), len(names)), dtype=int)
    for t, g in zip(truth, guess):
        confusion[t, g] += 1
    per_class = {}
    for i, name in enumerate(names):
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        per_class[name] = {
            "precision": round(float(confusion[i, i] / predicted), 4) if predicted else None,
            "recall": round(float(confusion[i, i] / actual), 4) if actual else None,
            "eval_images": int(actual),
        }
    return {
        "accuracy": round(float(np.trace(confusion) / confusion.sum()), 4),
        "per_class": per_class,
        "confusion": {"classes": names, "rows_true_cols_predicted": confusion.tolist()},
    }


def measure_scale(args: argparse.Namespace, scale: int, say) -> dict:
    from hoh.data.demo import make_demo_dataset

    work = args.work / f"scale-{scale}"
    two, three, data = work / "two", work / "three", work / "data"
    say(f"scale {scale}: writing {scale}x the horses/humans set and {args.new_images} birds")
    original = write_scaled_copy(args.data, two, scale)
    write_scaled_copy(two, three, 1)
    make_demo_dataset(work / "birds", per_class=args.new_images, size=300, classes=("birds",))
    (three / "birds").symlink_to(work / "birds" / "birds", target_is_directory=True)
    run_measured([_hoh(), "data", "import", str(two), "--out", str(data)], work / "import1.log")
    say(f"scale {scale}: span 1 ({original} images), 2 classes: fills the store")
    first = hoh_run(
        data,
        work / "out",
        work / "run1.log",
        args.weights,
        args.epochs,
        "data.classes=horses,humans",
    )
    run_measured([_hoh(), "data", "import", str(three), "--out", str(data)], work / "import2.log")
    say(f"scale {scale}: span 2 adds birds; warm-store retrain")
    warm = hoh_run(
        data,
        work / "out",
        work / "warm.log",
        args.weights,
        args.epochs,
        f"data.classes={CLASSES}",
        "drift.enabled=false",
    )
    say(f"scale {scale}: the same retrain with an empty store (cold)")
    cold = hoh_run(
        data,
        work / "out-cold",
        work / "cold.log",
        args.weights,
        args.epochs,
        f"data.classes={CLASSES}",
        "drift.enabled=false",
        f"embeddings.store={work / 'cold-store'}",
    )
    result = {
        "scale": scale,
        "span1_images": original,
        "new_images": args.new_images,
        "first_run_2_classes": first,
        "warm": warm,
        "cold": cold,
        "trainer_cold_over_warm": round(
            cold["trainer_fit_seconds"] / warm["trainer_fit_seconds"], 2
        ),
        "run_cold_over_warm": round(cold["seconds"] / warm["seconds"], 2),
    }
    if not args.skip_baseline:
        say(f"scale {scale}: the plain Keras script on span 2's split")
        sources = split_sources(data, span=2)
        baseline = baseline_run(three, sources, work, args.weights, args.epochs)
        result["baseline"] = baseline
        result["baseline_over_warm_trainer"] = round(
            baseline["fit_seconds"] / warm["trainer_fit_seconds"], 2
        )
    served = work / "out" / "model_repository" / "hoh"
    version = max(int(p.name) for p in served.iterdir() if p.name.isdigit())
    result["warm_model"] = per_class_metrics(served / str(version), data, 2)
    return result


def markdown(results: list[dict]) -> str:
    rows = [
        "| scale | span 2 images (new) | Trainer warm s | Trainer cold s | cold/warm | run warm s "
        "| run cold s | cold/warm | Keras script fit s | script/warm Trainer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        base = r.get("baseline") or {}
        rows.append(
            f"| {r['scale']}x | {r['span1_images'] + r['new_images']} ({r['new_images']}) "
            f"| {r['warm']['trainer_fit_seconds']} | {r['cold']['trainer_fit_seconds']} "
            f"| {r['trainer_cold_over_warm']} | {r['warm']['seconds']} | {r['cold']['seconds']} "
            f"| {r['run_cold_over_warm']} | {round(base.get('fit_seconds', 0), 1) or '-'} "
            f"| {r.get('baseline_over_warm_trainer', '-')} |"
        )
    for r in results:
        m = r["warm_model"]
        shown = ", ".join(
            f"{name} P {v['precision']} R {v['recall']} (n={v['eval_images']})"
            for name, v in m["per_class"].items()
        )
        rows.append(f"\n{r['scale']}x, 3-class model: accuracy {m['accuracy']}; {shown}")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hoh-bench-multiclass"))
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--new-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir() or not args.weights.is_file():
        print(f"needs {args.data} and {args.weights} (../shared); nothing to measure")
        return 1
    if args.work.exists() and any(args.work.iterdir()):
        print(f"--work {args.work} is not empty; give a new directory")
        return 2

    def say(line: str) -> None:
        print(line, flush=True)

    results = [measure_scale(args, int(s), say) for s in args.scales.split(",")]
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
