"""The model under test, made the way production makes it: real Transform graph, real export,
real push.

What Triton serves is `serving_default`, which decodes and resizes inside the graph; a benchmark
on a bare Keras model would leave that cost out of both sides of the comparison. So: demo images
-> `hoh data import` span -> `preprocessing_fn` analysed by tft_beam (tests' support code, the same
path the export tests use) -> MobileNetV2 from `build_model` -> `export_model` -> `push_model`.
Weights do not change the compute, so random ones are fine for throughput; the offline ImageNet
file is used when present so the numbers are for the real network bit-for-bit.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from hoh.errors import HohError

if TYPE_CHECKING:  # the real import pulls in tritonclient's protos: only when building
    from hoh.components.triton_pusher.repository import TritonPushSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO_ROOT.parent / "shared" / "models"


@dataclass
class BenchModel:
    serving_dir: Path
    model_dir: Path  # REPO/MODEL_NAME
    version: int
    class_names: list[str]
    image_paths: list[Path]
    weights: str
    seconds: dict[str, float] = field(default_factory=dict)  # how long each setup step took


def resolve_weights(weights: str, alpha: float, image_size: int) -> str:
    """'auto' -> the offline ImageNet file when one exists for (alpha, size), else 'none'.

    'imagenet' is refused: Keras would try to download, and benchmarks never do.
    """
    from hoh.trainer.model import imagenet_weights_filename

    if weights == "imagenet":
        raise HohError("--weights imagenet may download; pass 'auto', 'none' or a path to the .h5")
    if weights != "auto":
        return weights
    if image_size != 224:  # Keras would load 224 weights into another size with a warning
        return "none"
    name = imagenet_weights_filename(alpha, image_size)
    for candidate in (SHARED_MODELS / name, Path.home() / ".keras" / "models" / name):
        if candidate.is_file():
            return str(candidate)
    return "none"


def _analyze_span():
    """tests_support's tft_beam runner: one implementation of "Transform without a pipeline"."""
    tests_dir = str(REPO_ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from tests_support.transform import analyze_span

    return analyze_span


def build_and_push(
    workdir: Path,
    settings: "TritonPushSettings",
    *,
    image_size: int,
    alpha: float,
    weights: str,
    images_per_class: int,
    source_size: int,
) -> BenchModel:
    import tensorflow_transform as tft

    from hoh import features
    from hoh.components.triton_pusher.flavors import push_model  # settings.flavor decides
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images
    from hoh.trainer import export
    from hoh.trainer import model as model_lib

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    images_dir, data_root = workdir / "images", workdir / "data"
    make_demo_dataset(images_dir, per_class=images_per_class, size=source_size)
    import_images(images_dir, data_root)
    lap("images")
    tft_dir = _analyze_span()(data_root, workdir / "transform", image_size=image_size)
    tft_output = tft.TFTransformOutput(str(tft_dir))
    class_names = [v.decode() for v in tft_output.vocabulary_by_name(features.LABEL_VOCAB_NAME)]
    lap("transform")
    resolved = resolve_weights(weights, alpha, image_size)
    spec = model_lib.ModelSpec(
        num_classes=len(class_names), image_size=image_size, alpha=alpha, weights=resolved
    )
    model = model_lib.build_model(spec)
    lap("build")
    image_paths = sorted(images_dir.rglob("*.png"))
    serving_dir = workdir / "model" / "Format-Serving"
    export.export_model(
        model,
        str(serving_dir),
        tft_output,
        class_names,
        image_size,
        sample_image=image_paths[0].read_bytes(),
        extra_info={"trainer": "bench/serving.py"},
    )
    lap("export")
    pushed = push_model(str(serving_dir), str(workdir / "repository"), settings)
    lap("push")
    return BenchModel(
        serving_dir=serving_dir,
        model_dir=Path(pushed.model_dir),
        version=pushed.version,
        class_names=class_names,
        image_paths=image_paths,
        weights=resolved,
        seconds=seconds,
    )


def tune_config(
    model_dir: Path, intra_op_threads: Optional[int], response_cache: bool
) -> dict[str, object]:
    """Edit the pushed config.pbtxt the way docs/SERVING.md tells operators to (before start).

    `intra_op_threads` is read by model.py (0 = cores / CPU instances); turning the response
    cache off shows what the cache's hashing and insertion cost on every miss.
    """
    from hoh.components.triton_pusher.repository import (
        CONFIG_FILE,
        parse_model_config,
        render_model_config,
    )

    path = model_dir / CONFIG_FILE
    config = parse_model_config(path.read_text())
    if intra_op_threads is not None:
        config.parameters["intra_op_threads"].string_value = str(intra_op_threads)
    config.response_cache.enable = response_cache
    path.write_text(render_model_config(config))
    return {
        "intra_op_threads": config.parameters["intra_op_threads"].string_value,
        "response_cache": config.response_cache.enable,
        "max_batch_size": config.max_batch_size,
        "preferred_batch_sizes": list(config.dynamic_batching.preferred_batch_size),
        "max_queue_delay_us": config.dynamic_batching.max_queue_delay_microseconds,
        "instance_count": sum(g.count for g in config.instance_group),
    }
