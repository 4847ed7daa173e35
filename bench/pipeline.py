"""hoh's pipeline against the plain Keras script, on the same images, split and machine.

    .venv/bin/python -m bench.pipeline                      # baseline + import + full `hoh run`
    .venv/bin/python -m bench.pipeline --scales 1,2,4 --skip-baseline   # growth with data size

Uses the real horses-or-humans training split and the offline ImageNet backbone from ../shared
(both optional: it says so and exits when they are absent; nothing is downloaded). Each measured
step runs as its own process so wall time and peak RSS are that step's alone. Writes JSON
(`--json-out`) and prints a Markdown table; ratios pipeline/baseline are the headline because
absolute seconds on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so `python bench/pipeline.py` works as well as `-m bench.pipeline`
from bench.measure import Measured, run_measured  # noqa: E402

SHARED = REPO.parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "horse-or-human" / "train"
DEFAULT_WEIGHTS = (
    SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)
_DONE = re.compile(r"^✔ (\S+) ([\d.]+)s(?:, peak RSS ([\d.]+) (MB|GB))?")
_METRIC = re.compile(r"(auc|binary_accuracy) ([\d.]+)")


def _hoh() -> str:
    return str(Path(sys.executable).with_name("hoh"))


def component_seconds(stdout: str) -> dict[str, float]:
    """Per-component durations from `hoh run`'s progress lines."""
    return {
        m.group(1): float(m.group(2)) for line in stdout.splitlines() if (m := _DONE.match(line))
    }


def component_peak_rss_mb(stdout: str) -> dict[str, float]:
    """Per-component peak RSS of the pipeline process, from the same lines (Linux only)."""
    return {
        m.group(1): float(m.group(3)) * (1024 if m.group(4) == "GB" else 1)
        for line in stdout.splitlines()
        if (m := _DONE.match(line)) and m.group(3)
    }


def run_metrics(stdout: str) -> dict[str, float]:
    line = next(
        (text for text in stdout.splitlines() if text.startswith("metrics (eval split):")), ""
    )
    return {name: float(value) for name, value in _METRIC.findall(line)}


def split_sources(data_root: Path, span: int = 1) -> dict[str, list[str]]:
    """Which source files the import put in train and eval, so the baseline uses the same split."""
    import tensorflow as tf

    import hoh  # noqa: F401
    from hoh import features

    out = {}
    for split in features.SPLITS:
        files = sorted(
            str(p) for p in (features.span_dir(data_root, span) / split).glob("*.tfrecord.gz")
        )
        spec = {features.SOURCE_KEY: tf.io.FixedLenFeature([], tf.string)}
        out[split] = [
            tf.io.parse_single_example(r, spec)[features.SOURCE_KEY].numpy().decode()
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
        ]
    return out


def link_split_tree(src: Path, sources: dict[str, list[str]], dest: Path) -> None:
    """dest/{train,eval}/CLASS/file -> symlinks into src, the layout
    image_dataset_from_directory reads."""
    for split, paths in sources.items():
        for rel in paths:
            link = dest / split / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src / rel)


def write_scaled_copy(src: Path, dest: Path, factor: int) -> int:
    """The data set plus (factor-1) augmented variants of every image, written as new PNG files."""
    from PIL import Image, ImageEnhance, ImageOps

    variants = [
        lambda im: ImageOps.mirror(im),
        lambda im: im.rotate(8, resample=Image.BILINEAR),
        lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    ]
    count = 0
    for path in sorted(src.glob("*/*")):
        target = dest / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
        count += 1
        with Image.open(path) as image:
            for k in range(factor - 1):
                variants[k % len(variants)](image).save(target / f"{path.stem}-aug{k}.png")
                count += 1
    return count


def pipeline_run(data_src: Path, work: Path, weights: Path, epochs: int, extra: list[str]) -> dict:
    data = work / "data"
    imported = run_measured(
        [_hoh(), "data", "import", str(data_src), "--out", str(data)], work / "import.log"
    ).check()
    report = json.loads((data / "span-1" / "import_report.json").read_text())
    written = report["written"]
    command = [
        _hoh(),
        "run",
        "--profile",
        "real",
        "--data",
        str(data),
        "--output",
        str(work / "out"),
        "--set",
        f"model.weights={weights}",
        "--set",
        f"training.epochs={epochs}",
        *extra,
    ]
    ran = run_measured(command, work / "run.log").check()
    timing = json.loads(
        next(
            (work / "out" / "pipeline_root" / "Trainer" / "model_run").glob("*/timing.json")
        ).read_text()
    )
    counts = re.search(r"^data: eval (\d+), train (\d+) examples", ran.stdout, re.M)
    n_eval, n_train = (int(counts.group(1)), int(counts.group(2))) if counts else (None, None)
    comps = component_seconds(ran.stdout)
    return {
        "import": _step(imported, images=written),
        "run": _step(ran),
        "total_seconds": imported.seconds + ran.seconds,
        "components_seconds": comps,
        "components_peak_rss_mb": component_peak_rss_mb(ran.stdout),
        "train_examples": n_train,
        "eval_examples": n_eval,
        "trainer_fit_seconds": timing["fit_seconds"],
        "cached_features": timing.get("cached_features"),
        "train_images_per_second": n_train * epochs / timing["fit_seconds"] if n_train else None,
        "transform_images_per_second": (n_train + n_eval) / comps["Transform"]
        if n_train and comps.get("Transform")
        else None,
        "metrics": run_metrics(ran.stdout),
    }


