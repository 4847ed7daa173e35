"""`hoh monitor`: captured traffic judged against the model's reference data.

Capture folders are written with the gateway's own `Capturer.write` and `Capture`, so a change of
the capture layout breaks these tests instead of silently emptying every window. The served
results are the known model's real predictions (tests/test_sampling_model.py), the reference is
a demo span imported with `hoh data import`'s code, and the traffic is more images of the same
generator: as is (in distribution), or darkened and rotated (shifted).
"""

from __future__ import annotations

import io
import json
import shutil
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from hoh.components.monitor import prom
from hoh.components.monitor.monitor import run_monitor, served_identity, summary_lines
from hoh.components.monitor.window import read_window, window_dates
from hoh.config import MonitorConfig
from hoh.errors import ExitCode, UsageError
from hoh.serving.gateway.capture import Capture, Capturer

IN_DAY, SHIFT_DAY = date(2026, 12, 1), date(2026, 12, 2)
VERSION = "3"
PER_CLASS_REFERENCE, PER_CLASS_TRAFFIC = 150, 30


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _shift(image: Image.Image) -> Image.Image:
    """A camera gone dark and mounted sideways."""
    return ImageEnhance.Brightness(image.convert("RGB")).enhance(0.45).rotate(90)


class CaptureWriter:
    """Writes captures exactly as the gateway does, with results predicted by `predictor`."""

    def __init__(self, root: Path, predictor, model: str = "hoh", version: str = VERSION):
        self.capturer = Capturer(root, rate=1.0, queue_size=1)
        self.predictor, self.model, self.version = predictor, model, version
        self.requests = 0

    def result(self, image: bytes) -> dict:
        prediction = self.predictor.predict([image])
        if not prediction.ok:
            return {"class": "red", "probability": 0.5, "probabilities": {"red": 0.5, "blue": 0.5}}
        row = prediction.probabilities[0]
        probabilities = {c: float(p) for c, p in zip(self.predictor.class_names, row)}
        best = max(probabilities, key=probabilities.get)
        return {"class": best, "probability": probabilities[best], "probabilities": probabilities}

    def write(self, image: bytes, day: date, result: dict | None = None, **fields) -> Path:
        import hashlib

        self.requests += 1
        when = datetime(
            day.year, day.month, day.day, 12, 0, self.requests % 60, tzinfo=timezone.utc
        )
        capture = Capture(
            fields.get("request_id", f"req{self.requests:05d}"),
            fields.get("index", 0),
            fields.get("model", self.model),
            fields.get("version", self.version),
            image,
            hashlib.sha256(image).hexdigest(),
            result if result is not None else self.result(image),
            when,
        )
        return self.capturer.write(capture)

    def close(self) -> None:
        self.capturer.close()


@pytest.fixture(scope="module")
def served_model(known_model, tmp_path_factory) -> Path:
    """The known model in a Triton repository layout: <repo>/hoh/3/model.savedmodel."""
    version_dir = tmp_path_factory.mktemp("repo") / "hoh" / VERSION
    shutil.copytree(known_model / "Format-Serving", version_dir / "model.savedmodel")
    return version_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory, served_model):
    """(reference data root, capture dir with an in-distribution day and a shifted day)."""
    from hoh.data.demo import make_demo_dataset, render_image
    from hoh.data.importer import import_images
    from hoh.trainer.predictor import Predictor

    root = tmp_path_factory.mktemp("monitor")
    make_demo_dataset(root / "images", per_class=PER_CLASS_REFERENCE, size=64)
    import_images(root / "images", root / "data")
    writer = CaptureWriter(root / "captures", Predictor(served_model, embeddings=False))
    try:
        for cls in ("horses", "humans"):
            for i in range(PER_CLASS_REFERENCE, PER_CLASS_REFERENCE + PER_CLASS_TRAFFIC):
                image = render_image(cls, i, size=64)
                writer.write(_png(image), IN_DAY)
                writer.write(_png(_shift(image)), SHIFT_DAY)
        # The damage a real capture volume sees, on the shifted day: a torn line, a corrupt
        # image with a result, a line from another version, a line that tries to leave its folder.
        broken = writer.write(
            b"\x89PNG\r\n\x1a\n this is not a png",
            SHIFT_DAY,
            result={"class": "red", "probability": 0.9, "probabilities": {"red": 0.9, "blue": 0.1}},
        )
        writer.write(_png(render_image("horses", 1, size=64)), SHIFT_DAY, version="2")
        results = next((broken.parent / ".results").glob("*.jsonl"))
        with open(results, "a", encoding="utf-8") as out:
            out.write('{"time": "2026-12-02T12:00:00", "image": "torn\n')
            out.write(
                json.dumps({"image": "../../etc/passwd", "model": "hoh", "version": VERSION}) + "\n"
            )
    finally:
        writer.close()
    return root / "data", root / "captures", broken.name


