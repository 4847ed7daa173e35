"""Pure pieces under the pipeline glue: eval config, progress parsing, anomalies, summaries."""

from __future__ import annotations

import logging

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2

from hoh import features
from hoh.components.anomalies_gate.anomalies import describe
from hoh.errors import HohError
from hoh.pipeline import factory
from hoh.pipeline.evaluation import make_eval_config
from hoh.pipeline.telemetry.progress import ProgressHandler
from hoh.trainer import EPOCH_PREFIX


def _thresholds(config):
    out = {}
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                assert [s.feature_keys for s in per_slice.slicing_specs] == [[]]  # overall only
                out[metric.class_name] = per_slice.threshold
            assert not metric.HasField("threshold")  # would also gate per-class slices
    return out


def test_binary_eval_config_gates_auc_with_change_threshold():
    config = make_eval_config(2, min_auc=0.9, min_accuracy=0.7, max_regression=0.01)
    spec = config.model_specs[0]
    assert spec.signature_name == "serving_tf_example"
    assert list(spec.preprocessing_function_names) == ["transform_features"]
    assert spec.label_key == features.LABEL_XF
    gates = _thresholds(config)
    assert gates["AUC"].value_threshold.lower_bound.value == 0.9
    assert gates["AUC"].change_threshold.absolute.value == pytest.approx(-0.01, abs=1e-9)
    assert gates["BinaryAccuracy"].value_threshold.lower_bound.value == 0.7
    assert not config.options.include_default_metrics.value
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], [features.LABEL_KEY]]


def test_multiclass_eval_config_has_accuracy_gate_per_class_metrics_and_confusion_matrix():
    config = make_eval_config(3, min_auc=0.9, min_accuracy=0.6, max_regression=0.0)
    gates = _thresholds(config)
    assert set(gates) == {"SparseCategoricalAccuracy"}
    names = {m.class_name for spec in config.metrics_specs for m in spec.metrics}
    assert {"MultiClassConfusionMatrixPlot", "Precision", "Recall"} <= names
    binarized = [s for s in config.metrics_specs if s.HasField("binarize")]
    assert list(binarized[0].binarize.class_ids.values) == [0, 1, 2]


def test_after_a_class_is_added_the_gate_is_values_and_per_class_recall():
    config = make_eval_config(
        3,
        0.9,
        min_accuracy=0.6,
        max_regression=0.0,
        min_class_recall=0.4,
        compare_with_baseline=False,
    )
    gates = _thresholds(config)
    assert set(gates) == {"SparseCategoricalAccuracy", "Recall"}
    assert not gates["SparseCategoricalAccuracy"].HasField("change_threshold")
    assert gates["Recall"].value_threshold.lower_bound.value == 0.4
    (binarized,) = [s for s in config.metrics_specs if s.HasField("binarize")]
    assert [m.class_name for m in binarized.metrics if m.per_slice_thresholds] == ["Recall"]


def test_the_baseline_is_compared_unless_the_served_classes_differ():
    cfg = _data_config()
    assert factory.compare_with_baseline(cfg, ["a", "b"], None) == (True, None)
    assert factory.compare_with_baseline(cfg, ["a", "b"], ["a", "b"]) == (True, None)
    compare, why = factory.compare_with_baseline(cfg, ["a", "b", "c"], ["a", "b"])
    assert not compare
    assert "the classes changed (served model: ['a', 'b']; this run: ['a', 'b', 'c'])" in why
    never = cfg.model_copy(
        update={"evaluation": cfg.evaluation.model_copy(update={"compare_with_baseline": "never"})}
    )
    assert factory.compare_with_baseline(never, ["a", "b"], ["a", "b"]) == (
        False,
        "evaluation.compare_with_baseline=never",
    )


class _FakeMemory:
    def __init__(self, peaks):
        self.peaks, self.resets = iter(peaks), 0

    def reset(self):
        self.resets += 1

    def peak_mb(self):
        return next(self.peaks)


