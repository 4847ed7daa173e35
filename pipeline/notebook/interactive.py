"""What the notebooks call between cells: their data, an InteractiveContext, artifact readers.

The notebooks run the very components `create_components` builds (they never redefine one); what
they add is reading each step's outputs back for people: a few examples through the transform
graph, the Trainer's curves, TFMA's metrics as a table, the sampler's picks. Each helper is a plain
function of artifacts or paths, so it is unit-tested without Jupyter and the cells stay short.
Drawing lives in `hoh.pipeline.notebook.views`.
"""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hoh import features
from hoh.config import HohConfig, builtin_config_path, load_config
from hoh.errors import HohError

NOTEBOOK_DATA = "notebook-data"  # under the output dir, apart from `hoh run`'s demo-data
POOL_SEED = 1000  # the pool's images are drawn apart from every span's


def quiet_logs() -> None:
    """Keep cells to what the components produced. A run prints hundreds of library INFO lines,
    deprecation notices and Google's Python-version FutureWarnings (`hoh run` sends the same to
    its log file); errors still show, and a failing component still raises."""
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # 0/0 in TFMA's per-class slices, where one class has no negatives: expected, not a problem.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="tensorflow_model_analysis")
    # TF's logger gets a filter, not only a level: the Transform and Trainer executors set its
    # verbosity back to INFO. absl's keeps a level only: the local runner's progress lines
    # (`ensure_pushed_model`) are absl INFO records it lets through while it runs.
    logging.getLogger("absl").setLevel(logging.ERROR)
    for name in ("tensorflow", "apache_beam"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if _errors_only not in logger.filters:
            logger.addFilter(_errors_only)


def _errors_only(record) -> bool:
    import logging

    return record.levelno >= logging.ERROR


def notebook_config(
    *,
    profile: str,
    output_dir: str,
    data_root: Optional[str] = None,
    pool_root: Optional[str] = None,
    image_size: Optional[int] = None,
    alpha: Optional[float] = None,
    weights: Optional[str] = None,
    epochs: Optional[int] = None,
    overrides: Sequence[str] = (),
) -> HohConfig:
    """A built-in profile with the parameter cell's values on top (None = the profile's value).

    Paths become absolute: the kernel runs in notebooks/, the components anywhere.
    """

    def absolute(path: Optional[str]) -> Optional[str]:
        return str(Path(path).resolve()) if path else None

    fields = {
        "output_dir": absolute(output_dir),
        "data.root": absolute(data_root),
        "sampling.pool_root": absolute(pool_root),
        "transform.image_size": image_size,
        "model.alpha": alpha,
        "model.weights": weights,
        "training.epochs": epochs,
    }
    return load_config(builtin_config_path(profile), list(overrides), **fields)


def demo_data(output_dir: str, per_class: int, size: int, spans: int = 2) -> tuple[str, str]:
    """(data root, pool root) of a small generated set: `spans` labelled spans, so the drift check
    has a reference, and an unlabeled pool for the sampler. Made once per output dir.

    Each span is drawn with its own seed: same distribution, different images, as a weekly
    import of new photos would be.
    """
    from hoh.data.importer import import_images

    root = Path(output_dir).resolve() / NOTEBOOK_DATA
    data_root, pool_root = root / "spans", root / "pool"
    for span in range(1, spans + 1):
        if span not in features.list_spans(data_root):
            import_images(
                _draw_once(root / "images" / f"span-{span}", per_class, size, span),
                data_root,
                span=span,
            )
    if not features.list_spans(pool_root):
        import_images(
            _draw_once(root / "images" / "pool", per_class, size, POOL_SEED),
            pool_root,
            unlabeled=True,
        )
    return str(data_root), str(pool_root)


def _draw_once(images: Path, per_class: int, size: int, seed: int) -> Path:
    from hoh.data.demo import make_demo_dataset

    # make_demo_dataset renames a finished set into place: an existing folder is a whole one.
    if not images.is_dir():
        make_demo_dataset(images, per_class=per_class, size=size, seed=seed)
    return images


def interactive_context(cfg: HohConfig):
    """An InteractiveContext whose pipeline root and MLMD live under the output dir, as the
    local runner's do (its defaults are a fresh /tmp directory per kernel: every restart would
    retrain from scratch and the Resolver would never find a blessed model)."""
    from tfx.orchestration.experimental.interactive.interactive_context import InteractiveContext

    from hoh.pipeline.telemetry.mlmd import local_pipeline_args

    return InteractiveContext(**local_pipeline_args(cfg))


def output(component: Any, key: str) -> Any:
    """The one artifact `component` produced under `key` (after its cell ran)."""
    artifacts = component.outputs[key].get()
    if not artifacts:
        raise HohError(f"{component.id} has no {key!r} artifact yet: run its cell first")
    return artifacts[0]


def resolved(component: Any, key: str) -> Optional[Any]:
    """What a Resolver found under `key`, or None (e.g. no blessed model yet)."""
    artifacts = component.outputs[key].get()
    return artifacts[0] if artifacts else None


def is_blessed(blessing: Any) -> bool:
    return blessing.get_int_custom_property("blessed") == 1


def split_uri(artifact: Any, split: str) -> str:
    from tfx.types import artifact_utils

    return artifact_utils.get_split_uri([artifact], split)


def split_statistics(statistics: Any, split: str):
    """The DatasetFeatureStatisticsList StatisticsGen wrote for one split (for TFDV's views)."""
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(os.path.join(split_uri(statistics, split), "FeatureStats.pb"))


def example_records(examples: Any, split: str, n: int) -> list:
    """The first `n` raw examples of an Examples artifact's split, as ImageRecords
    (id, source, label, encoded bytes)."""
    from hoh.data import sources

    source = sources.tfrecord_source([split_uri(examples, split)], f"{split} examples")
    return list(islice(iter(source), n))


def span_records(data_root: str, split: str, n: int) -> list:
    """The first `n` ImageRecords of a split of the latest span in a data root."""
    from hoh.data import sources

    spans = features.list_spans(data_root)
    if not spans:
        raise HohError(f"{data_root} holds no span (write one with `hoh data import`)")
    return list(islice(iter(sources.span_source(data_root, spans[-1], [split])), n))


def transform_records(transform_graph_uri: str, records: Sequence[Any]):
    """Raw records through the transform graph, exactly as the Trainer and serving apply it:
    (images float32 [n, S, S, 3] in [0, 1], class names read back from the label ids)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_graph_uri)
    raw = {
        features.IMAGE_KEY: tf.constant([[r.data] for r in records]),
        features.LABEL_KEY: tf.constant([[(r.label or "").encode()] for r in records]),
    }
    transformed = output.transform_features_layer()(raw)
    vocabulary = [
        v.decode() if isinstance(v, bytes) else v
        for v in output.vocabulary_by_name(features.LABEL_VOCAB_NAME)
    ]
    ids = transformed[features.LABEL_XF].numpy().reshape(-1)
    names = [vocabulary[i] if 0 <= i < len(vocabulary) else f"<unknown id {i}>" for i in ids]
    return transformed[features.IMAGE_XF].numpy(), names


def training_history(model_run: Any) -> dict[str, list[float]]:
    """The per-epoch Keras history the Trainer writes beside its TensorBoard logs."""
    import tensorflow as tf

    from hoh.trainer import HISTORY_FILE

    with tf.io.gfile.GFile(os.path.join(model_run.uri, HISTORY_FILE)) as f:
        return json.load(f)


def _slice_name(slice_key: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(f"{column}={value}" for column, value in slice_key) or "Overall"


def metrics_rows(slicing_metrics: Sequence[tuple[Any, dict]]) -> list[dict]:
    """TFMA's nested slicing metrics -> one row per slice with its scalar metrics.

    Plots and matrices (non-scalar values) are left out; TFMA's own views show those.
    """
    rows = []
    for slice_key, by_output in slicing_metrics:
        row: dict = {"slice": _slice_name(slice_key)}
        for by_sub_key in by_output.values():
            for sub_key, metrics in by_sub_key.items():
                suffix = f" ({sub_key})" if sub_key else ""
                for name, value in metrics.items():
                    number = value.get("doubleValue") if isinstance(value, dict) else None
                    if number is not None:
                        row[name + suffix] = number
        rows.append(row)
    return rows


def evaluation(evaluation_uri: str):
    """(metrics per slice as a DataFrame, validation result) of an Evaluator run."""
    import pandas as pd
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(evaluation_uri)
    table = pd.DataFrame(metrics_rows(result.slicing_metrics)).set_index("slice")
    return table, tfma.load_validation_result(evaluation_uri)


def drift_report(report: Any) -> tuple[list[str], str]:
    """(verdict lines, report.html) of a DriftCheck run."""
    import tensorflow as tf

    from hoh.components.drift.report import REPORT_FILE, read_summary, summary_lines

    summary = read_summary(report.uri)
    if summary is None:
        raise HohError(f"drift report {report.uri} has no readable summary.json")
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_FILE)) as f:
        return summary_lines(summary), f.read()


def push_decision(
    blessed: bool, drift_detected: Optional[bool], block_push: bool
) -> tuple[bool, str]:
    """Whether to run the pusher, and why: the explicit form of the pipeline's gates, because
    InteractiveContext runs any component it is given and ignores `tfx.dsl.Cond`."""
    if not blessed:
        return False, "the Evaluator did not bless the model"
    if block_push and drift_detected:
        return False, "drift detected and drift.block_push is on"
    return True, "blessed" + (", no drift" if block_push else "")


def sampled_images(samples: Any) -> list[tuple[dict, bytes]]:
    """The sampler's picks (rows of selected.jsonl) with their image bytes, best first."""
    import tensorflow as tf

    from hoh.components.sampling.sample import SELECTED_JSONL

    path = os.path.join(samples.uri, SELECTED_JSONL)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = []
    for row in rows:
        with tf.io.gfile.GFile(os.path.join(samples.uri, row["file"]), "rb") as f:
            out.append((row, f.read()))
    return out


def pushed_versions(cfg: HohConfig) -> list[int]:
    """Version numbers of the configured model in the Triton repository (ascending)."""
    from hoh.components.triton_pusher.repository import version_numbers

    model_dir = Path(cfg.model_repository) / cfg.push.model_name
    return version_numbers(os.listdir(model_dir)) if model_dir.is_dir() else []


def ensure_pushed_model(cfg: HohConfig, echo: Callable[[str], None] = print) -> str:
    """The model repository, after running the whole pipeline once if it holds no version yet.

    This keeps 02_serving runnable on its own: after 01 it serves what 01 pushed; on a fresh
    checkout it trains and pushes one with the local runner (same components, same config).
    """
    if not pushed_versions(cfg):
        from hoh.pipeline.runners.local import run_local

        echo(f"no model in {cfg.model_repository} yet: running the pipeline to train and push one")
        summary = run_local(cfg, echo=echo)
        if not pushed_versions(cfg):
            raise HohError(
                f"the pipeline pushed no model (blessed: {summary.blessed}); lower the evaluation "
                "thresholds or run 01_pipeline_interactive.ipynb to see why"
            )
    return str(Path(cfg.model_repository).resolve())


def track(cfg: HohConfig, components: dict, echo: Callable[[str], None] = print):
    """Log what the notebook's components produced as one MLflow run, as `hoh run` logs a run.

    InteractiveContext gives every `context.run` its own MLMD run, so nothing in MLMD gathers
    the notebook's steps: the facts are read from the components' output artifacts instead (the
    same reader as a Kubeflow run's TrackRun node). The Resolver's outputs are the baseline, not
    this run's. Returns the TrackingResult (its message is printed; a tracking problem is
    reported there, never raised).
    """
    import time

    from tfx.dsl.components.common.resolver import Resolver

    from hoh.pipeline.tracking.facts import from_artifacts
    from hoh.pipeline.tracking.log import TrackingResult, save_run_config, track_facts

    run_id = time.strftime("notebook-%Y%m%dT%H%M%S")
    config_path = save_run_config(cfg, run_id)
    if not cfg.tracking.enabled:
        result = TrackingResult(True, "tracking: off (tracking.enabled: false)")
        echo(result.message)
        return result
    artifacts = [
        a
        for component in components.values()
        if not isinstance(component, Resolver)
        for channel in component.outputs.values()
        for a in channel.get()
        if a.id  # the steps this kernel ran
    ]
    if not artifacts:
        raise HohError("no step of this notebook has run yet: nothing to track")
    return track_facts(cfg, from_artifacts(cfg, run_id, artifacts), echo, config_path)
