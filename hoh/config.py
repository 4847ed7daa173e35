"""The one typed configuration of a hoh pipeline run.

Everything a user can change lives here, with its default and its meaning; `create_pipeline`
takes these values as parameters, the YAML files under `hoh/configs/` only override them, and
the CLI's `--set section.key=value` overrides those. Validation happens once, at load time, so a
typo or a bad value is reported with the file and the key instead of failing deep inside a
Beam worker twenty minutes later.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Type, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hoh.errors import UsageError
from hoh.features import class_name_collisions
from hoh.fileio import is_remote


class ConfigError(UsageError, ValueError):
    """A configuration file or override is unusable; the message names the input and the key."""


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt option silently ignored is the worst kind of bug.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    root: Optional[str] = Field(
        None,
        description="Span directory written by `hoh data import` (DIR/span-N/{train,eval}). "
        "null = the built-in demo set, generated on first use.",
    )
    span: Optional[int] = Field(
        None, ge=0, description="Span to train on; null = the latest span in `root`."
    )
    classes: Optional[list[str]] = Field(
        None,
        description="Class names in class-id order. null = the span's class folders, sorted. "
        "Ids never follow label frequencies, so a retrain keeps them; a new class goes at the "
        "end of this list (docs/MULTICLASS.md). Needed when the data is not readable where the "
        "pipeline is built (e.g. compiling for Kubeflow from gs://).",
    )
    num_classes: Optional[int] = Field(
        None,
        ge=2,
        description="A check only: the run stops if the classes found (or data.classes) are not "
        "this many.",
    )
    allow_class_removal: bool = Field(
        False,
        description="Train although the span lacks a class the served model knows (the new "
        "model cannot answer it, and the ids of the classes after it change). Off: such a "
        "run is refused before any step.",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """`--set data.classes=horses,humans` as well as a YAML list."""
        return [c.strip() for c in v.split(",") if c.strip()] if isinstance(v, str) else v

    @field_validator("classes")
    @classmethod
    def _distinct_names(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError(f"data.classes needs at least 2 classes, got {v}")
        duplicates = sorted({c for c in v if v.count(c) > 1})
        if duplicates:
            raise ValueError(f"data.classes lists {duplicates} more than once")
        clashes = class_name_collisions(v)
        if clashes:
            raise ValueError(f"data.classes: {clashes[0]}")
        return v


class SchemaConfig(_Section):
    path: str = Field(
        "auto",
        description="'auto' = the curated schemas/schema.pbtxt shipped with hoh (ImportSchemaGen); "
        "'infer' = SchemaGen infers one from the statistics; or a path to a schema.pbtxt.",
    )


class ValidationConfig(_Section):
    fail_on_anomalies: bool = Field(
        True,
        description="Stop the run when ExampleValidator finds anomalies (else only record them).",
    )


class TransformConfig(_Section):
    image_size: int = Field(
        224, ge=32, le=1024, description="Images are resized to this square size."
    )
    materialize: bool = Field(
        False,
        description="Write transformed examples (~0.6 MB per 224px image) instead of transforming "
        "on the fly in the Trainer with the same transform graph. Off by default: see "
        "docs/BENCHMARKS.md.",
    )


class ModelConfig(_Section):
    alpha: float = Field(1.0, description="MobileNetV2 width multiplier.")
    weights: str = Field(
        "imagenet",
        description="'imagenet' (Keras cache ~/.keras/models or download), 'none' (random init), "
        "or a path to an .h5 backbone weights file.",
    )
    hidden_units: list[int] = Field(default_factory=list, description="Dense layers of the head.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    augment: bool = Field(False, description="Random flip/rotation/zoom while training only.")
    class_weights: Literal["auto", "none", "balanced"] = Field(
        "auto",
        description="'balanced' weighs each class by n / (classes * count); 'auto' does so only "
        "when the largest training class exceeds `class_balance_ratio` times the smallest.",
    )
    class_balance_ratio: float = Field(
        1.5, ge=1.0, description="Largest/smallest class ratio above which 'auto' balances."
    )
    batch_norm_momentum: Optional[float] = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Override the backbone's BatchNorm momentum (0.999). A lower value lets a "
        "from-scratch backbone settle its statistics in a few dozen steps on tiny data.",
    )

    @field_validator("alpha")
    @classmethod
    def _alpha_known(cls, v: float) -> float:
        allowed = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
        if v not in allowed:
            raise ValueError(f"MobileNetV2 alpha must be one of {allowed}, got {v}")
        return v


class TrainingConfig(_Section):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="'cosine' decays the learning rate per epoch towards 0, so the exported last "
        "epoch is not a random point of an oscillating high-rate run.",
    )
    fine_tune_layers: int = Field(
        0, ge=0, description="Unfreeze the top N backbone layers for a second phase (0 = off)."
    )
    fine_tune_epochs: int = Field(0, ge=0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0)
    seed: int = 42
    cache_backbone_features: bool = Field(
        True,
        description="With a frozen backbone and no augmentation, compute backbone features once "
        "and fit the head on them (identical model, ~1 forward pass instead of one per epoch).",
    )


class EmbeddingsConfig(_Section):
    """The embedding store (hoh/data/embeddings.py, docs/MULTICLASS.md)."""

    store: Optional[str] = Field(
        "auto",
        description="Where backbone embeddings are kept across runs, keyed by image content "
        "and backbone (Parquet; a Feast offline source, deploy/feast/). auto = "
        "DATA_ROOT/embeddings, beside the spans; a path or gs:// URI; null = off (computed "
        "again every run). Used by the Trainer with a frozen backbone, the drift check and "
        "the sampler.",
    )

    def resolve(self, data_root: str) -> Optional[str]:
        """The store path for a data root (auto), as written in the config, or None (off)."""
        if self.store != "auto":
            return self.store
        if is_remote(data_root):
            return f"{data_root.rstrip('/')}/embeddings"
        return str(Path(data_root) / "embeddings")


class EvaluationConfig(_Section):
    min_auc: float = Field(0.9, ge=0.0, le=1.0, description="Binary: AUC must be at least this.")
    min_accuracy: float = Field(
        0.0, ge=0.0, le=1.0, description="Binary accuracy / multi-class accuracy lower bound."
    )
    max_regression: float = Field(
        0.0,
        ge=0.0,
        description="How much AUC (binary) or accuracy (multi-class) may drop against the last "
        "blessed model; 0 = must not get worse.",
    )
    min_class_recall: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Multi-class: the recall of every class on the eval split must be at least "
        "this (a new class the model barely learned is caught); 0 = off.",
    )
    compare_with_baseline: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Gate on the change against the served model (max_regression). auto: "
        "unless the served model has other classes (a class was added: its metrics are not "
        "comparable, the run says so and gates on the value thresholds only); Kubeflow cannot "
        "see the repository when compiling, so auto compares there (use never for the run that "
        "adds a class).",
    )


def served_versions_problem(flavor: str, versions_to_serve: int) -> Optional[str]:
    """Why this flavour cannot serve that many versions, or None.

    An ONNX ensemble's config pins one version of each step for all the ensemble's versions, so
    it answers for one version only; accepting `versions_to_serve: 2` would leave requests for
    the older version failing as "not ready" after a push that users expected to keep it.
    """
    if flavor == "onnx" and versions_to_serve > 1:
        return (
            f"versions_to_serve ({versions_to_serve}) needs flavor: tensorflow: the onnx "
            "flavour's ensemble serves one version at a time (its steps are pinned for all its "
            "versions); set push.flavor=tensorflow to serve old and new classes side by side "
            "(docs/MULTICLASS.md)"
        )
    return None


class PushConfig(_Section):
    enabled: bool = True
    model_repository: Optional[str] = Field(
        None, description="Triton model repository; null = OUTPUT/model_repository."
    )
    model_name: str = "hoh"
    max_batch_size: int = Field(32, ge=1)
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [8, 16, 32])
    max_queue_delay_us: int = Field(2000, ge=0)
    instance_count: int = Field(1, ge=1)
    versions_to_serve: int = Field(
        1, ge=1, description="Triton's version_policy: how many of the newest versions it serves."
    )
    versions_to_keep: int = Field(
        2, ge=1, description="Versions kept on disk (>= versions_to_serve), for a quick rollback."
    )
    # Request limits: written into config.pbtxt `parameters` and enforced by model.py, so a
    # client cannot make one request hold hundreds of megabytes (docs/SERVING.md#limits).
    max_image_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="Largest encoded image accepted, in bytes."
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="Largest width*height an image header may claim."
    )
    max_images_per_request: Optional[int] = Field(
        None, ge=1, description="Images in one request; null = max_batch_size."
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Encoded image bytes in one request, all images."
    )
    max_gif_frames: int = Field(
        100,
        ge=1,
        description="Frames a GIF may hold, in training and serving alike: TensorFlow decodes "
        "every frame even when it returns only the first, and all frames together must fit in "
        "max_image_pixels (hoh/imagecheck.py).",
    )
    max_request_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Pixels all images of one request decode to, together (GIF frames count).",
    )
    response_cache: bool = Field(
        False,
        description="Triton's response cache for the model. Off: Triton 2.51 stores failed "
        "responses and replays them to every client as empty successes (docs/SERVING.md).",
    )
    flavor: Literal["tensorflow", "onnx"] = Field(
        "onnx",
        description="What the pusher writes: `onnx` = an ensemble of a numpy+Pillow "
        "preprocessing model and the network as model.onnx, which a stock (GPU) Triton serves "
        "natively, and the faster one on CPU too (docs/BENCHMARKS.md#onnx-flavour-issue-18); "
        "`tensorflow` = one python-backend model running the SavedModel (needs TensorFlow "
        "inside Triton; serves several versions at once, docs/SERVING.md#flavours).",
    )
    preprocess_instance_count: int = Field(
        2,
        ge=1,
        description="onnx flavour: CPU instances of the preprocessing model (decoding is the "
        "ensemble's largest CPU cost; 2 won on 2 cores, docs/BENCHMARKS.md).",
    )
    classifier_instance_count: int = Field(
        2,
        ge=1,
        description="onnx flavour: instances of the classifier served locally through "
        "onnxruntime in the python backend, one onnxruntime thread each on 2 cores (one "
        "instance left a core idle behind a single stub process, docs/BENCHMARKS.md). "
        "configs/stock.pbtxt and configs/gpu.pbtxt keep push.instance_count: the native "
        "backend spreads one instance over every core itself.",
    )
    cpu_step_queue_delay_us: int = Field(
        0,
        ge=0,
        description="onnx flavour: the batching wait of the steps that run on CPU (the "
        "preprocessing model, and the classifier except in configs/gpu.pbtxt, which keeps "
        "push.max_queue_delay_us). Preprocessing works image by image and onnxruntime's CPU "
        "cost per image is flat in the batch size (7.3 ms at 1, 8.1 at 32 on one thread), so "
        "a wait is pure latency: 0 won (docs/BENCHMARKS.md); queued requests still batch.",
    )
    gpu_fp16: bool = Field(
        True, description="onnx flavour: TensorRT precision FP16 (else FP32) in configs/gpu.pbtxt."
    )

    @model_validator(mode="after")
    def _keep_what_is_served(self) -> "PushConfig":
        problem = served_versions_problem(self.flavor, self.versions_to_serve)
        if problem:
            raise ValueError(f"push.{problem}")
        if self.versions_to_keep < self.versions_to_serve:
            raise ValueError(
                f"push.versions_to_keep ({self.versions_to_keep}) must be >= "
                f"push.versions_to_serve "
                f"({self.versions_to_serve}): Triton cannot serve versions deleted from disk"
            )
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError(
                f"push.max_image_bytes ({self.max_image_bytes}) must be <= push.max_request_bytes "
                f"({self.max_request_bytes}): an image that fits no request cannot be served"
            )
        if (self.max_images_per_request or 0) > self.max_batch_size:
            raise ValueError(
                f"push.max_images_per_request ({self.max_images_per_request}) must be <= "
                f"push.max_batch_size ({self.max_batch_size}): Triton refuses larger requests"
            )
        return self

    @field_validator("model_name")
    @classmethod
    def _model_name_is_a_directory(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v) or v in (".", ".."):
            raise ValueError(f"model_name {v!r} must be a plain directory name [A-Za-z0-9_.-]")
        return v


class DriftConfig(_Section):
    """The DriftCheck component: the current span against a reference span (docs/DRIFT.md)."""

    enabled: bool = Field(
        True, description="Run the drift check (the first span records 'no reference')."
    )
    block_push: bool = Field(
        False,
        description="Hold the push when drift is detected. Off by default: new data looking "
        "different is exactly when a retrained, Evaluator-blessed model is needed; turn it on "
        "where a person must look at a shifted span before a model trained on it ships.",
    )
    reference_span: Optional[int] = Field(
        None,
        ge=0,
        description="Span to compare with; null = the closest span before the current one.",
    )
    drift_share: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="Share of drifted descriptors that declares drift (3 of 12).",
    )
    column_method: Optional[str] = Field(
        None,
        description="Evidently stattest for every descriptor ('ks', 'wasserstein', 'psi', ...); "
        "null = Evidently's choice (K-S/chi-square up to 1000 reference rows, "
        "Wasserstein/Jensen-Shannon above).",
    )
    column_threshold: Optional[float] = Field(
        None,
        gt=0.0,
        description="Threshold of that test (p-value or distance); null = its default.",
    )
    label_drift: bool = Field(
        True, description="Test class proportions too; their drift counts in the verdict."
    )
    embeddings: bool = Field(
        True,
        description="Also compare MobileNetV2 embeddings from the last blessed model (when one "
        "exists).",
    )
    embedding_components: int = Field(
        8, ge=1, le=64, description="PCA components kept per embedding."
    )
    embedding_threshold: float = Field(
        0.015,
        gt=0.0,
        description="MMD score above which the embeddings drift (Evidently's default).",
    )
    embedding_min_rows: int = Field(
        100, ge=2, description="Fewer images per side: the MMD score is reported but does not vote."
    )
    embedding_max_rows: int = Field(
        500,
        ge=10,
        description="Images per side fed to MMD (its cost is quadratic); a seeded sample.",
    )
    embedding_fit_rows: int = Field(
        1000, ge=2, description="Reference images the PCA of the embeddings is fitted on."
    )
    seed: int = Field(
        0, description="Seed of the MMD row sample, so a re-run gives the same score."
    )


class SamplingConfig(_Section):
    """The ActiveLearningSampler component (docs/ACTIVE_LEARNING.md)."""

    pool_root: Optional[str] = Field(
        None,
        description="Data root of an unlabeled pool (`hoh data import --unlabeled SRC --out "
        "POOL`); its "
        "latest span's pool/ split is scored. Keep it apart from data.root. null = no sampling.",
    )
    k: int = Field(50, ge=1, description="Images selected for labelling per run.")
    strategy: Literal["least_confidence", "margin", "entropy"] = Field(
        "margin",
        description="Uncertainty score; identical rankings for 2 classes. Margin looks at the two "
        "classes the model hesitates between, which is what a labeller resolves.",
    )
    diversity: bool = Field(
        True,
        description="k-center greedy over backbone embeddings among the most uncertain candidates.",
    )
    candidates_factor: int = Field(
        5, ge=1, description="Diversity picks among the factor*k most uncertain."
    )
    exclude_labeled: bool = Field(
        True, description="Never propose images already in the training span."
    )
    from_name: str = Field(
        "choice", description="Label Studio <Choices name=...> of the labeling config."
    )
    to_name: str = Field(
        "image", description="Label Studio <Image name=...> of the labeling config."
    )
    image_url_prefix: str = Field(
        "/data/local-files/?d=",
        description="Prefix of each task's image URL before `images/<file>`; '{out_dir}' stands "
        "for the "
        "sample directory (without its leading '/'). The default suits Label Studio local-files "
        "serving with the sample directory as document root; see docs/ACTIVE_LEARNING.md.",
    )


class MonitorConfig(_Section):
    """`hoh monitor`: captured gateway traffic against the model's data (docs/MONITORING.md).

    The drift tests themselves take the `drift` section and the labelling batch the `sampling`
    section, so a window of traffic is judged exactly as a new span is."""

    window_days: int = Field(
        1, ge=1, description="Days (UTC) in the window without --since, ending at --until."
    )
    min_images: int = Field(
        20,
        ge=1,
        description="Fewer usable served images in the window: verdict 'insufficient_data' (the "
        "tests are noise on a handful of images), never 'ok'.",
    )
    reference_splits: list[str] = Field(
        ["eval"],
        min_length=1,
        description="Splits of the reference span whose model predictions are the baseline of "
        "the prediction-drift test (the model's own eval split: data it was not trained on).",
    )
    prediction_drift: bool = Field(
        True,
        description="Test the served class mix and confidences; their drift counts in the verdict.",
    )
    label_batch: bool = Field(
        True,
        description="When the verdict is not ok, write the least certain captures as a Label "
        "Studio batch.",
    )
    label_k: Optional[int] = Field(
        None, ge=1, description="Images in that batch; null = sampling.k."
    )
    textfile: str = Field(
        "hoh_monitor.prom",
        pattern=r"^[A-Za-z0-9_.-]+\.prom$",
        description="Name of the Prometheus textfile written into --out (and --textfile-dir).",
    )
    latency_p95_objective_ms: float = Field(
        500.0,
        gt=0,
        description="p95 latency objective of predict requests (the gateway's audit records of "
        "the window); above it the verdict is 'slo_breached'. deploy/prometheus/ alerts on the "
        "same 0.5 s: change both together.",
    )
    max_error_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of predict requests answered 5xx above which the verdict is "
        "'slo_breached' (the Prometheus alert uses the same 1 %).",
    )
    prometheus_url: Optional[str] = Field(
        None,
        pattern=r"^https?://[^\s/]+",
        description="Prometheus (http://host:9090) scraping the gateway and Triton "
        "(deploy/prometheus/): the window's service health comes from their metrics there. "
        "null = from the gateway's audit log (--audit), which is also the fallback, named in the "
        "summary, when Prometheus cannot answer.",
    )
    min_accuracy: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Online accuracy (labels fed back through POST /v1/feedback or from "
        "label_exports) below which the verdict is 'accuracy_low'.",
    )
    min_feedback: int = Field(
        20,
        ge=1,
        description="Fewer matched labels (fed back or from label_exports) in the window: "
        "accuracy is reported but does not decide the verdict (a handful of labels is noise).",
    )
    label_exports: list[str] = Field(
        default_factory=list,
        description="Label Studio JSON exports of earlier labelling batches (`--labels`): their "
        "labelled captures count for online accuracy beside the feedback, which wins where the "
        "two disagree. Relative paths are from the working directory.",
    )
    on_alert: Literal["none", "local", "kubeflow"] = Field(
        "none",
        description="When the verdict is drift or accuracy_low, start a retraining run: 'local' "
        "runs `hoh run` as a subprocess, 'kubeflow' submits one with `hoh kfp submit`'s client. "
        "The Evaluator still decides whether the new model ships.",
    )
    cooldown_hours: float = Field(
        24.0,
        ge=0,
        description="After the trigger fired, windows within this many hours do not fire it "
        "again (a persisting drift must not start a run every window).",
    )
    trigger_state: str = Field(
        "monitor-trigger.json",
        description="State file of the trigger (when and why it last fired), relative to the "
        "parent of --out unless absolute.",
    )
    trigger_args: list[str] = Field(
        default_factory=list,
        description="Arguments of the retraining run: appended to `hoh run` (local) or to "
        "`hoh kfp submit` (kubeflow), e.g. ['--data', 'data', '--profile', 'real'].",
    )
    workspace: Optional[str] = Field(
        "evidently",
        description="Evidently workspace folder each run adds its snapshots to (the dashboard "
        "`hoh dashboard` serves), relative to the parent of --out unless absolute (beside the "
        "runs, like trigger_state); null = none.",
    )
    workspace_url: Optional[str] = Field(
        None,
        description="A remote Evidently UI (http://host:port) to send the snapshots to instead "
        "of the workspace folder.",
    )
    project: str = Field(
        "hoh monitoring",
        min_length=1,
        description="Evidently project of the runs (created with its panels on first use).",
    )
    dashboard_host: str = Field(
        "127.0.0.1",
        description="Address `hoh dashboard` binds; loopback unless the UI is meant to be "
        "reachable from other machines (it has no login).",
    )
    dashboard_port: int = Field(8000, ge=1, le=65535, description="Port of `hoh dashboard`.")


class IngestConfig(_Section):
    """`hoh ingest`: broker messages into data-lake spans (docs/INGESTION.md)."""

    batch_size: int = Field(
        128, ge=1, description="Messages per micro-batch: one shard per split, fsynced, then acked."
    )
    batch_wait_seconds: float = Field(
        1.0, gt=0, description="Write a partial micro-batch after waiting this long for more."
    )
    queue_size: int = Field(
        512,
        ge=1,
        description="Messages held in memory before the consumer stops fetching (backpressure); "
        "also the broker's cap on unacknowledged deliveries (with batch_size).",
    )
    seal_count: int = Field(
        10_000, ge=1, description="Seal the open span once it holds this many images."
    )
    seal_age_seconds: float = Field(
        3600.0, gt=0, description="Seal the open span this long after its first image was written."
    )
    dedup_spans: int = Field(
        1,
        ge=0,
        description="Also drop images already in the last N sealed spans (read at start-up), so "
        "a redelivery after a seal is not stored twice; 0 = within the open span only.",
    )
    max_message_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="Larger message bodies are dead-lettered as too_large (NATS itself caps "
        "payloads at its max_payload, 1 MB by default).",
    )
    dead_letter: Optional[str] = Field(
        None,
        description="Subject (NATS) or topic (Kafka) for refused messages; null = '<stream>.dead' "
        "(NATS, kept in stream '<stream>-dead') or '<topic>.dead' (Kafka).",
    )
    consumer: str = Field(
        "hoh-ingest",
        description="Durable consumer (NATS) or consumer group (Kafka): consumers sharing it "
        "share the work.",
    )
    ack_wait_seconds: float = Field(
        60.0, gt=0, description="Redeliver a message not acknowledged within this time (NATS)."
    )
    progress_seconds: float = Field(10.0, gt=0, description="Interval of the progress line.")
    retry_seconds: float = Field(
        5.0,
        gt=0,
        description="Redeliver a refused message whose dead-letter copy could not be stored "
        "after this long (NATS; Kafka seeks back at once).",
    )
    gzip_level: int = Field(
        0,
        ge=0,
        le=9,
        description="Compression level of the shards (still gzip files, as ImportExampleGen "
        "expects). 0 = stored: encoded images do not shrink (level 1 saved 0.01% on the PNGs of "
        "docs/BENCHMARKS.md) and compressing them was half of the consumer's time.",
    )


class BeamConfig(_Section):
    args: list[str] = Field(
        default_factory=list,
        description="Beam pipeline args. Empty locally on purpose: any value makes TFX package "
        "itself for every Beam step (5-7 s each).",
    )


def pod_uri(value: Optional[str]) -> Optional[str]:
    """A location every Kubeflow pod can open: gs:// (TF reads it natively) or an absolute path
    of a volume mounted in every pod. s3:// needs tensorflow-io, whose 0.37 aborts at interpreter
    exit (code 134), which Kubeflow reads as a failed step."""
    if value is None or value.startswith("gs://"):
        return value
    if is_remote(value):
        raise ValueError(
            f"{value!r}: use gs://... or a mounted absolute path (TF 2.16 reads no other scheme)"
        )
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is relative; pods need gs://... or an absolute mounted path")
    return value


class KubeflowResources(_Section):
    cpu: Optional[float] = Field(None, gt=0, description="CPU limit of the step's pod (cores).")
    memory_gb: Optional[float] = Field(
        None, gt=0, description="Memory limit of the step's pod (GB)."
    )
    gpu: int = Field(0, ge=0, description="Accelerators for the pod; only the Trainer uses one.")
    gpu_type: str = Field(
        "nvidia.com/gpu",
        description="Accelerator type: the cluster's resource name (or a Vertex type).",
    )


class KubeflowConfig(_Section):
    """Only read by `hoh kfp ...`: where the pods find the image, the data and the repository."""

    image: Optional[str] = Field(
        None, description="Image built from the Dockerfile; --image overrides."
    )
    pipeline_root: Optional[str] = Field(
        None,
        description="Artifacts of the pods: gs://... or a mounted path; --pipeline-root overrides.",
    )
    data_root: Optional[str] = Field(
        None,
        description="Span directory as the pods see it: the default of the `data_root` parameter.",
    )
    model_repository: Optional[str] = Field(
        None, description="Triton model repository as the pods see it (needed when push.enabled)."
    )
    baseline: Literal["latest_pushed", "latest_blessed"] = Field(
        "latest_pushed",
        description="'latest_pushed' = the newest version in the Triton repository (runs on any "
        "Kubeflow); 'latest_blessed' = TFX's Resolver, which open-source KFP refuses (Vertex "
        "only).",
    )
    beam_preset: Literal["direct", "dataflow", "flink", "spark"] = Field(
        "direct",
        description="Beam runner preset, see docs/KUBEFLOW.md and pipeline/kfp/beam_presets.py.",
    )
    beam_options: dict[str, str] = Field(
        default_factory=dict,
        description="Values for the preset's {placeholders} (project, region, ...).",
    )
    beam_args: list[str] = Field(
        default_factory=list, description="Extra Beam args after the preset's."
    )
    resources: dict[str, KubeflowResources] = Field(
        default_factory=dict, description="Pod resources by component id, e.g. Trainer: {gpu: 1}."
    )
    enable_cache: bool = Field(
        True,
        description="Kubeflow caching: a run with no new span reuses every step (no retrain, "
        "no push).",
    )
    wait_timeout_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="`hoh kfp submit --wait`: give up waiting for the run after this long "
        "(the run itself goes on).",
    )
    wait_poll_s: float = Field(
        15.0, gt=0, description="`hoh kfp submit --wait`: how often the run's state is read."
    )
    runs_limit: int = Field(20, ge=1, le=1000, description="`hoh kfp runs`: newest runs shown.")

    @field_validator("pipeline_root", "data_root", "model_repository")
    @classmethod
    def _reachable_from_pods(cls, v: Optional[str]) -> Optional[str]:
        return pod_uri(v)


class GatewayConfig(_Section):
    """`hoh gateway`: the authenticated public edge in front of Triton (docs/GATEWAY.md).

    Secrets (TLS key password, Redis password) are not options here: they come from the
    environment or from files, so they never land in a config file or a process listing.
    """

    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC address (host:port).")
    host: str = Field(
        "127.0.0.1",
        description="Address to bind; 0.0.0.0 in a container. Forced to 127.0.0.1 "
        "by insecure_no_auth.",
    )
    port: int = Field(8443, ge=0, le=65535, description="Port to bind (0: a free one).")
    models: list[str] = Field(
        default_factory=lambda: ["hoh"],
        description="Models the gateway exposes; any other name is 404 without asking Triton.",
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1, description="Largest request body; more is 413 before reading it."
    )
    max_images: int = Field(
        32,
        ge=1,
        description="Images in one predict request; more is 413. Requests are split "
        "further to fit the model's own limits.",
    )
    triton_timeout_s: float = Field(30.0, gt=0, description="Deadline of one Triton call.")
    model_info_ttl_s: float = Field(
        2.0,
        gt=0,
        description="How long the served versions and classes read from Triton are "
        "reused before asking again (a new version is used at most this late).",
    )
    # --- TLS
    tls_cert: Optional[str] = Field(None, description="PEM certificate chain; null = plain HTTP.")
    tls_key: Optional[str] = Field(None, description="PEM private key of tls_cert.")
    tls_key_password_file: Optional[str] = Field(
        None, description="File holding the key's password (or env HOH_GATEWAY_TLS_KEY_PASSWORD)."
    )
    tls_client_ca: Optional[str] = Field(
        None,
        description="PEM CA bundle: when set, clients must present a certificate it "
        "signed (mutual TLS).",
    )
    tls_min_version: Literal["1.3", "1.2"] = Field(
        "1.3", description="Lowest TLS version accepted; 1.2 only for old clients."
    )
    # --- authentication
    insecure_no_auth: bool = Field(
        False,
        description="Accept requests without a token (every permission). Binds "
        "127.0.0.1 only and warns at every start.",
    )
    oidc_issuer: Optional[str] = Field(
        None,
        description="Issuer URL: its discovery document names the jwks_uri. https, or "
        "http on a loopback address only.",
    )
    jwks_file: Optional[str] = Field(
        None, description="A JWKS file instead of discovery (air-gapped sites, dev tokens)."
    )
    issuer: Optional[str] = Field(
        None, description="Expected `iss`; null = oidc_issuer. Required with jwks_file."
    )
    audience: str = Field("hoh-gateway", description="Expected `aud` of every token.")
    algorithms: list[Literal["RS256", "ES256"]] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="Accepted signature algorithms; `none` and HS* are never accepted.",
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat.")
    jwks_refresh_s: float = Field(
        3600.0, gt=0, description="Re-read the JWKS this often (key rotation)."
    )
    jwks_min_refetch_s: float = Field(
        30.0, ge=0, description="An unknown `kid` triggers a refetch at most this often."
    )
    token_cache_s: float = Field(
        60.0,
        ge=0,
        description="Reuse the result of a verified token this long (never past its "
        "exp): a key removed from the JWKS stops working within this time. 0 = check every "
        "request in full.",
    )
    scope_claim: str = Field(
        "scope",
        description="Claim holding scopes or roles: a space-separated string or a list; "
        "dotted for nested claims (Keycloak: realm_access.roles).",
    )
    scope_map: dict[str, list[Literal["predict", "models:read", "feedback", "admin"]]] = Field(
        default_factory=lambda: {
            "predict": ["predict"],
            "models:read": ["models:read"],
            "feedback": ["feedback"],
            "admin": ["admin", "predict", "models:read", "feedback"],
        },
        description="Scope/role -> permissions it grants.",
    )
    metrics_permission: Optional[Literal["predict", "models:read", "feedback", "admin"]] = Field(
        "admin",
        description="Permission /metrics requires; null = open (scraped inside the cluster only).",
    )
    rate_limit_per_s: float = Field(
        50.0, ge=0, description="Sustained requests per second per subject (0 = unlimited)."
    )
    rate_limit_burst: int = Field(100, ge=1, description="Requests a subject may send at once.")
    # --- result cache
    cache_url: Optional[str] = Field(
        None,
        description="redis://host:port/db (rediss:// for TLS); null = in-process LRU. The "
        "password comes from env HOH_GATEWAY_CACHE_PASSWORD or cache_password_file.",
    )
    cache_password_file: Optional[str] = Field(None, description="File holding Redis' password.")
    cache_ttl_s: int = Field(3600, ge=1, description="Lifetime of a cached result.")
    cache_timeout_s: float = Field(
        0.05,
        gt=0,
        description="A Redis call slower than this counts as an error: the request "
        "goes on uncached.",
    )
    cache_retry_s: float = Field(
        1.0, ge=0, description="After a Redis error, skip Redis this long before trying again."
    )
    cache_prefix: str = Field("hoh:gw:", description="Prefix of every Redis key.")
    cache_lru_entries: int = Field(10000, ge=0, description="Size of the in-process LRU.")
    # --- audit log
    audit_dir: Optional[str] = Field(
        "gateway-audit", description="Hash-chained JSONL audit log directory; null = off."
    )
    audit_fsync_batch: int = Field(
        64, ge=1, description="Lines written per fsync at most (lines waiting are synced together)."
    )
    audit_anchor_every: int = Field(
        1000, ge=1, description="Write an anchor line (the chain's hash so far) every N lines."
    )
    audit_max_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, description="Rotate to a new file past this size."
    )
    # --- capture
    capture_dir: Optional[str] = Field(
        None,
        description="Save sampled images + results here (CAPTURE_DIR/date=YYYY-MM-DD/); "
        "null = off.",
    )
    capture_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of images captured.")
    capture_queue: int = Field(
        256,
        ge=1,
        description="Captures waiting to be written; beyond it they are dropped "
        "(counted), never blocking a request.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "GatewayConfig":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("gateway.tls_cert and gateway.tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("gateway.tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.oidc_issuer and self.jwks_file:
            raise ValueError("gateway.oidc_issuer and gateway.jwks_file: set one, not both")
        return self


class TrackingConfig(_Section):
    """MLflow experiment tracking and model registry beside MLMD (docs/LIFECYCLE.md)."""

    enabled: bool = Field(
        True, description="Log every pipeline run to MLflow and register pushed models."
    )
    uri: Optional[str] = Field(
        None,
        description="MLflow tracking URI: http(s):// (a tracking server), a database URL "
        "(postgresql://, mysql://, sqlite:///) or a directory; null = an embedded SQLite store "
        "OUTPUT/mlflow/mlflow.db (no server needed).",
    )
    registry_uri: Optional[str] = Field(
        None, description="Model registry URI; null = the tracking URI."
    )
    artifact_location: Optional[str] = Field(
        None,
        description="Where a new experiment keeps its artifacts (config, curves, model cards); "
        "null = OUTPUT/mlflow/artifacts, or the server's own store for an http(s) URI.",
    )
    experiment: Optional[str] = Field(None, description="Experiment name; null = pipeline_name.")
    register_models: bool = Field(
        True,
        description="Register each pushed model as a version of the registered model named like "
        "the Triton model (alias champion), and a blessed model the push held back (challenger).",
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="Per-request timeout towards a tracking server; an unreachable store fails "
        "tracking (the run itself completes) instead of hanging the run.",
    )
    max_retries: int = Field(
        1, ge=0, le=10, description="Retries of a failed request to a tracking server."
    )
    bytecode_cache: Optional[str] = Field(
        "~/.cache/hoh/pycache",
        description="Where the tracking worker process keeps the bytecode of what it imports "
        "(MLflow, SQLAlchemy, alembic) when PYTHONDONTWRITEBYTECODE keeps Python from writing it "
        "beside the sources: without it every run compiles them again (~1.7 s of CPU). "
        "null = as the environment says.",
    )


class HohConfig(_Section):
    pipeline_name: str = "hoh"
    output_dir: str = Field(
        "hoh-output", description="Pipeline root, MLMD and repository live here."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    schema_: SchemaConfig = Field(default_factory=SchemaConfig, alias="schema")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    transform: TransformConfig = Field(default_factory=TransformConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    push: PushConfig = Field(default_factory=PushConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    beam: BeamConfig = Field(default_factory=BeamConfig)
    kubeflow: KubeflowConfig = Field(default_factory=KubeflowConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("pipeline_name")
    @classmethod
    def _kfp_safe_name(cls, v: str) -> str:
        # Kubeflow accepts only this; refusing it locally too keeps one config valid everywhere.
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", v):
            raise ValueError(f"pipeline_name {v!r} must match [a-z0-9-] (a Kubeflow requirement)")
        return v

    @model_validator(mode="after")
    def _fine_tune_consistent(self) -> "HohConfig":
        t = self.training
        if (t.fine_tune_layers > 0) != (t.fine_tune_epochs > 0):
            raise ValueError(
                "training.fine_tune_layers and training.fine_tune_epochs must both be set (>0) "
                "to fine-tune, or both be 0"
            )
        if t.fine_tune_layers and self.model.weights == "none":
            raise ValueError("fine-tuning a backbone with weights: none makes no sense; train it")
        return self

    # Paths derived from output_dir, so every runner agrees on them.
    @property
    def pipeline_root(self) -> str:
        return str(Path(self.output_dir) / "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return str(Path(self.output_dir) / "metadata.sqlite")

    @property
    def model_repository(self) -> str:
        return self.push.model_repository or str(Path(self.output_dir) / "model_repository")

    @property
    def tracking_dir(self) -> str:
        """The embedded MLflow store (database and artifacts) when `tracking.uri` is null."""
        return str(Path(self.output_dir) / "mlflow")

    @property
    def demo_data_dir(self) -> str:
        return str(Path(self.output_dir) / "demo-data")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(by_alias=True), sort_keys=False)


CONFIG_DIR = Path(__file__).parent / "configs"


def builtin_config_path(name: str) -> Path:
    """Path of a profile shipped with hoh (`demo`, `tiny`, `real`)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no built-in config named {name!r}; known: {', '.join(known)}")
    return path