def _step(m: Measured, images: int | None = None) -> dict:
    out = {"seconds": round(m.seconds, 2), "peak_rss_mb": round(m.peak_rss_mb, 1)}
    if images:
        out["images_per_second"] = round(images / m.seconds, 1)
    return out


# The script as a user would write it, and the same script with hoh's AutoGraph rule for tf_keras
# (hoh/autograph.py): the second keeps the comparison about the pipeline, not one TF workaround.
BASELINES = {"baseline": [], "baseline_exempt": ["--exempt-tf-keras-autograph"]}


def baseline_run(
    data_src: Path,
    sources: dict[str, list[str]],
    work: Path,
    weights: Path,
    epochs: int,
    name: str = "baseline",
) -> dict:
    tree = work / "baseline-split"
    if not tree.exists():
        link_split_tree(data_src, sources, tree)
    command = [
        sys.executable,
        str(Path(__file__).with_name("baseline_keras.py")),
        "--train",
        str(tree / "train"),
        "--eval",
        str(tree / "eval"),
        "--weights",
        str(weights),
        "--epochs",
        str(epochs),
        *BASELINES[name],
    ]
    m = run_measured(command, work / f"{name}.log").check()
    result = json.loads(m.stdout.strip().splitlines()[-1])
    result.update(_step(m))
    return result


def table(result: dict) -> str:
    b, e, p = result.get("baseline"), result.get("baseline_exempt"), result["pipeline"]
    rows = [
        "| measure | baseline (Keras script) | baseline + AutoGraph rule | hoh pipeline "
        "| pipeline / baseline | pipeline / baseline + rule |",
        "|---|---|---|---|---|---|",
    ]

    def row(name, key, pv, ratio=True):
        bv, ev = (b or {}).get(key), (e or {}).get(key)
        ratios = [f"{pv / v:.2f}x" if ratio and v and pv else "" for v in (bv, ev)]

        def fmt(v):
            if v is None:
                return ""
            if isinstance(v, float):
                return f"{v:.3f}" if v < 2 else f"{v:.1f}"
            return str(v)

        rows.append(f"| {name} | {fmt(bv)} | {fmt(ev)} | {fmt(pv)} | {ratios[0]} | {ratios[1]} |")

    row("wall time, import -> evaluated/pushed model (s)", "seconds", p["total_seconds"])
    row("training images/s", "train_images_per_second", p["train_images_per_second"])
    row(
        "peak RSS of the biggest process (MB)",
        "peak_rss_mb",
        max(p["import"]["peak_rss_mb"], p["run"]["peak_rss_mb"]),
    )
    row("held-out accuracy", "accuracy", p["metrics"].get("binary_accuracy"), ratio=False)
    row("held-out AUC", "auc", p["metrics"].get("auc"), ratio=False)
    peaks = p.get("components_peak_rss_mb", {})
    rates = {
        "Transform": p.get("transform_images_per_second"),
        "Trainer": p.get("train_images_per_second"),
    }

    def fmt_rate(r):
        return f"{r:.1f}" if r else ""

    lines = [
        "\n".join(rows),
        "",
        "| pipeline step | seconds | images/s | peak RSS MB |",
        "|---|---|---|---|",
        f"| hoh data import (own process) | {p['import']['seconds']:.1f} "
        f"| {fmt_rate(p['import'].get('images_per_second'))} "
        f"| {p['import']['peak_rss_mb']:.0f} |",
    ]
    lines += [
        f"| {name} | {secs:.1f} | {fmt_rate(rates.get(name))} | {peaks.get(name, 0):.0f} |"
        for name, secs in p["components_seconds"].items()
    ]
    lines.append(
        f"| `hoh run` outside components (start-up, loading TFX, summary) | "
        f"{p['run']['seconds'] - sum(p['components_seconds'].values()):.1f} | | |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="hoh pipeline vs. plain Keras baseline on real images"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder-per-class images")
    parser.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="MobileNetV2 1.0 224 no-top .h5"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "hoh-output" / "bench-pipeline")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--scales", default="1", help="comma-separated data multipliers, e.g. 1,2,4"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="passed to hoh run"
    )
    args = parser.parse_args(argv)
    for what, path in (("data set", args.data), ("backbone weights", args.weights)):
        if not path.exists():
            print(
                f"bench/pipeline.py: the {what} is not at {path}; this benchmark needs the shared "
                "horses-or-humans images and the offline ImageNet backbone (see docs/BENCHMARKS.md)"
            )
            return 2
    results = {"data": str(args.data), "epochs": args.epochs, "runs": []}
    for scale in [int(s) for s in args.scales.split(",")]:
        work = args.work / f"scale-{scale}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        src = args.data
        if scale > 1:
            src = work / "images"
            write_scaled_copy(args.data, src, scale)
        run = {
            "scale": scale,
            "pipeline": pipeline_run(
                src,
                work,
                args.weights,
                args.epochs,
                sum((["--set", o] for o in args.overrides), []),
            ),
        }
        if not args.skip_baseline:
            sources = split_sources(work / "data")
            for name in BASELINES:
                run[name] = baseline_run(src, sources, work, args.weights, args.epochs, name)
        results["runs"].append(run)
        print(f"\n## scale {scale}x\n\n{table(run)}\n", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