def test_progress_handler_reports_start_end_duration_memory_and_cache():
    lines, clock = [], iter([0.0, 2.5, 10.0, 10.5, 11.0])
    memory = _FakeMemory([812.0, None])
    handler = ProgressHandler(lines.append, clock=lambda: next(clock), memory=memory)
    logger = logging.getLogger("test-progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("Component %s is running.", "Transform")
        logger.info("Component %s is finished.", "Transform")
        logger.info("Component %s is running.", "Trainer")
        logger.info("A cached execution %d is used.", 7)
        logger.info("%sepoch 1: loss 0.1", EPOCH_PREFIX)
        logger.info("Component %s is finished.", "Trainer")
        logger.info("Component %s is running.", "Evaluator")
    finally:
        logger.removeHandler(handler)
    assert lines == [
        "▶ Transform ...",
        "✔ Transform 2.5s, peak RSS 812 MB",
        "▶ Trainer ...",
        "    epoch 1: loss 0.1",
        "✔ Trainer 0.5s (cached)",
        "▶ Evaluator ...",
    ]
    assert [r.status for r in handler.runs] == ["done", "cached", "failed"]
    assert [r.peak_rss_mb for r in handler.runs] == [812.0, None, None]
    assert memory.resets == 3  # once per started component
    assert handler.running.component_id == "Evaluator"


def test_anomalies_are_described_per_split_and_feature():
    anomalies = anomalies_pb2.Anomalies()
    anomalies.anomaly_info["width"].description = "Unexpectedly small value: 0."
    anomalies.anomaly_info["image_raw"].short_description = "Column dropped"
    assert describe({"train": anomalies, "eval": anomalies_pb2.Anomalies()}) == [
        "train: feature 'image_raw': Column dropped",
        "train: feature 'width': Unexpectedly small value: 0.",
    ]


def test_span_and_schema_resolution_errors_are_readable(tmp_path):
    with pytest.raises(HohError, match="holds no spans"):
        factory.resolve_span(str(tmp_path), None)
    (tmp_path / "span-1").mkdir()
    (tmp_path / "span-3").mkdir()
    assert factory.resolve_span(str(tmp_path), None) == 3
    with pytest.raises(HohError, match=r"spans there: \[1, 3\]"):
        factory.resolve_span(str(tmp_path), 2)
    with pytest.raises(HohError, match="set data.classes"):
        factory.detect_classes(str(tmp_path), 3)
    assert factory.resolve_schema_path("infer") is None
    assert factory.resolve_schema_path("auto").endswith("schema.pbtxt")
    with pytest.raises(HohError, match="no such file"):
        factory.resolve_schema_path(str(tmp_path / "missing.pbtxt"))


def test_failure_description_names_value_and_bound():
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.proto import validation_result_pb2

    from hoh.pipeline.telemetry.summary import describe_failure

    failure = validation_result_pb2.ValidationFailure()
    failure.metric_key.name = "auc"
    failure.metric_value.double_value.value = 0.61
    failure.metric_threshold.CopyFrom(
        tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.9}))
    )
    assert describe_failure(failure) == "auc 0.6100 is below the minimum 0.9"


def test_promotion_adds_the_image_domain_and_keeps_everything_else():
    from hoh.pipeline.schema_promotion import promotable_schema

    inferred = (
        'feature { name: "image_raw" type: BYTES shape { dim { size: 1 } } }\n'
        'feature { name: "label" type: BYTES domain: "label" }\n'
        'string_domain { name: "label" value: "horses" value: "humans" }\n'
    )
    text, changes = promotable_schema(inferred)
    assert len(changes) == 1 and "image_domain" in changes[0]
    assert "image_domain {" in text and 'value: "humans"' in text and "size: 1" in text
    again, none = promotable_schema(text)
    assert none == [] and again == text


def test_run_exit_codes_tell_outcomes_apart():
    from hoh.cli import main
    from hoh.errors import DataAnomaliesError, ExitCode, UsageError
    from hoh.pipeline.cli import run_exit_code
    from hoh.pipeline.telemetry.summary import RunSummary

    refused, pushed = (
        RunSummary(components=[], blessed=False),
        RunSummary(components=[], blessed=True),
    )
    assert run_exit_code(refused, fail_if_not_blessed=False) == ExitCode.OK
    assert run_exit_code(refused, fail_if_not_blessed=True) == ExitCode.NOT_BLESSED == 3
    assert run_exit_code(pushed, fail_if_not_blessed=True) == ExitCode.OK
    # Nothing evaluated (e.g. an earlier step had nothing to do) is not "not blessed".
    assert run_exit_code(RunSummary(components=[]), fail_if_not_blessed=True) == ExitCode.OK
    assert DataAnomaliesError("x").exit_code == 4 and UsageError("x").exit_code == 2
    assert main(["run", "--profile", "tiny", "--config", "x.yaml"]) == ExitCode.USAGE
    assert main(["run", "--profile", "tiny", "--set", "model.alpha=7"]) == ExitCode.USAGE


def _data_config(**data):
    from hoh.config import HohConfig

    return HohConfig.model_validate({"data": data})


