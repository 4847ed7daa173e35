"""Config -> the hoh DAG for Kubeflow Pipelines -> pipeline.yaml (KubeflowV2DagRunner).

The DAG is `create_pipeline`'s, unchanged; what differs from the local runner is only what a pod
can see and what open-source Kubeflow can run:
- paths are the pods' (gs:// or mounted volumes), never the compiling machine's; the curated
  schema and all module code come from the package installed in the image;
- the baseline is the model Triton serves (LatestPushedModel) instead of a Resolver, which
  open-source Kubeflow's v2 backend refuses (`kubeflow.baseline: latest_blessed` keeps the
  Resolver for Vertex);
- data root, span, training and evaluation settings are pipeline parameters
  (hoh.pipeline.kfp.params turns `--param` into their values);
- Beam args come from a preset (hoh.pipeline.kfp.beam_presets), pod resources from the config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import yaml

from hoh.config import HohConfig, pod_uri
from hoh.errors import HohError
from hoh.fileio import is_remote
from hoh.pipeline import factory
from hoh.pipeline.kfp import beam_presets

# Where the Dockerfile installs the package: the curated schema is read from there in the pods.
IMAGE_VENV = "/opt/hoh/venv"
IMAGE_PYTHON = "3.11"
IMAGE_SITE_PACKAGES = f"{IMAGE_VENV}/lib/python{IMAGE_PYTHON}/site-packages"
IMAGE_SCHEMA_PATH = f"{IMAGE_SITE_PACKAGES}/hoh/schemas/schema.pbtxt"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the compiled pipeline runs: the image and the pods' view of storage."""

    image: str
    pipeline_root: str
    data_root: str
    model_repository: Optional[str]


def _required(value: Optional[str], key: str, flag: str) -> str:
    if not value:
        raise HohError(f"compiling for Kubeflow needs kubeflow.{key} in the config or {flag}")
    return value


def _pods_view(value: Optional[str], key: str, flag: str) -> str:
    try:
        return str(pod_uri(_required(value, key, flag)))
    except ValueError as exc:
        raise HohError(f"{flag} / kubeflow.{key}: {exc}") from None


def resolve_target(
    cfg: HohConfig,
    image: Optional[str] = None,
    pipeline_root: Optional[str] = None,
    data_root: Optional[str] = None,
) -> Target:
    """CLI flags win over the config's kubeflow section; each missing value is named."""
    k = cfg.kubeflow
    root = _pods_view(pipeline_root or k.pipeline_root, "pipeline_root", "--pipeline-root")
    data = _pods_view(data_root or k.data_root, "data_root", "--data")
    needs_repository = cfg.push.enabled or k.baseline == "latest_pushed"
    if needs_repository and not k.model_repository:
        raise HohError(
            "compiling for Kubeflow needs kubeflow.model_repository (the Triton repository as "
            "the pods see it: gs://... or a mounted path) for the pusher and the baseline"
        )
    return Target(
        image=_required(image or k.image, "image", "--image"),
        pipeline_root=root,
        data_root=data,
        model_repository=k.model_repository,
    )


def classes(cfg: HohConfig, data_root: str) -> list[str]:
    """`data.classes`, checked against the span's when the data is mounted here too."""
    found = None
    if not is_remote(data_root) and Path(data_root).is_dir():
        found = factory.detect_classes(data_root, factory.resolve_span(data_root, cfg.data.span))
    return factory.resolve_classes(cfg, found)


def schema_path(setting: str) -> Optional[str]:
    """'auto' -> the schema installed in the image; explicit paths are the pods' own."""
    if setting == "infer":
        return None
    if setting == "auto":
        return IMAGE_SCHEMA_PATH if factory.resolve_schema_path("auto") else None
    if not (setting.startswith("gs://") or setting.startswith("/")):
        raise HohError(
            f"schema.path={setting!r}: on Kubeflow use 'auto', 'infer', gs://... or a mounted path"
        )
    return setting