def _window(captures: Path, day: date, version: str = VERSION):
    return read_window(captures, day, day, version, "hoh")


# --- the window -----------------------------------------------------------------------------------


def test_window_dates_default_to_the_configured_width_and_refuse_nonsense():
    today = date(2026, 12, 4)
    assert window_dates(None, None, 1, today) == (today, today)
    assert window_dates(None, "2026-12-03", 3, today) == (date(2026, 12, 1), date(2026, 12, 3))
    with pytest.raises(UsageError, match="not a date"):
        window_dates("yesterday", None, 1, today)
    with pytest.raises(UsageError, match="after --until"):
        window_dates("2026-12-04", "2026-12-01", 1, today)


def test_served_identity_comes_from_the_triton_layout_or_must_be_given(served_model, known_model):
    assert served_identity(served_model, None, None) == ("hoh", VERSION)
    assert served_identity(served_model / "model.savedmodel", None, None) == ("hoh", VERSION)
    assert served_identity(served_model, "7", "other") == ("other", "7")
    with pytest.raises(UsageError, match="--version"):
        served_identity(known_model, None, None)
    assert served_identity(known_model, "5", None) == (None, "5")


def test_damaged_captures_are_counted_and_named_never_used(world):
    _, captures, broken = world
    window = _window(captures, SHIFT_DAY)
    counts = window.counts()
    assert counts["served_images"] == 2 * PER_CLASS_TRAFFIC + 1  # the corrupt image is served
    assert counts["bad_lines"] == 2 and counts["other_versions"] == 1
    reasons = [b["reason"] for b in window.bad_lines]
    assert any(r.startswith("not JSON") for r in reasons)
    assert any("bad image name '../../etc/passwd'" in r for r in reasons)
    assert all(b["line"].startswith("date=2026-12-02/.results/results-") for b in window.bad_lines)
    assert window.other_versions == {"hoh:2": 1}
    # The other version's image is named by its line, so it is not "missing a result".
    assert counts["missing_results"] == 0 and counts["missing_images"] == 0
    assert {s.path.name for s in window.served} >= {broken}


def test_missing_and_failed_results_are_counted(tmp_path, world):
    _, captures, _ = world
    day = tmp_path / "captures" / "date=2026-12-01"
    shutil.copytree(captures / "date=2026-12-01", day)
    results = next((day / ".results").glob("*.jsonl"))
    lines = results.read_text().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    (day / second["image"]).unlink()  # a line whose image is gone
    first.pop("probabilities")
    lines[0] = json.dumps(first)  # a result without probabilities
    lines = lines[:-1]  # an image without its line
    results.write_text("\n".join(lines) + "\n")
    window = _window(tmp_path / "captures", IN_DAY)
    assert window.failed == [
        {
            "line": f"date=2026-12-01/.results/{results.name}:1",
            "image": f"date=2026-12-01/{first['image']}",
            "reason": "no class/probabilities in the result",
        }
    ]
    assert [m["image"] for m in window.missing_images] == [f"date=2026-12-01/{second['image']}"]
    assert len(window.missing_results) == 1
    assert len(window.served) == 2 * PER_CLASS_TRAFFIC - 3


def test_a_missing_capture_dir_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_window(tmp_path / "nope", IN_DAY, IN_DAY, VERSION)


# --- verdicts -------------------------------------------------------------------------------------


