"""Typed config -> `create_pipeline` arguments.

Shared by the local, notebook and Kubeflow runners.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from hoh import features
from hoh.config import HohConfig, section_json
from hoh.data.report import read_import_report
from hoh.errors import HohError
from hoh.fileio import is_remote

# Below this many eval images a class' recall moves in steps of 20% or more: said, not refused.
FEW_EVAL_IMAGES = 5


def resolve_schema_path(setting: str) -> Optional[str]:
    """'auto' -> the curated schema if one is committed, else None (= infer with SchemaGen)."""
    if setting == "infer":
        return None
    if setting == "auto":
        from hoh import schemas  # the installed copy, also inside a container image

        curated = Path(schemas.__file__).parent / "schema.pbtxt"
        return str(curated) if curated.is_file() else None
    path = Path(setting)
    if not path.is_file():
        raise HohError(
            f"schema.path={setting!r}: no such file (use 'auto', 'infer' or a schema.pbtxt path)"
        )
    return str(path.resolve())


def resolve_span(data_root: str, span: Optional[int]) -> int:
    spans = features.list_spans(data_root)
    if not spans:
        raise HohError(
            f"data.root={data_root!r} holds no spans "
            f"(expected {features.SPAN_PREFIX}N/train and /eval "
            "written by `hoh data import SRC --out DIR`)"
        )
    if span is None:
        return spans[-1]
    if span not in spans:
        raise HohError(f"data.span={span} does not exist under {data_root}; spans there: {spans}")
    return span


def detect_classes(data_root: str, span: int) -> list[str]:
    """Class names of a span, from its import report."""
    return list(read_import_report(data_root, span)["classes"])


def resolve_classes(
    cfg: HohConfig, found: Optional[Sequence[str]], served: Optional[Sequence[str]] = None
) -> list[str]:
    """The class names in id order: `data.classes`; else the served model's order with the
    span's new classes appended (sorted); else the span's classes sorted.

    `found` is what the span holds (its import report), None when it cannot be read from here;
    `served` the classes of the model Triton serves (None: nothing served, or not readable from
    here). Refused before any step runs, because ids must mean the same thing in every run
    (docs/MULTICLASS.md): a span with a class the list lacks or lacking a listed class, names
    that are one class spelt two ways, and a span without a class the served model knows
    (unless data.allow_class_removal).
    """
    listed = cfg.data.classes
    if found is None and listed is None:
        raise HohError(
            "cannot read the span's classes from this machine; set data.classes in id order, "
            "e.g. --set data.classes=horses,humans"
        )
    every = [*(found or []), *(listed or []), *(served or [])]
    clashes = features.class_name_collisions(list(dict.fromkeys(every)))
    if clashes:
        raise HohError(f"the span, data.classes and the served model disagree: {clashes[0]}")
    if listed is not None:
        classes = list(listed)
    elif served is not None:
        classes = [c for c in served if c in found] + sorted(c for c in found if c not in served)
    else:
        classes = sorted(found)
    if found is not None and listed is not None:
        new = [c for c in found if c not in listed]
        if new:
            raise HohError(
                f"the span has class(es) {new} that data.classes {listed} lacks; add them at the "
                "end of data.classes (the other classes keep their ids)"
            )
        missing = [c for c in listed if c not in found]
        if missing:
            raise HohError(
                f"data.classes lists {missing}, which the span has no images of; a model cannot "
                "learn a class it never sees: import images of it, or remove it from data.classes "
                "(a class removed changes the ids of the classes after it)"
            )
    removed = [c for c in (served or []) if c not in classes]
    if removed and not cfg.data.allow_class_removal:
        raise HohError(
            f"the served model knows class(es) {removed} that this run would not (its classes: "
            f"{classes}); the new model could never answer them. Import images of them, or set "
            "data.allow_class_removal=true to train without them on purpose"
        )
    if cfg.data.num_classes is not None and cfg.data.num_classes != len(classes):
        raise HohError(
            f"data.num_classes={cfg.data.num_classes} but the classes are {classes} "
            f"({len(classes)})"
        )
    return classes


def check_eval_images(report: dict, classes: Sequence[str], echo: Callable[[str], None]) -> None:
    """A class without an eval image cannot be gated on (its recall is undefined): refused;
    a class with only a few is allowed with a line saying how little its recall rests on."""
    counts = report.get("counts")
    if not counts:  # a report from before per-class counts: nothing to check against
        return
    eval_counts = {c: int((counts.get(c) or {}).get("eval", 0)) for c in classes}
    empty = [c for c, n in eval_counts.items() if n == 0]
    if empty:
        raise HohError(
            f"span {report.get('span')}: class(es) {empty} have no eval image (a class needs at "
            "least 2 images for the import to put one in eval); their recall, which "
            "evaluation.min_class_recall gates on, cannot be measured. Import more images of them"
        )
    few = {c: n for c, n in eval_counts.items() if n < FEW_EVAL_IMAGES}
    if few:
        shown = ", ".join(f"{c} {n}" for c, n in few.items())
        echo(f"evaluation: per-class recall rests on few eval images ({shown})")


def compare_with_baseline(
    cfg: HohConfig, classes: Sequence[str], served: Optional[Sequence[str]]
) -> tuple[bool, Optional[str]]:
    """Whether the Evaluator gates on the change against the served model, and why not.

    `served`: the classes of the model the repository serves (None: nothing served, or not
    readable from here). A model with other classes answers another question, so comparing
    accuracies would be meaningless (and TFMA would score it on ids it never had).
    """
    setting = cfg.evaluation.compare_with_baseline
    if setting != "auto":
        why_not = None if setting == "always" else "evaluation.compare_with_baseline=never"
        return setting == "always", why_not
    if served is not None and list(served) != list(classes):
        return False, (
            f"the classes changed (served model: {list(served)}; this run: {list(classes)}): "
            "the change threshold against the served model is skipped; the gate is "
            "evaluation.min_accuracy and evaluation.min_class_recall"
        )
    return True, None


def span_range_config(span: Optional[int], explicit_latest: bool = False) -> Optional[Any]:
    """ImportExampleGen's RangeConfig for `data.span` (also `--param span=` of a KFP run).

    None = ImportExampleGen's default: the latest span. `explicit_latest` spells that default
    out (a one-span rolling range, what ExampleGen uses when given none) for a pipeline
    parameter, whose default TFX's compiler drops when empty. Only the proto module is
    imported (not TFX's DSL), so the KFP client can build the parameter cheaply.
    """
    from tfx.proto import range_config_pb2 as rc

    if span is None:
        return (
            rc.RangeConfig(rolling_range=rc.RollingRange(num_spans=1)) if explicit_latest else None
        )
    return rc.RangeConfig(static_range=rc.StaticRange(start_span_number=span, end_span_number=span))


def local_weights(weights: str) -> str:
    """model.weights as this machine's Trainer opens it: a file path made absolute."""
    return weights if weights in ("imagenet", "none") else str(Path(weights).resolve())


@dataclasses.dataclass(frozen=True)
class PathRules:
    """How config paths become paths the executors open: this machine's (local runs) or the
    pods' (Kubeflow, hoh.pipeline.runners.kubeflow). The only difference between the two DAGs'
    options."""

    schema: Callable[[str], Optional[str]] = resolve_schema_path
    weights: Callable[[str], str] = local_weights


def trainer_config(
    cfg: HohConfig, paths: PathRules = PathRules(), data_root: Optional[str] = None
) -> Dict[str, Any]:
    """The Trainer's custom_config: JSON-able values only (it is stored in MLMD and compiled
    for KFP). The embedding store is resolved here (`auto` = beside `data_root`); without a
    data root, `auto` means no store."""
    model = cfg.model.model_dump()
    model["weights"] = paths.weights(cfg.model.weights)
    return {
        "model": model,
        "training": cfg.training.model_dump(),
        "embeddings": {"store": embedding_store(cfg, data_root)},
    }


def embedding_store(cfg: HohConfig, data_root: Optional[str]) -> Optional[str]:
    """Where this run's components keep backbone embeddings (None = no store)."""
    if cfg.embeddings.store == "auto" and not data_root:
        return None
    return cfg.embeddings.resolve(str(data_root))


def drift_parameters(cfg: HohConfig) -> Optional[Dict[str, Any]]:
    """DriftCheck parameters (the `drift` section as one JSON string); None = no drift check."""
    if not cfg.drift.enabled:
        return None
    return {"drift_config": section_json(cfg.drift, exclude={"enabled", "block_push"})}


def sampling_parameters(cfg: HohConfig) -> Dict[str, Any]:
    s = cfg.sampling
    return dict(
        k=s.k,
        strategy=s.strategy,
        diversity=int(s.diversity),
        candidates_factor=s.candidates_factor,
        exclude_labeled=int(s.exclude_labeled),
        from_name=s.from_name,
        to_name=s.to_name,
        url_prefix=s.image_url_prefix,
    )


def resolve_pool_root(pool_root: Optional[str], data_root: str) -> Optional[str]:
    """The pool's data root, checked where it is readable (a local path): it must hold a span
    with a pool/ split and must not be the training data root, whose latest span must stay a
    labeled one (class detection and the drift reference read it)."""
    if not pool_root or is_remote(pool_root):
        return pool_root or None
    root = Path(pool_root).resolve()
    if not is_remote(data_root) and root == Path(data_root).resolve():
        raise HohError(
            f"sampling.pool_root={pool_root!r} is the training data root; import the pool into its "
            "own root: hoh data import --unlabeled SRC --out POOL_DIR"
        )
    spans = [
        s
        for s in features.list_spans(root)
        if any(
            (features.span_dir(root, s) / features.POOL_SPLIT).glob(f"*{features.TFRECORD_SUFFIX}")
        )
    ]
    if not spans:
        raise HohError(
            f"sampling.pool_root={pool_root!r} holds no span with a {features.POOL_SPLIT}/ split "
            "(write one with: hoh data import --unlabeled SRC --out POOL_DIR)"
        )
    return str(root)


def triton_pusher_factory(cfg: HohConfig, model_repository: str) -> Optional[Callable[..., Any]]:
    """`create_components`' pusher: a TritonPusher writing to `model_repository` (a local path,
    gs://, or a Kubeflow runtime parameter), served as `cfg.push` says; None = push disabled."""
    if not cfg.push.enabled:
        return None
    # Imported unguarded: a broken pusher install must fail the run, not silently skip the push.
    from hoh.components.triton_pusher.component import TritonPusher

    def make(model, model_blessing, examples=None):
        return TritonPusher(
            model=model,
            model_blessing=model_blessing,
            model_repository=model_repository,
            push_config=cfg.push,
            examples=examples,  # its eval split's predictions: the monitor's baseline
        )

    return make


def component_options(
    cfg: HohConfig,
    data_root: str,
    classes: Sequence[str],
    pusher: Optional[Callable[..., Any]] = None,
    paths: PathRules = PathRules(),
    compare: bool = True,
) -> Dict[str, Any]:
    """Keyword arguments of `create_components` / `create_pipeline` for this config."""
    ev = cfg.evaluation
    return dict(
        data_root=str(data_root),
        span=cfg.data.span,
        schema_path=paths.schema(cfg.schema_.path),
        fail_on_anomalies=cfg.validation.fail_on_anomalies,
        image_size=cfg.transform.image_size,
        materialize=cfg.transform.materialize,
        trainer_config=trainer_config(cfg, paths, str(data_root)),
        embedding_store=embedding_store(cfg, str(data_root)),
        classes=list(classes),
        min_auc=ev.min_auc,
        min_accuracy=ev.min_accuracy,
        max_regression=ev.max_regression,
        min_class_recall=ev.min_class_recall,
        compare_with_baseline=compare,
        pusher=pusher,
        drift=drift_parameters(cfg),
        drift_blocks_push=cfg.drift.block_push,
        pool_root=resolve_pool_root(cfg.sampling.pool_root, str(data_root)),
        sampling=sampling_parameters(cfg),
    )
