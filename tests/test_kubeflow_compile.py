"""`hoh kfp compile`: the YAML is the local DAG, loads with the kfp SDK, leaks no local path, and
every class it names imports from the package the image installs."""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from hoh.cli import main
from hoh.config import builtin_config_path, load_config

REPO = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.com/hoh:test"
ROOT, DATA, MODELS = "gs://hoh-test/pipeline-root", "gs://hoh-test/data", "gs://hoh-test/models"
SETTINGS = [
    "data.classes=horses,humans",
    f"kubeflow.model_repository={MODELS}",
    "kubeflow.resources.Trainer.gpu=1",
    "kubeflow.resources.Trainer.memory_gb=16",
]
LAUNCHER = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


def compile_args(output: Path, *extra: str, settings=SETTINGS) -> list[str]:
    sets = [a for s in settings for a in ("--set", s)]
    return [
        "kfp",
        "compile",
        "--profile",
        "tiny",
        *sets,
        "--image",
        IMAGE,
        "--pipeline-root",
        ROOT,
        "--data",
        DATA,
        "--output",
        str(output),
        *extra,
    ]


def kfp_pipeline_object(*overrides: str):
    """The same pipeline object `hoh kfp compile` builds for compile_args()."""
    from hoh.pipeline.runners import kubeflow

    cfg = load_config(builtin_config_path("tiny"), [*SETTINGS, *overrides])
    return kubeflow.build_pipeline(cfg, kubeflow.resolve_target(cfg, IMAGE, ROOT, DATA))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    output = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    assert main(compile_args(output)) == 0
    return output, yaml.safe_load(output.read_text()), kfp_pipeline_object()


def _is_latest_blessed_resolver(node) -> bool:
    from tfx import v1 as tfx

    return isinstance(node, tfx.dsl.Resolver)


def expected_tasks(pipeline) -> dict[str, set[str]]:
    """Task name -> dependencies the KFP v2 compiler must produce for `pipeline`'s nodes.

    A latest-blessed-model Resolver becomes two tasks (`-model-blessing-resolver`, then
    `-model-resolver`, with no dependency between them in the spec) and its consumers depend on
    the second one; every other node is one task named by its id.
    """
    renamed = {
        n.id: f"{n.id}-model-resolver"
        for n in pipeline.components
        if _is_latest_blessed_resolver(n)
    }
    tasks = {}
    for node in pipeline.components:
        if node.id in renamed:
            tasks[f"{node.id}-model-blessing-resolver"] = set()
            tasks[renamed[node.id]] = set()
        else:
            tasks[node.id] = {renamed.get(u.id, u.id) for u in node.upstream_nodes}
    return tasks


def compiled_tasks(spec: dict) -> dict[str, set[str]]:
    return {
        name: set(task.get("dependentTasks", []))
        for name, task in spec["root"]["dag"]["tasks"].items()
    }


def test_yaml_loads_with_the_kfp_sdk(compiled):
    from kfp import components

    output, spec, _ = compiled
    component = components.load_component_from_file(str(output))
    assert component.name == "hoh"
    pipeline_spec = component.pipeline_spec
    assert len(pipeline_spec.root.dag.tasks) == len(spec["root"]["dag"]["tasks"])
    assert pipeline_spec.default_pipeline_root == ROOT
    assert spec["schemaVersion"] == "2.1.0"


def test_one_task_per_node_with_the_same_dependencies(compiled):
    _, spec, pipeline = compiled
    assert compiled_tasks(spec) == expected_tasks(pipeline)


def test_same_dag_as_the_local_runner_but_for_the_baseline(compiled, tiny_span, tmp_path):
    """Every node of the local pipeline is compiled with the same dependencies; only the Resolver
    (refused by open-source KFP) is swapped for LatestPushedModel, which needs the candidate."""
    from hoh.pipeline.runners.local import build_local_pipeline

    _, spec, _ = compiled
    cfg = load_config(
        builtin_config_path("tiny"),
        [],
        **{"data.root": str(tiny_span), "output_dir": str(tmp_path)},
    )
    local = build_local_pipeline(cfg, str(tiny_span))
    resolver = next(n.id for n in local.components if _is_latest_blessed_resolver(n))
    swap = {resolver: "LatestPushedModel"}
    expected = {
        swap.get(n.id, n.id): {swap.get(u.id, u.id) for u in n.upstream_nodes}
        for n in local.components
    }
    expected["LatestPushedModel"] |= {
        "Trainer"
    }  # the candidate is its fallback before the first push
    tasks = compiled_tasks(spec)
    # Kubeflow has no post-run step: TrackRun, after everything, logs the run instead.
    assert tasks.pop("TrackRun") == {
        "ImportExampleGen",
        "StatisticsGen",
        "ExampleValidator",
        "Transform",
        "Trainer",
        "Evaluator",
        "DriftCheck",
        "TritonPusher",
    }
    assert tasks == expected