def _prom(out: Path) -> dict[str, float]:
    """The textfile as node_exporter reads it: parsed by prometheus_client's own parser, every
    family typed gauge and documented."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families((out / "hoh_monitor.prom").read_text()):
        assert family.type == "gauge" and family.documentation
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@pytest.fixture(scope="module")
def in_distribution(world, served_model, tmp_path_factory):
    data, captures, _ = world
    out = tmp_path_factory.mktemp("monitor_ok")
    return run_monitor(_window(captures, IN_DAY), str(served_model), str(data), out), out


@pytest.fixture(scope="module")
def shifted(world, served_model, tmp_path_factory):
    data, captures, _ = world
    out = tmp_path_factory.mktemp("monitor_shift")
    config = MonitorConfig(label_k=10)
    return run_monitor(_window(captures, SHIFT_DAY), str(served_model), str(data), out, config), out


def test_in_distribution_traffic_is_ok(in_distribution):
    summary, out = in_distribution
    assert summary["verdict"] == "ok" and summary["reasons"] == []
    assert summary["input_drift"]["drift_detected"] is False
    assert summary["prediction_drift"]["drift_detected"] is False
    assert summary["counts"]["served_images"] == 2 * PER_CLASS_TRAFFIC
    assert summary["label_batch"] is None and not (out / "label_batch").exists()
    assert any("no push-time record" in n for n in summary["notes"])
    assert json.loads((out / "summary.json").read_text())["verdict"] == "ok"
    for report, column in (
        ("input_drift/report.html", "brightness"),
        ("prediction_drift.html", "confidence"),
    ):
        html = (out / report).read_text()
        assert len(html) > 10_000 and column in html
    recorded = json.loads((out / "reference_predictions.json").read_text())
    assert recorded["model_version"] == VERSION
    assert len(recorded["predictions"]) == summary["prediction_drift"]["reference"]["images"] > 0
    metrics = _prom(out)
    assert metrics['hoh_monitor_verdict{model="hoh",verdict="ok",version="3"}'] == 1
    assert metrics['hoh_monitor_verdict{model="hoh",verdict="drift",version="3"}'] == 0
    assert metrics['hoh_monitor_images{model="hoh",side="served",version="3"}'] == 60
    served_mean = summary["prediction_drift"]["served"]["mean_confidence"]
    key = 'hoh_monitor_mean_confidence{model="hoh",side="served",version="3"}'
    assert metrics[key] == pytest.approx(served_mean, abs=1e-5)


def test_shifted_traffic_is_flagged_named_and_becomes_a_labelling_batch(shifted, world):
    summary, out = shifted
    assert summary["verdict"] == "drift"
    drifted = set(summary["input_drift"]["drifted"])
    assert {"brightness", "mean_r", "mean_g", "mean_b"} <= drifted
    assert any("descriptors drifted" in r and "brightness" in r for r in summary["reasons"])
    assert summary["prediction_drift"]["drift_detected"] is True
    served, reference = (
        summary["prediction_drift"]["served"],
        summary["prediction_drift"]["reference"],
    )
    assert served["mean_confidence"] < reference["mean_confidence"]  # darker: flatter softmax
    # Damage is counted and named, and the corrupt image is skipped by the drift check.
    counts = summary["counts"]
    assert (counts["bad_lines"], counts["other_versions"], counts["undecodable"]) == (2, 1, 1)
    assert summary["input_drift"]["skipped"][0]["source"].endswith(world[2])
    assert any("hoh:2: 1" in n for n in summary["notes"])
    # The labelling batch: the sampler's own files, k least certain captures.
    batch = out / "label_batch"
    tasks = json.loads((batch / "label_studio.json").read_text())
    assert summary["label_batch"]["selected"] == len(tasks) == 10
    assert all(t["data"]["source"].startswith(str(world[1])) for t in tasks)
    assert (batch / "label_config.xml").is_file() and len(list((batch / "images").iterdir())) == 10
    metrics = _prom(out)
    assert metrics['hoh_monitor_verdict{model="hoh",verdict="drift",version="3"}'] == 1
    assert metrics['hoh_monitor_drift_detected{model="hoh",version="3"}'] == 1
    assert metrics['hoh_monitor_problems{kind="bad_lines",model="hoh",version="3"}'] == 2
    assert metrics['hoh_monitor_input_drift_share{model="hoh",version="3"}'] >= 0.25
    lines = summary_lines(summary)
    assert lines[0].startswith("monitor: DRIFT") and any("labelling batch: 10" in x for x in lines)


def test_persisting_drift_starts_one_retraining_run_within_the_cooldown(
    shifted, world, served_model, tmp_path
):
    """monitor.on_alert local: the shifted window fires the trigger; the next window (the
    drift still there, two hours later) is inside the cooldown and starts nothing."""
    data, captures, _ = world
    _, first_out = shifted
    started = []
    config = MonitorConfig(
        on_alert="local", trigger_args=["--data", "data"], label_batch=False, cooldown_hours=12
    )

    def run(name: str, now: float) -> dict:
        return run_monitor(
            _window(captures, SHIFT_DAY),
            str(served_model),
            str(data),
            tmp_path / name,
            config,
            reference_predictions=str(first_out / "reference_predictions.json"),
            now=now,
            launcher=lambda argv, log, wait: started.append(argv) or {"pid": 99},
        )

    first = run("first", 1_796_256_000.0)
    assert first["trigger"]["fired"] and first["trigger"]["why"] == ["drift"]
    assert started == [first["trigger"]["command"]] and started[0][-3:] == ["run", "--data", "data"]
    state = json.loads((tmp_path / "monitor-trigger.json").read_text())
    assert state["fired"][0]["reasons"] == first["reasons"]
    second = run("second", 1_796_256_000.0 + 7200)
    assert second["verdict"] == "drift" and not second["trigger"]["fired"]
    assert second["trigger"]["skipped"].startswith("cooldown: fired at 2026-12-03T00:00:00")
    assert len(started) == 1
    assert any("retraining not started: cooldown" in x for x in summary_lines(second))


def test_an_empty_window_is_insufficient_data_not_ok(world, served_model, tmp_path):
    data, captures, _ = world
    window = read_window(captures, date(2026, 11, 1), date(2026, 11, 30), VERSION, "hoh")
    summary = run_monitor(window, str(served_model), str(data), tmp_path)
    assert summary["verdict"] == "insufficient_data" and summary["counts"]["served_images"] == 0
    assert "0 usable served image(s)" in summary["reasons"][0]
    assert summary["label_batch"] is None
    assert (
        _prom(tmp_path)['hoh_monitor_verdict{model="hoh",verdict="insufficient_data",version="3"}']
        == 1
    )


def test_captures_of_another_version_are_named_and_never_mixed(world, served_model, tmp_path):
    data, captures, _ = world
    window = read_window(captures, IN_DAY, SHIFT_DAY, "9", "hoh")
    summary = run_monitor(
        window, str(served_model), str(data), tmp_path, MonitorConfig(label_batch=False)
    )
    assert summary["verdict"] == "insufficient_data" and summary["counts"]["served_images"] == 0
    assert summary["problems"]["other_versions"] == {"hoh:2": 1, "hoh:3": 4 * PER_CLASS_TRAFFIC + 1}
    assert "monitor them with their own model" in summary["notes"][0]


def test_a_window_of_failed_results_is_insufficient_data(world, served_model, tmp_path):
    data, _, _ = world
    writer = CaptureWriter(tmp_path / "captures", predictor=None)
    try:
        for i in range(5):
            writer.write(_png(Image.new("RGB", (8, 8))), IN_DAY, result={"error": "triton timeout"})
    finally:
        writer.close()
    window = _window(tmp_path / "captures", IN_DAY)
    summary = run_monitor(window, str(served_model), str(data), tmp_path / "out")
    assert summary["verdict"] == "insufficient_data" and summary["counts"]["failed_results"] == 5
    assert summary["problems"]["failed_results"][0]["reason"] == "triton timeout"


# --- Prometheus textfile, CLI -----------------------------------------------------------------


def test_prometheus_labels_are_escaped_and_missing_values_left_out():
    text = prom.render(
        [
            ("hoh_monitor_images", {"model": 'a"b\\c\nd', "side": "served"}, 3),
            ("hoh_monitor_embedding_mmd", {"model": "m"}, None),
        ]
    )
    assert 'hoh_monitor_images{model="a\\"b\\\\c\\nd",side="served"} 3.0' in text.splitlines()
    assert "mmd" not in text and "# TYPE hoh_monitor_images gauge" in text
    stamp = prom.render([("hoh_monitor_last_run_timestamp_seconds", {}, 1796256123.25)])
    assert stamp.splitlines()[-1] == "hoh_monitor_last_run_timestamp_seconds 1796256123.25"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--capture", "{tmp}/absent"], "does not exist"),
        (["--since", "2026-13-01"], "not a date"),
        (["--model", "{tmp}"], "give the served version with --version"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, served_model, world, capsys):
    from hoh.cli import main

    data, captures, _ = world
    args = {"--capture": str(captures), "--model": str(served_model), "--reference": str(data)}
    extra = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    flat = [x for pair in args.items() for x in pair]
    code = main(["monitor", *flat, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.USAGE and needle in err and "\n" not in err


def test_cli_fails_on_drift_and_writes_the_textfile_dir(world, served_model, tmp_path, capsys):
    from hoh.cli import main

    data, captures, _ = world
    code = main(
        [
            "monitor",
            "--capture", str(captures),
            "--since", str(SHIFT_DAY),
            "--until", str(SHIFT_DAY),
            "--model", str(served_model),
            "--reference", str(data),
            "--out", str(tmp_path / "out"),
            "--textfile-dir", str(tmp_path / "textfiles"),
            "--no-label-batch",
            "--fail-on-drift",
        ]
    )  # fmt: skip
    assert code == ExitCode.DRIFT_DETECTED
    assert "monitor: DRIFT" in capsys.readouterr().out
    assert (tmp_path / "textfiles" / "hoh_monitor.prom").read_text() == (
        tmp_path / "out" / "hoh_monitor.prom"
    ).read_text()
    assert not (tmp_path / "out" / "label_batch").exists()


def test_the_labelling_batch_comes_back_as_a_new_span(shifted, world, tmp_path):
    """capture -> monitor -> Label Studio -> `hoh labels` -> `hoh data import`: the loop closes
    with the sampler's and the importer's own code, on the batch the monitor wrote."""
    from hoh import features
    from hoh.components.sampling.labelstudio import write_labeled
    from hoh.data.importer import import_images
    from hoh.data.sources import span_source

    _, out = shifted
    tasks = json.loads((out / "label_batch" / "label_studio.json").read_text())
    for i, task in enumerate(tasks):  # what an annotator's export holds
        choice = {"choices": ["horses" if i % 2 else "humans"]}
        result = {"type": "choices", "from_name": "choice", "to_name": "image", "value": choice}
        task["annotations"] = [{"result": [result]}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    labeled = write_labeled(export, out / "label_batch", tmp_path / "labeled")
    assert labeled.copied == {"horses": 5, "humans": 5} and labeled.unlabeled == 0
    data = world[0]
    shutil.copytree(data, tmp_path / "data")
    import_images(tmp_path / "labeled", tmp_path / "data")
    assert features.list_spans(tmp_path / "data") == [1, 2]
    span = span_source(tmp_path / "data", 2, features.SPLITS)
    assert sorted(r.label for r in span) == ["horses"] * 5 + ["humans"] * 5


def test_recorded_reference_predictions_are_reused_and_other_versions_refused(
    in_distribution, world, served_model, tmp_path
):
    from hoh.components.monitor.predictions import read_record

    first, out = in_distribution
    recorded = out / "reference_predictions.json"
    data, captures, _ = world
    again = run_monitor(
        _window(captures, IN_DAY),
        str(served_model),
        str(data),
        tmp_path / "again",
        MonitorConfig(label_batch=False),
        reference_predictions=str(recorded),
    )
    assert again["prediction_drift"]["reference"] == first["prediction_drift"]["reference"]
    assert again["prediction_drift"]["reference_origin"]["recorded"] == str(recorded)
    assert not any("no push-time record" in n for n in again["notes"])
    assert not (tmp_path / "again" / "reference_predictions.json").exists()
    with pytest.raises(UsageError, match="model version '3', not '4'"):
        read_record(recorded, "4")
    (tmp_path / "torn.json").write_text('{"predictions": [')
    with pytest.raises(UsageError, match="unreadable"):
        read_record(tmp_path / "torn.json", "3")


def test_cli_refuses_an_output_directory_that_is_not_empty(world, served_model, tmp_path, capsys):
    from hoh.cli import main

    data, captures, _ = world
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{}")
    argv = ["monitor", "--capture", str(captures), "--model", str(served_model)]
    code = main([*argv, "--reference", str(data), "--out", str(tmp_path / "out")])
    assert code == ExitCode.USAGE and "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "summary.json").read_text() == "{}"


def test_a_small_window_is_insufficient_data_but_still_labelled(served_model, world, tmp_path):
    """Too few images to test, but each one is worth a look: they become the batch."""
    from hoh.data.demo import render_image
    from hoh.trainer.predictor import Predictor

    writer = CaptureWriter(tmp_path / "captures", Predictor(served_model, embeddings=False))
    try:
        paths = [writer.write(_png(render_image("horses", i, size=64)), IN_DAY) for i in range(3)]
    finally:
        writer.close()
    results = next((tmp_path / "captures" / "date=2026-12-01" / ".results").glob("*.jsonl"))
    with open(results, "a", encoding="utf-8") as out:  # a replayed line must not count twice
        out.write(results.read_text().splitlines()[0] + "\n")
    window = _window(tmp_path / "captures", IN_DAY)
    assert len(window.served) == 3 and window.bad_lines[0]["reason"].startswith("a second line")
    summary = run_monitor(window, str(served_model), str(world[0]), tmp_path / "out")
    assert summary["verdict"] == "insufficient_data" and summary["input_drift"] is None
    assert summary["label_batch"]["selected"] == 3
    tasks = json.loads((tmp_path / "out" / "label_batch" / "label_studio.json").read_text())
    assert sorted(t["data"]["source"] for t in tasks) == sorted(str(p) for p in paths)
