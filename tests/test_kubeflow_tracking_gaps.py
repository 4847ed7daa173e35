"""What a Kubeflow run's TrackRun node records beyond a plain read of its inputs: runs whose
executions Kubeflow's cache reused, and the version a pusher under the drift gate published
(TrackRun cannot consume that PushedModel: it finds it in the Triton repository).

Real TFX artifacts, the real pusher executor and a real embedded MLflow store; no pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tracking import HELD_DRIFT, make_cfg, summary
from tiny_model import fake_saved_model, push_fake_model

from hoh.components.triton_pusher import repository, rollback
from hoh.pipeline.tracking import facts as facts_mod

HELD = HELD_DRIFT
CLEAN = {**HELD_DRIFT, "drift_detected": False, "drifted_share": 0.0, "reasons": []}


def _model(root: Path, name: str, pb: bytes) -> Path:
    """A Model artifact directory as the Trainer leaves it (its serving model in Format-Serving)."""
    fake_saved_model(root / name / "Format-Serving", pb=pb)
    return root / name


def _serving(model: Path) -> str:
    return str(model / "Format-Serving")  # what the pusher records as the version's source


@pytest.fixture
def pushed_repo(tmp_path):
    """Models A (version 1) and B (version 2) pushed by the pusher executor; C never pushed."""
    repo = tmp_path / "repo"
    models = {n: _model(tmp_path, n, f"graph-{n}".encode()) for n in "ABC"}
    for n in "AB":
        push_fake_model(models[n], repo, tmp_path / f"pushed-{n}", model_name="clf")
    return repo, models


def test_pushed_version_of_finds_the_version_pushed_from_a_model(pushed_repo):
    repo, models = pushed_repo
    assert rollback.pushed_version_of(str(repo), "clf", _serving(models["A"])) == 1
    assert rollback.pushed_version_of(str(repo), "clf", _serving(models["B"]) + "/") == 2
    assert rollback.pushed_version_of(str(repo), "clf", _serving(models["C"])) is None
    assert rollback.pushed_version_of(str(repo), "other", _serving(models["A"])) is None
    assert rollback.pushed_version_of(str(repo / "missing"), "clf", _serving(models["A"])) is None


def test_pushed_version_of_follows_a_republish_and_ignores_unpublished_versions(pushed_repo):
    import shutil

    repo, models = pushed_repo
    push = make_cfg(repo.parent, "push.model_name=clf").push
    settings = repository.TritonPushSettings.from_config(push)
    assert rollback.republish(str(repo), settings, 1).version == 3  # A served again
    assert rollback.pushed_version_of(str(repo), "clf", _serving(models["A"])) == 3
    # A version directory no config serves (its push was killed) is not a version.
    shutil.copytree(repo / "clf" / "2", repo / "clf" / "4")
    assert rollback.pushed_version_of(str(repo), "clf", _serving(models["B"])) == 2


def _gated(cfg, model: Path, *, blessed=True, drift=CLEAN):
    s = summary("kfp-run", blessed=blessed, model_uri=model, drift=drift)
    s.pushed = None  # a gated TrackRun has no PushedModel to read
    return s


def test_a_gated_push_is_read_from_the_repository(pushed_repo):
    repo, models = pushed_repo
    cfg = make_cfg(repo.parent, f"push.model_repository={repo}", "push.model_name=clf")
    s = _gated(cfg, models["B"])
    assert facts_mod.push_from_repository(cfg, s, wait_s=0) is None
    assert (s.pushed, s.pushed_version) == (True, "2")
    assert s.pushed_destination == str(repo / "clf" / "2")
    assert f"pushed: version 2 -> {repo / 'clf' / '2'}" in s.lines()


def test_held_or_unblessed_runs_record_no_push_even_when_the_model_is_in_the_repository(
    pushed_repo,
):
    repo, models = pushed_repo
    cfg = make_cfg(repo.parent, f"push.model_repository={repo}", "push.model_name=clf")
    held = _gated(cfg, models["A"], drift=HELD)
    assert facts_mod.push_from_repository(cfg, held, wait_s=60) is None  # no wait either
    assert held.pushed is None and held.pushed_version is None
    assert any("held by the drift gate" in line for line in held.lines())
    refused = _gated(cfg, models["A"], blessed=False)
    assert facts_mod.push_from_repository(cfg, refused, wait_s=60) is None
    assert refused.pushed is False and "pushed: no (model not blessed)" in refused.lines()


def test_the_node_waits_for_the_pusher_it_runs_beside_and_then_says_it_gave_up(pushed_repo):
    repo, models = pushed_repo
    cfg = make_cfg(repo.parent, f"push.model_repository={repo}", "push.model_name=clf")
    pushed_c = []

    def sleep(_seconds):  # the pusher finishes while the node waits
        push_fake_model(models["C"], repo, repo.parent / "pushed-C", model_name="clf")
        pushed_c.append(True)

    s = _gated(cfg, models["C"])
    assert facts_mod.push_from_repository(cfg, s, wait_s=3600, sleep=sleep) is None
    assert pushed_c == [True] and s.pushed_version == "3"
    lost = _gated(cfg, _model(repo.parent, "D", b"graph-D"))
    note = facts_mod.push_from_repository(cfg, lost, wait_s=0)
    assert lost.pushed is None
    assert note.startswith("no version of clf in ") and "the pushed version is not recorded" in note


def _artifacts(model: Path, blessed: int, drift_uri: Path | None = None):
    import json

    from tfx.types import standard_artifacts

    from hoh.components.drift.component import DriftReport
    from hoh.components.drift.report import SUMMARY_FILE

    m = standard_artifacts.Model()
    m.uri = str(model)
    b = standard_artifacts.ModelBlessing()
    b.uri = str(model.parent / "blessing")
    b.set_int_custom_property("blessed", blessed)
    out = [m, b]
    if drift_uri is not None:
        drift_uri.mkdir(parents=True, exist_ok=True)
        (drift_uri / SUMMARY_FILE).write_text(json.dumps(CLEAN))
        d = DriftReport()
        d.uri = str(drift_uri)
        out.append(d)
    return out


def test_from_artifacts_registers_a_gated_push_like_a_consumed_pushed_model(pushed_repo):
    from hoh.pipeline.tracking.log import track_facts

    repo, models = pushed_repo
    cfg = make_cfg(repo.parent / "out", f"push.model_repository={repo}", "push.model_name=clf")
    inputs = _artifacts(models["B"], 1, repo.parent / "drift")
    facts = facts_mod.from_artifacts(cfg, "kfp-run-1", inputs, push_wait_s=0)
    assert (facts.pushed, facts.pushed_version) == (True, "2")
    assert facts.model_repository == str(repo) and facts.model_name == "clf"
    result = track_facts(cfg, facts, lambda _line: None)
    assert result.ok, result.message
    assert (result.registered_version, result.alias) == ("1", "champion")
    from hoh.pipeline.tracking import registry, store

    client = store.client(cfg)
    [version] = registry.all_versions(client, "clf")
    assert version.tags["triton_version"] == "2" and version.tags["state"] == "pushed"
    assert (repo / "clf" / "2" / "model_card.json").is_file()
    # Without the wait (a local run, or no gate) the repository is not looked at.
    assert facts_mod.from_artifacts(cfg, "kfp-run-2", inputs).pushed is None


# ----------------------------------------------------------------- cached executions (gap 1)


def test_inputs_from_an_earlier_runs_folder_are_reported_as_cached(tmp_path):
    from hoh.pipeline.tracking.component import cached_inputs, run_id_of
    from hoh.pipeline.tracking.log import mlflow_record

    root = "gs://b/root/hoh"
    this_run = run_id_of(None, f"{root}/run-2/TrackRun/summary")
    assert this_run == "run-2"
    inputs = _artifacts(_model(tmp_path, "M", b"g"), 0)
    inputs[0].uri = f"{root}/run-1/Trainer/model"  # a cache hit: the earlier execution's
    inputs[1].uri = f"{root}/run-2/Evaluator/blessing"
    assert cached_inputs(this_run, inputs) == {"Model": "run-1"}
    assert cached_inputs(this_run, inputs[1:]) == {}

    cfg = make_cfg(tmp_path / "out")
    facts = facts_mod.from_artifacts(cfg, this_run, inputs, cached_from={"Model": "run-1"})
    [line] = [x for x in facts.summary_lines if x.startswith("cache:")]
    assert line == "cache: 1 of 2 inputs came from cached executions (Model; run run-1)"
    _, _, tags = mlflow_record(facts, cfg)
    assert tags["hoh.cached_from"] == '{"Model": "run-1"}'
    every = {"Model": "run-1", "ModelBlessing": "run-1"}
    facts = facts_mod.from_artifacts(cfg, this_run, inputs, cached_from=every)
    assert any(
        x.startswith("cache: every input of this record came from cached executions (run run-1)")
        for x in facts.summary_lines
    )
    assert (
        "hoh.cached_from" not in mlflow_record(facts_mod.from_artifacts(cfg, "r", inputs), cfg)[2]
    )


# ------------------------------------------------- durations and peak memory per node (gap 3)


def test_a_measuring_executor_stamps_its_outputs_and_pushes_as_before(tmp_path, monkeypatch):
    import pickle

    from tfx.utils import import_utils

    from hoh.components.triton_pusher import executor
    from hoh.pipeline.kfp import measured
    from hoh.pipeline.tracking.log import mlflow_record

    original = "hoh.components.triton_pusher.executor.Executor"
    path = measured.class_path("TritonPusher", original)
    assert path == (
        "hoh.pipeline.kfp.measured.TritonPusher__hoh__components__triton_pusher__executor__Executor"
    )
    assert measured.unwrap(path) == original and measured.unwrap(original) == original
    cls = import_utils.import_class_by_path(path)
    assert issubclass(cls, executor.Executor) and pickle.loads(pickle.dumps(cls)) is cls
    monkeypatch.setattr(executor, "Executor", cls)  # what the pod's launcher instantiates
    model = _model(tmp_path, "M", b"graph-M")
    pushed = push_fake_model(model, tmp_path / "repo", tmp_path / "pushed", model_name="clf")
    assert pushed.get_string_custom_property("pushed_version") == "1"
    assert (tmp_path / "repo" / "clf" / "1" / "hoh_push.json").is_file()
    assert pushed.get_string_custom_property(measured.COMPONENT) == "TritonPusher"
    seconds = pushed.get_float_custom_property(measured.SECONDS)
    peak = pushed.get_float_custom_property(measured.PEAK_RSS_MB)
    assert 0 < seconds < 120 and peak == pytest.approx(measured.peak_rss_mb(), rel=0.5)

    cfg = make_cfg(tmp_path / "out", f"push.model_repository={tmp_path / 'repo'}")
    facts = facts_mod.from_artifacts(cfg, "r", [pushed])
    assert facts.components == [
        {
            "component": "TritonPusher",
            "seconds": seconds,
            "peak_rss_mb": peak,
            "cached": False,
            "status": "done",
        }
    ]
    _, metrics, _ = mlflow_record(facts, cfg)
    assert ("duration_s.TritonPusher", seconds, 0) in metrics
    assert ("peak_rss_mb.TritonPusher", peak, 0) in metrics
    assert ("duration_s", seconds, 0) in metrics
    [reused] = facts_mod.from_artifacts(
        cfg, "r", [pushed], cached_from={"PushedModel": "r0"}
    ).components
    assert reused["cached"] and reused["status"] == "cached"


@pytest.mark.parametrize(
    "node, path",
    [("Node", "a__b.C"), ("Node_", "a.C"), ("No__de", "a.C"), ("", "a.C"), ("N", "a_.C")],
)
def test_executor_paths_that_would_not_read_back_are_refused(node, path):
    from hoh.pipeline.kfp import measured

    with pytest.raises(ValueError, match="cannot be wrapped"):
        measured.class_path(node, path)


def test_other_names_of_the_measuring_module_are_missing_attributes():
    from hoh.pipeline.kfp import measured

    for name in ("nothing", "__wrapped__", "Node__"):
        assert not hasattr(measured, name)


def test_the_track_run_executor_in_a_kubeflow_pod(tmp_path):
    """TrackRun's executor as the Kubeflow launcher runs it (no pipeline run id; Kubeflow's
    output layout), gated (no PushedModel input), with a Trainer output reused from run-1 by the
    cache and measured executors' stamps: the summary and metrics say all of it."""
    import json

    from tfx.dsl.components.base import base_executor

    from hoh.pipeline.kfp import measured
    from hoh.pipeline.tracking import component

    run = tmp_path / "root" / "hoh"
    model = _model(run / "run-1" / "Trainer", "model", b"graph-M")
    repo = tmp_path / "repo"
    push_fake_model(model, repo, run / "run-2" / "TritonPusher" / "pushed_model")
    m, blessing, drift = _artifacts(model, 1, run / "run-2" / "DriftCheck" / "drift_report")
    blessing.uri = str(run / "run-2" / "Evaluator" / "blessing")
    for a, node, seconds in ((m, "Trainer", 42.0), (blessing, "Evaluator", 7.0)):
        a.set_string_custom_property(measured.COMPONENT, node)
        a.set_float_custom_property(measured.SECONDS, seconds)
        a.set_float_custom_property(measured.PEAK_RSS_MB, 900.0)
    cfg = make_cfg(tmp_path / "out", f"push.model_repository={repo}", "drift.block_push=true")
    outputs = {}
    for key, kind in (
        (component.SUMMARY_KEY, component.KfpMarkdown),
        (component.DRIFT_KEY, component.KfpHtml),
        (component.METRICS_KEY, component.KfpMetrics),
    ):
        outputs[key] = [kind()]
        outputs[key][0].uri = str(run / "run-2" / "TrackRun" / key)
    context = base_executor.BaseExecutor.Context(tmp_dir=str(tmp_path / "tmp"), unique_id="1")
    component.Executor(context).Do(
        {"model": [m], "blessing": [blessing], "drift": [drift]},
        outputs,
        {
            "config": json.dumps(cfg.model_dump(by_alias=True, mode="json")),
            "untracked_reason": "no store in this test",
        },
    )
    text = Path(outputs[component.SUMMARY_KEY][0].uri).read_text()
    assert text.startswith("# hoh: run run-2\n")
    assert f"- pushed: version 1 -> {repo / 'hoh' / '1'}" in text
    assert "- cache: 1 of 3 inputs came from cached executions (Model; run run-1)" in text
    assert "- tracking: off (no store in this test)" in text
    assert "| Trainer | 42.0 | 900 | yes |\n| Evaluator | 7.0 | 900 | no |" in text


def test_from_artifacts_credits_the_data_source_of_the_span_the_examples_carry(tmp_path):
    """On Kubeflow the span is known only from the Examples artifact; the model card's source
    credit is read from that span's import report all the same."""
    import json

    from tfx.types import standard_artifacts

    from hoh.features import IMPORT_REPORT, span_dir

    data = tmp_path / "data"
    span_dir(data, 3).mkdir(parents=True)
    (span_dir(data, 3) / IMPORT_REPORT).write_text(json.dumps({"src": "/images/horse-or-human"}))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.set_int_custom_property("span", 3)
    cfg = make_cfg(tmp_path / "out", f"data.root={data}")
    facts = facts_mod.from_artifacts(cfg, "kfp-run", [examples])
    assert (facts.span, facts.data_source) == (3, "/images/horse-or-human")
    examples.set_int_custom_property("span", 4)  # no report there: a note, not a crash
    facts = facts_mod.from_artifacts(cfg, "kfp-run", [examples])
    assert facts.data_source is None