def pod_weights(weights: str) -> str:
    """model.weights as the pods open it: never resolved on the compiling machine."""
    if weights not in ("imagenet", "none") and not (
        weights.startswith("gs://") or weights.startswith("/")
    ):
        raise HohError(
            f"model.weights={weights!r}: on Kubeflow use imagenet, none or a mounted .h5 path"
        )
    return weights


POD_PATHS = factory.PathRules(schema=schema_path, weights=pod_weights)


def baseline_factory(
    cfg: HohConfig, model_repository: Optional[str]
) -> Optional[Callable[[Any], Any]]:
    """None = TFX's Resolver (cfg.kubeflow.baseline == 'latest_blessed')."""
    if cfg.kubeflow.baseline == "latest_blessed":
        return None
    from hoh.components.latest_pushed_model.component import LatestPushedModel

    def make(candidate):
        return LatestPushedModel(
            candidate=candidate, model_repository=model_repository, model_name=cfg.push.model_name
        )

    return make


def _apply_resources(components: Mapping[str, Any], cfg: HohConfig) -> None:
    from kfp.pipeline_spec import pipeline_spec_pb2

    Resource = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    for component_id, res in cfg.kubeflow.resources.items():
        if component_id not in components:
            raise HohError(
                f"kubeflow.resources.{component_id}: no such component; "
                f"known: {', '.join(components)}"
            )
        spec = Resource()
        if res.cpu:
            spec.cpu_limit = res.cpu
            spec.resource_cpu_limit = f"{res.cpu:g}"
        if res.memory_gb:
            spec.memory_limit = res.memory_gb
            spec.resource_memory_limit = f"{res.memory_gb:g}G"
        if res.gpu:
            spec.accelerator.type = res.gpu_type
            spec.accelerator.count = res.gpu
            spec.accelerator.resource_type = res.gpu_type
            spec.accelerator.resource_count = str(res.gpu)
        components[component_id].with_platform_config(spec)


TRACK_RUN = "TrackRun"


def untracked_reason(cfg: HohConfig) -> str:
    """Why a Kubeflow run will not log to MLflow ("" = it will)."""
    if not cfg.tracking.enabled:
        return "tracking.enabled: false"
    if not cfg.tracking.uri:
        return (
            "tracking.uri is not set; a pod's embedded store would vanish with the pod: set a "
            "tracking server or database URL the pods reach"
        )
    return ""


def tracking_node(cfg: HohConfig, target: Target, components: Dict[str, Any], options: dict):
    """The run's last node: MLflow logging from the artifacts, and the Kubeflow UI's reports.

    It gets the config as the pods see it (their data root and Triton repository).
    """
    import json
    from urllib.parse import urlsplit

    from hoh.pipeline.tracking.component import track_run_node

    for key in ("uri", "registry_uri"):
        value = getattr(cfg.tracking, key)
        if value and urlsplit(value).password:
            raise HohError(
                f"tracking.{key} holds a password, which the compiled pipeline would carry in "
                "clear: give the pods the credentials through their environment instead "
                "(MLFLOW_TRACKING_PASSWORD, PGPASSWORD)"
            )
    pods = cfg.model_dump(by_alias=True, mode="json")
    pods["data"]["root"] = target.data_root
    pods["push"]["model_repository"] = target.model_repository
    gated = options.get("drift") is not None and bool(options.get("drift_blocks_push"))
    return track_run_node(
        components, json.dumps(pods, sort_keys=True), untracked_reason(cfg), push=not gated
    )


def build_pipeline(cfg: HohConfig, target: Target, beam_args: Optional[list[str]] = None):
    """The TFX pipeline object that `compile_pipeline` compiles (also runnable locally).

    `beam_args`: None = the config's preset; a local run of this very DAG passes [] (in-process
    Beam, as `hoh run`), because the presets describe pods and clusters.
    """
    from tfx import v1 as tfx

    from hoh.pipeline.pipeline import create_components

    options = factory.component_options(
        cfg,
        target.data_root,
        classes(cfg, target.data_root),
        factory.triton_pusher_factory(cfg, target.model_repository)
        if target.model_repository
        else None,
        POD_PATHS,
    )
    options.update(
        baseline=baseline_factory(cfg, target.model_repository),
        runtime_parameters=True,
    )
    components = create_components(**options)
    components[TRACK_RUN] = tracking_node(cfg, target, components, options)
    _apply_resources(components, cfg)
    k = cfg.kubeflow
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline_name,
        pipeline_root=target.pipeline_root,
        components=list(components.values()),
        enable_cache=k.enable_cache,
        beam_pipeline_args=(
            beam_presets.beam_args(k.beam_preset, k.beam_options, k.beam_args, target.image)
            if beam_args is None
            else beam_args
        ),
    )


