"""The scheduled-retraining semantics, run locally on the very DAG `hoh kfp compile` compiles.

Three "scheduled" runs of the Kubeflow pipeline object (runtime parameters at their defaults,
LatestPushedModel as the baseline) with LocalDagRunner: span 1; then a drifted span 2 lands;
then nothing new. What was pushed each time is read back from the Triton repository and MLMD.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_span_root

from hoh.config import builtin_config_path, load_config

pytestmark = pytest.mark.e2e


def _run(cfg, data_root: Path, out: Path) -> None:
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    from hoh.pipeline.runners import kubeflow

    target = kubeflow.resolve_target(
        cfg, image="hoh:local", pipeline_root=str(out / "pipeline_root"), data_root=str(data_root)
    )
    pipeline = kubeflow.build_pipeline(cfg, target, beam_args=[])  # in-process Beam, as `hoh run`
    pipeline.metadata_connection_config = metadata.sqlite_metadata_connection_config(
        str(out / "metadata.sqlite")
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)


def _store(out: Path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(out / "metadata.sqlite")
    return metadata_store.MetadataStore(config)


def _props(artifact) -> dict:
    return {k: (v.string_value or v.int_value) for k, v in artifact.custom_properties.items()}


def _snapshot(out: Path, repo: Path) -> dict:
    """What the run left: repository versions and their sources, and the MLMD artifacts."""
    from hoh.components.triton_pusher import repository

    store = _store(out)
    model_dir = repo / "hoh"
    versions = repository.list_versions(str(model_dir))
    by_id = lambda t: sorted(store.get_artifacts_by_type(t), key=lambda a: a.id)  # noqa: E731
    return {
        "versions": versions,
        "sources": [
            json.loads((model_dir / str(v) / repository.PUSH_INFO_FILE).read_text())["source"]
            for v in versions
        ],
        "models": [m.uri for m in by_id("Model") if "LatestPushedModel" not in m.uri],
        "baselines": [_props(m) for m in by_id("Model") if "LatestPushedModel" in m.uri],
        "pushed": [_props(p) for p in by_id("PushedModel")],
        "spans": sorted({e.custom_properties["span"].int_value for e in by_id("Examples")}),
    }


@pytest.fixture(scope="module")
def schedule(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    data_root = make_span_root(root / "span1")
    repo, out = root / "repo", root / "out"
    # The curated schema by its path here: in the pods it is the copy installed in the image.
    schema = Path(__file__).resolve().parents[1] / "schemas" / "schema.pbtxt"
    cfg = load_config(
        builtin_config_path("tiny"), [f"kubeflow.model_repository={repo}", f"schema.path={schema}"]
    )
    snapshots = []
    _run(cfg, data_root, out)
    snapshots.append(_snapshot(out, repo))

    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    drifted = root / "drifted-images"  # other scenes and a smaller size: a visibly different span
    make_demo_dataset(drifted, per_class=24, size=40, seed=7)
    import_images(drifted, data_root)
    _run(cfg, data_root, out)
    snapshots.append(_snapshot(out, repo))

    _run(cfg, data_root, out)  # the next scheduled run: no new span
    snapshots.append(_snapshot(out, repo))
    return snapshots


def test_first_run_pushes_span_1_with_no_baseline(schedule):
    first = schedule[0]
    assert first["spans"] == [1] and first["versions"] == [1]
    assert first["sources"] == [first["models"][0] + "/Format-Serving"]
    assert first["baselines"][0]["hoh_pushed_baseline"] == 0  # the candidate stood in for it
    assert first["pushed"][0]["pushed"] == 1 and first["pushed"][0]["pushed_version"] == "1"


def test_a_new_drifted_span_is_trained_compared_with_production_and_pushed(schedule):
    first, second = schedule[0], schedule[1]
    assert second["spans"] == [1, 2] and len(second["models"]) == 2
    assert second["baselines"][-1]["hoh_pushed_baseline"] == 1
    # Production's model: an ONNX version (the default flavour) holds no SavedModel, so the
    # baseline is the one it was pushed from, as its hoh_push.json says.
    assert second["baselines"][-1]["hoh_baseline_source"] == first["sources"][0]
    assert second["versions"] == [1, 2]
    assert second["sources"][1] == second["models"][1] + "/Format-Serving" != first["sources"][0]
    assert second["pushed"][-1]["pushed"] == 1 and second["pushed"][-1]["pushed_version"] == "2"


def test_no_new_span_pushes_nothing(schedule):
    second, third = schedule[1], schedule[2]
    assert third == second  # no new example, model, baseline or push; the repository is as it was