def test_class_ids_are_sorted_names_or_the_listed_order():
    found = ["humans", "horses", "birds"]  # the import report's order is not an id order
    assert factory.resolve_classes(_data_config(), found) == ["birds", "horses", "humans"]
    listed = _data_config(classes="horses,humans,birds")  # a class added at the end
    assert factory.resolve_classes(listed, found) == ["horses", "humans", "birds"]
    assert factory.resolve_classes(listed, None) == ["horses", "humans", "birds"]  # gs:// data


@pytest.mark.parametrize(
    "data,found,message",
    [
        ({}, None, r"set data.classes in id order, e.g. --set data.classes=horses,humans"),
        (
            {"classes": ["horses", "humans"]},
            ["horses", "humans", "birds"],
            r"class\(es\) \['birds'\] that data.classes \['horses', 'humans'\] lacks; add them at "
            "the end",
        ),
        (
            {"classes": ["horses", "humans", "birds"]},
            ["horses", "humans"],
            r"data.classes lists \['birds'\], which the span has no images of",
        ),
        ({"num_classes": 3}, ["horses", "humans"], r"data.num_classes=3 but the classes are"),
    ],
)
def test_class_sets_that_would_change_ids_are_refused(data, found, message):
    with pytest.raises(HohError, match=message):
        factory.resolve_classes(_data_config(**data), found)


@pytest.mark.parametrize(
    "classes,message",
    [("horses", "at least 2 classes"), ("a,b,a", r"lists \['a'\] more than once")],
)
def test_data_classes_config_errors(classes, message):
    from hoh.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match=message):
        _data_config(classes=classes)


def test_trainer_refuses_labels_outside_the_classes_and_classes_without_images():
    from hoh.trainer.task import check_label_counts

    assert check_label_counts({"b": 2, "a": 5}, ["a", "b"]) == [5, 2]
    with pytest.raises(HohError, match=r"label\(s\) \['zebra'\] outside the pipeline's classes"):
        check_label_counts({"a": 1, "b": 1, "zebra": 1}, ["a", "b"])
    with pytest.raises(HohError, match=r"class\(es\) \['b'\] of \['a', 'b'\] have no training"):
        check_label_counts({"a": 1}, ["a", "b"])


def test_without_data_classes_a_retrain_keeps_the_served_order_and_appends_new_classes():
    served = ["horses", "humans"]
    found = ["birds", "humans", "horses"]
    # Sorted would give birds id 0 and move horses and humans: the served order is kept.
    assert factory.resolve_classes(_data_config(), found, served) == ["horses", "humans", "birds"]
    assert factory.resolve_classes(_data_config(), found, None) == ["birds", "horses", "humans"]


def test_a_span_without_a_class_the_served_model_knows_is_refused_unless_allowed():
    served = ["horses", "humans", "birds"]
    with pytest.raises(HohError, match=r"knows class\(es\) \['birds'\] that this run would not"):
        factory.resolve_classes(_data_config(), ["horses", "humans"], served)
    allowed = _data_config(allow_class_removal=True)
    assert factory.resolve_classes(allowed, ["horses", "humans"], served) == ["horses", "humans"]


@pytest.mark.parametrize(
    "data,found,served",
    [
        ({}, ["horses", "Horses", "humans"], None),
        ({}, ["horses ", "humans"], ["horses", "humans"]),
        ({"classes": ["horses", "humans"]}, ["HORSES", "humans"], None),
        ({}, ["cafe\u0301", "humans"], ["caf\u00e9", "humans"]),  # macOS NFD vs NFC
    ],
)
def test_one_class_spelt_two_ways_is_refused_naming_both_spellings(data, found, served):
    with pytest.raises(HohError, match=r"differ only in case, spaces or Unicode form"):
        factory.resolve_classes(_data_config(**data), found, served)


def test_data_classes_spelling_one_class_twice_is_a_config_error():
    from hoh.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="differ only in case"):
        load_config(overrides=["data.classes=horses,Horses,humans"])


def test_a_class_without_eval_images_is_refused_and_few_eval_images_are_said():
    lines = []
    report = {
        "span": 3,
        "counts": {"horses": {"train": 40, "eval": 9}, "birds": {"train": 1, "eval": 0}},
    }
    with pytest.raises(HohError, match=r"span 3: class\(es\) \['birds'\] have no eval image"):
        factory.check_eval_images(report, ["horses", "birds"], lines.append)
    report["counts"]["birds"] = {"train": 3, "eval": 2}
    factory.check_eval_images(report, ["horses", "birds"], lines.append)
    assert lines == ["evaluation: per-class recall rests on few eval images (birds 2)"]