def test_track_run_leaves_the_kubeflow_ui_reports_and_metrics(compiled):
    """The last node reads the facts' artifacts and outputs what the Kubeflow UI renders:
    Kubeflow names an artifact's type by its schema title (system.HTML, .Markdown, .Metrics)."""
    _, spec, _ = compiled
    task = spec["root"]["dag"]["tasks"]["TrackRun"]
    producers = {
        name: value["taskOutputArtifact"]["producerTask"]
        for name, value in task["inputs"]["artifacts"].items()
    }
    assert producers == {
        "examples": "ImportExampleGen",
        "statistics": "StatisticsGen",
        "anomalies": "ExampleValidator",
        "model_run": "Trainer",
        "model": "Trainer",
        "transform_graph": "Transform",
        "evaluation": "Evaluator",
        "blessing": "Evaluator",
        "drift": "DriftCheck",
        "pushed_model": "TritonPusher",
    }
    outputs = spec["components"][task["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    titles = {
        name: yaml.safe_load(out["artifactType"]["instanceSchema"])["title"]
        for name, out in outputs.items()
    }
    assert titles == {
        "summary": "system.Markdown",
        "drift_report": "system.HTML",
        "metrics": "system.Metrics",
    }
    executor = spec["deploymentSpec"]["executors"][task["componentRef"]["name"] + "_executor"]
    assert "hoh.pipeline.tracking.component.Executor" in executor["container"]["args"]
    params = task["inputs"]["parameters"]
    reason = params["untracked_reason"]["runtimeValue"]["constant"]
    assert reason.startswith("tracking.uri is not set")  # SETTINGS name no tracking server
    pods = json.loads(params["config"]["runtimeValue"]["constant"])
    assert pods["data"]["root"] == DATA and pods["push"]["model_repository"] == MODELS


def test_track_run_is_never_cached_so_a_fully_cached_run_is_still_logged(compiled):
    """Every other task keeps the pipeline's cache setting; TrackRun's inputs are the same when
    all of them are cache hits, and a cached TrackRun would log nothing."""
    from kfp import components

    output, spec, _ = compiled
    caching = {
        name: task.get("cachingOptions", {}).get("enableCache", False)
        for name, task in spec["root"]["dag"]["tasks"].items()
    }
    assert caching.pop("TrackRun") is False
    assert caching and all(caching.values())
    tasks = components.load_component_from_file(str(output)).pipeline_spec.root.dag.tasks
    assert not tasks["TrackRun"].caching_options.enable_cache  # as the KFP SDK reads it
    assert tasks["Trainer"].caching_options.enable_cache


def test_a_tracking_server_is_carried_and_passwords_are_refused(tmp_path, capsys):
    server = "http://mlflow.kubeflow.svc:5000"
    pipeline = kfp_pipeline_object(f"tracking.uri={server}")
    node = next(n for n in pipeline.components if n.id == "TrackRun")
    assert node.exec_properties["untracked_reason"] == ""
    assert json.loads(node.exec_properties["config"])["tracking"]["uri"] == server
    gated = kfp_pipeline_object("drift.block_push=true")
    node = next(n for n in gated.components if n.id == "TrackRun")
    assert "pushed_model" not in node.inputs  # a skipped branch's output cannot be consumed
    secret = "postgresql://hoh:s3cret@db:5432/mlflow"
    code = main(compile_args(tmp_path / "p.yaml", settings=[*SETTINGS, f"tracking.uri={secret}"]))
    err = capsys.readouterr().err
    assert code != 0 and "tracking.uri holds a password" in err and "s3cret" not in err


def test_every_container_runs_the_image_through_the_tfx_launcher(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert executors and all("container" in e for e in executors.values())  # no resolver/importer
    for name, executor in executors.items():
        assert executor["container"]["image"] == IMAGE, name
        assert executor["container"]["command"] == LAUNCHER, name


def test_runtime_parameters_exist_with_their_defaults(compiled):
    from hoh.pipeline.pipeline import RUNTIME_PARAMETERS
    from hoh.pipeline.runners.kubeflow import runtime_parameter_defaults

    _, spec, pipeline = compiled
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert set(RUNTIME_PARAMETERS) <= set(parameters)
    defaults = {name: p.get("defaultValue") for name, p in parameters.items()}
    assert all(p["parameterType"] == "STRING" for p in parameters.values())
    assert defaults == runtime_parameter_defaults(pipeline)
    assert defaults["data_root"] == DATA
    assert json.loads(defaults["range_config"]) == {
        "rolling_range": {"num_spans": 1}
    }  # the newest span
    trainer = json.loads(defaults["trainer_config"])
    assert trainer["training"]["epochs"] == 1 and trainer["image_size"] == 32  # tiny profile
    import tensorflow_model_analysis as tfma
    from tfx.utils import proto_utils

    eval_config = proto_utils.json_to_proto(defaults["eval_config"], tfma.EvalConfig())
    auc = next(m for s in eval_config.metrics_specs for m in s.metrics if m.class_name == "AUC")
    assert (
        auc.per_slice_thresholds[0].threshold.value_threshold.lower_bound.value == 0.0
    )  # tiny: open gate
    tasks = spec["root"]["dag"]["tasks"]
    uses = {
        (task, name): p["componentInputParameter"]
        for task, t in tasks.items()
        for name, p in t["inputs"].get("parameters", {}).items()
        if "componentInputParameter" in p
    }
    assert uses[("ImportExampleGen", "input_base")] == "data_root"
    assert uses[("ImportExampleGen", "range_config")] == "range_config"
    assert uses[("Trainer", "custom_config")] == "trainer_config"
    assert uses[("Evaluator", "eval_config")] == "eval_config"


def test_span_shortcut_builds_the_range_config_the_pipeline_would():
    from hoh.pipeline.factory import span_range_config
    from hoh.pipeline.kfp.params import span_parameter
    from hoh.pipeline.pipeline import as_runtime_parameter

    for span in (None, 0, 3):
        expected = as_runtime_parameter(
            "range_config", span_range_config(span, explicit_latest=True)
        ).default
        assert span_parameter("latest" if span is None else str(span)) == expected


def test_no_local_path_leaks(compiled, tmp_path):
    output, spec, _ = compiled
    text = output.read_text()
    for local in {str(REPO), os.getcwd(), str(Path.home()), str(tmp_path.parent.parent), "/tmp/"}:
        assert local not in text, local
    tasks = spec["root"]["dag"]["tasks"]
    # TrackRun's config is the whole resolved config, URL defaults such as Label Studio's
    # `/data/local-files/?d=` included: its paths are the pods' (test_track_run_leaves_...).
    without = copy.deepcopy(spec)
    del without["root"]["dag"]["tasks"]["TrackRun"]["inputs"]["parameters"]["config"]
    text = yaml.safe_dump(without, width=10**6)
    paths = set(re.findall(r"(?<![\w:/.])/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+", text))
    from hoh.pipeline.runners.kubeflow import IMAGE_SITE_PACKAGES

    assert {p for p in paths if not p.startswith(IMAGE_SITE_PACKAGES)} == set(), "only image paths"
    for task in ("TritonPusher", "LatestPushedModel"):
        repository = tasks[task]["inputs"]["parameters"]["model_repository"]["runtimeValue"][
            "constant"
        ]
        assert repository == MODELS, task  # the pods' repository, as configured


def test_beam_args_and_resources_are_carried(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for beam_step in ("StatisticsGen", "Transform", "Evaluator"):
        args = executors[f"{beam_step}_executor"]["container"]["args"]
        assert "--runner=DirectRunner" in args and f"--sdk_container_image={IMAGE}" in args
    example_gen = executors["ImportExampleGen_executor"]["container"]
    assert "--runner=DirectRunner" in example_gen["lifecycle"]["preCacheCheck"]["args"]
    resources = executors["Trainer_executor"]["container"]["resources"]
    assert resources["accelerator"]["count"] == "1" or resources["accelerator"]["count"] == 1
    assert resources["resourceMemoryLimit"] == "16G"


def _class_paths(spec: dict) -> set[str]:
    """Every executor class the pods import: the measuring wrappers and what they wrap."""
    from hoh.pipeline.kfp.measured import unwrap

    paths = set()
    for executor in spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        path = args[args.index("--executor_class_path") + 1]
        paths |= {path, unwrap(path)}
    return paths


def _module_functions(spec: dict) -> set[str]:
    """`hoh.x.y.fn` strings inside parameters (run_fn, preprocessing_fn, ...)."""
    return set(re.findall(r"\bhoh(?:\.[a-z_][a-z0-9_]*)+", json.dumps(spec)))


def _installed_packages() -> list[str]:
    """The packages setup.py installs: what a non-editable install in the image contains."""
    from test_kubeflow_image import setup_kwargs

    return setup_kwargs()["packages"]


def test_every_class_path_imports_from_the_installed_package(compiled):
    from tfx.dsl.components.base import base_executor
    from tfx.utils import import_utils

    _, spec, _ = compiled
    packages = _installed_packages()
    for path in _class_paths(spec):
        cls = import_utils.import_class_by_path(path)
        assert issubclass(cls, base_executor.BaseExecutor), path
        if path.startswith("hoh."):
            assert cls.__module__.rsplit(".", 1)[0] in packages, (
                f"{path} is not in setup.py's packages"
            )
    for dotted in _module_functions(spec):
        module, _, attr = dotted.rpartition(".")
        if module in packages:  # a package path such as hoh.schemas is not a function reference
            continue
        assert callable(getattr(importlib.import_module(module), attr)), dotted
        assert module.rsplit(".", 1)[0] in packages, dotted
    for command in (LAUNCHER[2], "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"):
        assert importlib.util.find_spec(command) is not None, command


def test_every_executor_but_track_runs_measures_itself(compiled):
    """Durations and peak memory per component on Kubeflow: each task's executor class is the
    measuring subclass of the one TFX compiled (hoh.pipeline.kfp.measured); TrackRun reads the
    measurements and keeps its own class."""
    from tfx.utils import import_utils

    from hoh.pipeline.kfp import measured

    _, spec, pipeline = compiled
    executors = spec["deploymentSpec"]["executors"]
    originals = {n.id: n.executor_spec.executor_class for n in pipeline.components}
    for name, task in spec["root"]["dag"]["tasks"].items():
        args = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        args = args["container"]["args"]
        path = args[args.index("--executor_class_path") + 1]
        cls = import_utils.import_class_by_path(path)
        if name == "TrackRun":
            assert path == "hoh.pipeline.tracking.component.Executor"
            continue
        assert path.startswith(f"{measured.__name__}.{name}__"), path
        assert cls.__bases__ == (originals[name],), path
        assert cls.Do is not originals[name].Do


def test_dockerfile_copies_every_package_the_pipeline_references(compiled):
    from test_kubeflow_image import copied_folders, folder_of

    _, spec, _ = compiled
    referenced = {p for p in _class_paths(spec) if p.startswith("hoh.")} | _module_functions(spec)
    needed = {folder_of(name) for name in referenced}
    assert {"components", "trainer", "transforms"} <= needed
    assert needed <= copied_folders()


def test_vertex_variant_keeps_the_resolver(tmp_path):
    """kubeflow.baseline=latest_blessed: the Resolver compiles to its two resolver tasks
    (Vertex)."""
    from hoh.pipeline.runners import kubeflow

    pipeline = kfp_pipeline_object("kubeflow.baseline=latest_blessed")
    spec = kubeflow.compile_pipeline(pipeline, IMAGE, str(tmp_path / "vertex.yaml"))
    tasks = compiled_tasks(spec)
    assert tasks == expected_tasks(pipeline)
    assert "latest_blessed_model_resolver-model-resolver" in tasks["Evaluator"]


def test_compile_errors_are_one_line(tmp_path, capsys):
    assert main(compile_args(tmp_path / "p.yaml", settings=[])) == 2
    assert "kubeflow.model_repository" in capsys.readouterr().err
    repository_only = [f"kubeflow.model_repository={MODELS}"]
    assert main(compile_args(tmp_path / "p.yaml", settings=repository_only)) == 2
    assert "set data.classes" in capsys.readouterr().err