def runtime_parameter_defaults(pipeline) -> Dict[str, str]:
    """Pipeline parameter name -> default, as the components of `pipeline` declare them."""
    from tfx.orchestration import data_types

    return {
        value.name: value.default
        for node in pipeline.components
        for value in node.exec_properties.values()
        if isinstance(value, data_types.RuntimeParameter)
    }


# Tasks whose execution must happen in every run: the run's record is what they produce.
NEVER_CACHED = (TRACK_RUN,)


def never_cache(spec: Dict[str, Any], task_names) -> None:
    """Turn Kubeflow's cache off for these tasks of a compiled spec.

    TFX sets one `cachingOptions` for every task (the pipeline's `enable_cache`); Kubeflow reads
    it per task, so the spec is the place to make an exception."""
    tasks = spec["root"]["dag"]["tasks"]
    for name in task_names:
        if name in tasks:
            tasks[name]["cachingOptions"] = {"enableCache": False}


def measure_executors(spec: Dict[str, Any], skip=()) -> None:
    """Point each task's `--executor_class_path` at its measuring wrapper (durations and peak
    memory per component on Kubeflow: hoh.pipeline.kfp.measured). TrackRun is skipped: it
    reads the measurements and cannot record its own."""
    from hoh.pipeline.kfp import measured

    executors = spec["deploymentSpec"]["executors"]
    for name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        args = executors.get(component.get("executorLabel"), {}).get("container", {}).get("args")
        if name in skip or not args or "--executor_class_path" not in args:
            continue  # a resolver or importer runs no executor of ours
        at = args.index("--executor_class_path") + 1
        try:
            args[at] = measured.class_path(name, args[at])
        except ValueError as exc:
            raise HohError(str(exc)) from None


def compile_pipeline(pipeline, image: str, output: str) -> Dict[str, Any]:
    """Write the KFP v2 pipeline spec YAML to `output`; returns the spec as a dict.

    TFX leaves two things in the job's runtime config, which the YAML drops; they are put back
    where the pipeline spec keeps them: the pipeline root as `defaultPipelineRoot` (a run
    submitted without one still writes where it was compiled for) and each parameter's default
    as its `defaultValue` (else Kubeflow asks for every parameter on every run).

    TrackRun is never cached (`never_cache`): its inputs are the same when every other node is
    a cache hit, and a cached TrackRun would log nothing for the run. Every other node's
    executor measures itself for TrackRun to record (`measure_executors`).
    """
    from tfx import v1 as tfx

    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True
        ),
        output_filename=Path(output).name,
    )
    spec = runner.run(pipeline, write_out=False)["pipelineSpec"]
    spec["defaultPipelineRoot"] = pipeline.pipeline_info.pipeline_root
    never_cache(spec, NEVER_CACHED)
    measure_executors(spec, skip=(TRACK_RUN,))
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, default in runtime_parameter_defaults(pipeline).items():
        declared[name].update(defaultValue=default, isOptional=True)
    header = (
        f"# hoh pipeline {spec['pipelineInfo']['name']} for Kubeflow Pipelines v2, compiled by "
        f"`hoh kfp compile` ({spec.get('sdkVersion', '')}).\n# Parameters: "
        + ", ".join(sorted(spec["root"].get("inputDefinitions", {}).get("parameters", {})))
        + "\n"
    )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(header + yaml.safe_dump(spec, sort_keys=True), encoding="utf-8")
    return spec