def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars/lists: `epochs=3`, `weights=none`, `units=[64,32]` work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set value {text!r} is not valid YAML: {exc}") from None


def _set_dotted(data: dict, dotted: str, value: Any, what: str) -> None:
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: {key!r} is not a section")
    node[keys[-1]] = value


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    dotted, value = override.split("=", 1)
    _set_dotted(data, dotted, _parse_scalar(value), f"--set {override!r}")


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(
    path: Optional[str | Path] = None, overrides: Optional[list[str]] = None, **fields: Any
) -> HohConfig:
    """Build a config from an optional YAML file, `section.key=value` overrides and keyword fields.

    Keyword fields (used by the CLI's dedicated flags such as `--data`) are dotted like overrides:
    `load_config(**{"data.root": "/x"})`.
    """
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, got {type(loaded).__name__}"
            )
        data = loaded
    for override in overrides or []:
        _apply_override(data, override)
        source += f" + --set {override}"
    for dotted, value in fields.items():
        if value is not None:
            _set_dotted(data, dotted, value, dotted)
    try:
        return HohConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


SectionT = TypeVar("SectionT", bound=BaseModel)


def parse_section(section: Type[SectionT], value: str | dict, source: str) -> SectionT:
    """One config section from what a component received: a JSON string or a dict.

    Components get their settings as one JSON value (a KFP parameter that a run may override),
    validated here on arrival with the same rules and defaults as a config file.
    """
    try:
        if isinstance(value, dict):
            return section.model_validate(value)
        return section.model_validate_json(value or "{}")
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def section_json(section: BaseModel, exclude: Optional[set[str]] = None) -> str:
    """The inverse of `parse_section`: what a component parameter carries."""
    return section.model_dump_json(exclude=exclude)
