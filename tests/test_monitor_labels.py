"""Online accuracy from Label Studio: the labelling batch a monitor run writes, labelled and
exported, counts for the accuracy of the window its captures belong to.

Everything is real: captures written by the gateway's `Capturer`, batches written by
`run_monitor` with the sampler and the known model (tests/test_sampling_model.py), the export
made from those batches as Label Studio's JSON export holds them, feedback through the
gateway's `FeedbackStore`, and figures checked against values worked out by hand.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from test_monitor import CaptureWriter
from test_monitor_feedback import _rid, feed_back
from test_sampling_model import solid_png

from hoh.cli import main
from hoh.components.monitor.accuracy import (
    online_accuracy,
    read_label_studio,
    true_classes,
    window_labels,
)
from hoh.components.monitor.monitor import run_monitor, summary_lines
from hoh.components.monitor.window import read_window
from hoh.config import MonitorConfig
from hoh.errors import ExitCode, UsageError

DAY, OTHER_DAY = date(2026, 12, 1), date(2026, 12, 2)
VERSION = "3"
# (request, index, served class) of the window's captures; OTHER_DAY has requests 7 and 8.
SERVED = [
    (1, 0, "red"),
    (1, 1, "red"),
    (2, 0, "green"),
    (3, 0, "green"),
    (4, 0, "blue"),
    (5, 0, "blue"),
    (6, 0, "red"),
]
# What the annotator chose (None: not labelled yet). Image (1, 1) and request 6 are wrong;
# request 4 is labelled red in Label Studio but fed back as blue, and the feedback wins.
STUDIO = {(1, 0): "red", (1, 1): "green", (2, 0): "green", (3, 0): None, (4, 0): "red"}
STUDIO |= {(5, 0): "blue", (6, 0): "blue", (7, 0): "red", (8, 0): "red"}
SERVED_CLASSES = ("blue", "green", "red")  # the known model's
FEEDBACK = [(_rid(3), 0, "green"), (_rid(4), 0, "blue"), (_rid(9), 0, "red")]


def _choice(label: str, cancelled: bool = False) -> dict:
    result = {"type": "choices", "from_name": "choice", "to_name": "image"}
    return {"was_cancelled": cancelled, "result": [{**result, "value": {"choices": [label]}}]}


def _batch(writer, captures: Path, day: date, rows, model: Path, out: Path) -> list[dict]:
    """Capture `rows` on `day` and let a monitor run (too few images: insufficient data) write
    them as its labelling batch; its Label Studio tasks."""
    for n, (request, index, served) in enumerate(rows):
        colour = [(40 * n + 30 * day.day) % 256, 90, 160]
        result = {"class": served, "probability": 0.5}
        result["probabilities"] = {c: (0.5 if c == served else 0.25) for c in SERVED_CLASSES}
        writer.write(solid_png(colour), day, result, request_id=_rid(request), index=index)
    (out.parent / "reference").mkdir(exist_ok=True)
    window = read_window(captures, day, day, VERSION, "hoh")
    summary = run_monitor(
        window, str(model), str(out.parent / "reference"), out, MonitorConfig(workspace=None)
    )
    assert summary["verdict"] == "insufficient_data"
    assert summary["label_batch"]["selected"] == len(rows)
    return json.loads((out / "label_batch" / "label_studio.json").read_text())


@pytest.fixture(scope="module")
def labelled(known_model, tmp_path_factory) -> tuple[Path, Path]:
    """(capture dir, Label Studio export) as described by SERVED, STUDIO and FEEDBACK; the
    export also holds a task of a `hoh sample` batch (no capture) and one with a bad index."""
    root = tmp_path_factory.mktemp("labels")
    writer = CaptureWriter(root / "captures", predictor=None, version=VERSION)
    try:
        tasks = _batch(writer, root / "captures", DAY, SERVED, known_model, root / "day1")
        other = [(7, 0, "red"), (8, 0, "red")]
        tasks += _batch(writer, root / "captures", OTHER_DAY, other, known_model, root / "day2")
    finally:
        writer.close()
    for task in tasks:
        key = (task["data"]["hoh_request_id"], task["data"]["hoh_index"])
        # The batch names the capture exactly: the image the gateway kept for that request.
        assert Path(task["data"]["source"]).name == f"{key[0]}-{key[1]}.png"
        label = STUDIO[(int(key[0], 16), key[1])]
        task["annotations"] = [] if label is None else [_choice(label)]
        task["annotations"] += [_choice("green", cancelled=True)]  # skipped, never counted
    sampled = {"data": {"image": "/x/a.png", "hoh_file": "images/00001-a.png"}}
    malformed = json.loads(json.dumps(tasks[2]))
    malformed["data"]["hoh_index"] = "one"
    tasks += [{**sampled, "annotations": [_choice("red")]}, malformed]
    export = root / "export.json"
    export.write_text(json.dumps(tasks), encoding="utf-8")
    feed_back(root / "captures", FEEDBACK)
    return root / "captures", export


def test_label_studio_labels_give_the_hand_computed_online_accuracy(labelled, tmp_path):
    captures, export = labelled
    window = read_window(captures, DAY, DAY, VERSION, "hoh")
    config = MonitorConfig(
        label_exports=[str(export)], label_batch=False, workspace=None, min_feedback=5
    )
    (tmp_path / "reference").mkdir()
    summary = run_monitor(
        window, "no-model-needed", str(tmp_path / "reference"), tmp_path / "o", config
    )
    result = summary["online_accuracy"]
    # Labels: (1,0) red ok, (1,1) green wrong, (2,0) green ok, (3,0) green ok (feedback),
    # (4,0) blue ok (feedback over Label Studio's red), (5,0) blue ok, (6,0) blue wrong.
    assert (result["labels"], result["correct"]) == (7, 5)
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["sources"] == {"feedback": 2, "label_studio": 5}
    assert result["confusion_matrix"]["rows_true_columns_served"] == {
        "blue": {"blue": 2, "green": 0, "red": 1},
        "green": {"blue": 0, "green": 2, "red": 1},
        "red": {"blue": 0, "green": 0, "red": 1},
    }
    assert result["per_class"]["red"] == {"precision": 1 / 3, "recall": 1.0, "support": 1}
    assert result["per_class"]["green"] == {"precision": 1.0, "recall": 2 / 3, "support": 3}
    assert result["per_class"]["blue"] == {"precision": 1.0, "recall": 2 / 3, "support": 3}
    # 8 Label Studio capture labels + feedback for requests 3 and 9: 10 images, 3 elsewhere.
    assert (result["labelled_images"], result["unmatched"]) == (10, 3)
    studio = result["label_studio"]
    assert studio["files"] == [str(export)]
    assert (studio["labelled_tasks"], studio["unlabeled_tasks"]) == (10, 1)
    assert (studio["capture_labels"], studio["unmatched"]) == (8, 2)  # requests 7 and 8
    assert (studio["not_captures"], studio["overruled_by_feedback"]) == (1, 1)
    assert studio["bad_task_count"] == 1 and "index must be" in studio["bad_tasks"][0]["reason"]
    assert summary["verdict"] == "accuracy_low"
    assert summary["reasons"][-1] == (
        "online accuracy 71.4% on 7 labels (2 fed back, 5 from Label Studio) is below "
        "monitor.min_accuracy=80%"
    )
    # The dashboard's served snapshot gets the same merged labels, image by image.
    truths = true_classes(window, window_labels(window, read_label_studio([export], "choice"))[0])
    by_key = dict(zip((s.key for s in window.served), truths))
    assert by_key == {
        (_rid(r), i): t
        for r, i, t in [(1, 0, "red"), (1, 1, "green"), (2, 0, "green"), (3, 0, "green")]
        + [(4, 0, "blue"), (5, 0, "blue"), (6, 0, "blue")]
    }
    line = next(x for x in summary_lines(summary) if "online accuracy:" in x)
    assert "Label Studio tasks left out: 2 for captures outside this window" in line
    assert "1 for images that are not captures" in line and "1 malformed" in line


def test_the_cli_takes_exports_and_names_a_bad_one(labelled, tmp_path, capsys):
    captures, export = labelled
    (tmp_path / "reference").mkdir()
    argv = ["monitor", "--capture", str(captures), "--since", str(DAY), "--until", str(DAY)]
    argv += ["--model", "any", "--version", VERSION, "--served-model", "hoh", "--no-workspace"]
    argv += ["--reference", str(tmp_path / "reference"), "--no-label-batch"]
    assert main([*argv, "--out", str(tmp_path / "ok"), "--labels", str(export)]) == ExitCode.OK
    saved = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert saved["online_accuracy"]["accuracy"] == pytest.approx(5 / 7)
    capsys.readouterr()
    for name, text in [("torn.json", '[{"data": '), ("object.json", '{"tasks": []}')]:
        (tmp_path / name).write_text(text)
        out = tmp_path / f"out-{name}"
        code = main(
            [*argv, "--out", str(out), "--labels", str(export), "--labels", str(tmp_path / name)]
        )
        err = capsys.readouterr().err.strip()
        assert code == ExitCode.USAGE and str(tmp_path / name) in err and "\n" not in err
        assert not out.exists()  # refused before any work
    assert "JSON list of tasks" in err


@pytest.mark.parametrize(
    "text, needle",
    [
        (None, "cannot read it"),
        ("", "cannot read it"),
        ('[{"data": {}}, 7]', "task 2 is not a JSON object"),
        ('[{"data": [1]}]', "task 1 has no 'data' object"),
    ],
)
def test_an_unreadable_export_is_an_error_naming_the_file(tmp_path, text, needle):
    path = tmp_path / "export.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=needle) as error:
        read_label_studio([path], "choice")
    assert str(path) in str(error.value)


def test_an_export_of_another_window_is_counted_not_used(labelled, tmp_path):
    captures, export = labelled
    others = {_rid(7), _rid(8)}
    tasks = [t for t in json.loads(export.read_text()) if t["data"].get("hoh_request_id") in others]
    (tmp_path / "other.json").write_text(json.dumps(tasks))
    window = read_window(captures, DAY, DAY, VERSION, "hoh")
    studio = read_label_studio([tmp_path / "other.json"], "choice")
    result = online_accuracy(window, 0.8, 1, studio)
    assert result["sources"] == {"feedback": 2, "label_studio": 0}  # requests 3 and 4
    assert result["label_studio"]["capture_labels"] == result["label_studio"]["unmatched"] == 2
