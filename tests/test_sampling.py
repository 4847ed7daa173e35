"""Active-learning sampling: exact picks per strategy, diversity, Label Studio files, bad images,
the CLI, and the feedback path back into `hoh data import`."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from test_sampling_model import CLASSES, known_probabilities, solid_png

from hoh.components.sampling import scoring

# --- pure scoring ---------------------------------------------------------------------------------


def test_scores_match_their_definitions():
    p = np.array([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05], [0.45, 0.45, 0.1]])
    np.testing.assert_allclose(scoring.least_confidence(p), [0.5, 2 / 3, 0.1, 0.55])
    np.testing.assert_allclose(scoring.margin(p), [0.8, 1.0, 0.15, 1.0])
    by_hand = [-sum(x * np.log(x) for x in row) / np.log(3) for row in p]
    np.testing.assert_allclose(scoring.entropy(p), by_hand)
    assert scoring.entropy(p)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown strategy"):
        scoring.uncertainty(p, "random")


def test_two_class_strategies_rank_alike():
    rng = np.random.default_rng(0)
    positive = rng.random(50)
    p = np.stack([1 - positive, positive], axis=1)
    orders = {
        s: scoring.top_indices(list(scoring.uncertainty(p, s)), 10) for s in scoring.STRATEGIES
    }
    assert orders["least_confidence"] == orders["margin"] == orders["entropy"]


def test_streaming_top_k_equals_sorting_with_stable_ties():
    rng = np.random.default_rng(1)
    scores = list(np.round(rng.random(300), 2))  # many ties
    top = scoring.TopK(17)
    for position, score in enumerate(scores):
        top.push(score, position, None)
    assert [position for _, position, _ in top.items()] == scoring.top_indices(scores, 17)


def test_k_center_greedy_takes_one_of_each_near_duplicate_group():
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    points = np.concatenate([c + rng.normal(0, 0.01, (5, 2)) for c in centres])  # 4 groups of 5
    picked = scoring.k_center_greedy(points, 4)
    assert sorted(i // 5 for i in picked) == [0, 1, 2, 3]
    assert picked[0] == 0


def test_diversity_replaces_duplicates_of_the_most_uncertain_image():
    scores = [0.99, 0.98, 0.97, 0.96, 0.5, 0.4, 0.3, 0.2]
    embeddings = np.array([[0, 0]] * 4 + [[1, 0], [0, 1], [5, 5], [9, 9]], dtype=float)
    assert scoring.select(scores, 3) == [0, 1, 2]  # three copies of one image
    diverse = scoring.select(scores, 3, embeddings, candidates=8)
    assert diverse[0] == 0 and len({tuple(embeddings[i]) for i in diverse}) == 3


# --- a pool of solid colours scored by the known model -------------------------------------------

K = 6
STRATEGIES = scoring.STRATEGIES


def _colours() -> np.ndarray:
    rng = np.random.default_rng(7)
    colours = rng.integers(0, 256, (30, 3))
    near_grey = [
        [128, 128, 128],
        [129, 128, 128],
        [128, 129, 128],
        [128, 128, 129],
    ]  # near-duplicates
    return np.concatenate([colours, near_grey]).astype(np.uint8)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """pool/c_XX.png, a truncated PNG and a text file; returns the folder and colour per file."""
    from hoh.data.images import content_id

    root = tmp_path_factory.mktemp("pool")
    by_id = {}
    for i, colour in enumerate(_colours()):
        data = solid_png(colour)
        (root / f"c_{i:02d}.png").write_bytes(data)
        by_id[content_id(data)] = colour
    (root / "broken.png").write_bytes(solid_png((1, 2, 3))[:30])
    (root / "notes.txt").write_text("not an image")
    return root, by_id


def _expected(by_id: dict[str, np.ndarray], strategy: str, k: int) -> list[str]:
    """The k most uncertain ids, computed here from the definitions, not with scoring.py."""
    ids = list(by_id)
    p = known_probabilities(np.stack([by_id[i] for i in ids]))
    top2 = np.sort(p, axis=1)[:, -2:]
    score = {
        "least_confidence": 1 - p.max(axis=1),
        "margin": 1 - (top2[:, 1] - top2[:, 0]),
        "entropy": -(p * np.log(p)).sum(axis=1) / np.log(3),
    }[strategy]
    return [ids[i] for i in np.argsort(-score, kind="stable")[:k]]


def _sample(pool_dir: Path, model_dir: Path, out: Path, **settings):
    from hoh.components.sampling.sample import SamplingSettings, sample_pool
    from hoh.data.sources import resolve_path
    from hoh.trainer.predictor import Predictor

    settings = SamplingSettings(**{"k": K, **settings})
    return sample_pool(
        resolve_path(pool_dir, ("pool",), "pool"),
        Predictor(model_dir, settings.diversity),
        str(out),
        settings,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_picks_are_exactly_the_most_uncertain_images(pool, known_model, tmp_path, strategy):
    pool_dir, by_id = pool
    summary = _sample(pool_dir, known_model, tmp_path, strategy=strategy, diversity=False)
    rows = [json.loads(line) for line in (tmp_path / "selected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == _expected(by_id, strategy, K)
    assert summary["selected"] == K and summary["scored"] == len(by_id) and not summary["diversity"]
    for row in rows:
        expected = known_probabilities(by_id[row["id"]][None])[0]
        assert [row["probabilities"][c] for c in CLASSES] == pytest.approx(expected, abs=1e-5)
        assert row["predicted"] == CLASSES[int(np.argmax(expected))]
        assert (tmp_path / row["file"]).read_bytes() == solid_png(by_id[row["id"]])


def test_the_strategies_disagree_on_three_classes(pool):
    _, by_id = pool
    picks = {s: tuple(_expected(by_id, s, K)) for s in STRATEGIES}
    assert len(set(picks.values())) > 1, "the pool must tell the strategies apart"


def test_corrupt_pool_images_are_reported_and_skipped(pool, known_model, tmp_path):
    pool_dir, by_id = pool
    summary = _sample(pool_dir, known_model, tmp_path, diversity=False)
    skipped = {Path(s["source"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"broken.png", "notes.txt"}
    assert all("cannot decode" in reason for reason in skipped.values())
    assert summary["selected"] == K


def test_diversity_keeps_one_of_the_near_duplicate_greys(pool, known_model, tmp_path):
    pool_dir, by_id = pool
    plain = _sample(pool_dir, known_model, tmp_path / "plain", strategy="entropy", diversity=False)
    diverse = _sample(
        pool_dir, known_model, tmp_path / "diverse", strategy="entropy", diversity=True
    )
    assert diverse["diversity"] and diverse["candidates"] == 5 * K

    def greys(out: Path) -> int:
        rows = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
        return sum(int(np.ptp(by_id[r["id"]].astype(int)) <= 1) for r in rows)

    assert plain["selected"] == diverse["selected"] == K
    assert greys(tmp_path / "plain") == 4  # the four near-identical greys are the most uncertain
    assert greys(tmp_path / "diverse") == 1


def test_output_files_and_label_studio_tasks(pool, known_model, tmp_path):
    pool_dir, by_id = pool
    _sample(
        pool_dir,
        known_model,
        tmp_path,
        diversity=False,
        from_name="label",
        to_name="photo",
        url_prefix="http://files.example/",
    )
    tasks = json.loads((tmp_path / "label_studio.json").read_text())
    assert isinstance(tasks, list) and len(tasks) == K
    for task in tasks:
        assert task["data"]["image"].startswith("http://files.example/images/")
        assert (tmp_path / task["data"]["hoh_file"]).is_file() and task["data"]["hoh_id"] in by_id
        (prediction,) = task["predictions"]
        assert isinstance(prediction["model_version"], str) and 0.0 <= prediction["score"] <= 1.0
        (result,) = prediction["result"]
        assert result["from_name"] == "label" and result["to_name"] == "photo"
        assert result["type"] == "choices" and result["value"]["choices"][0] in CLASSES
    config = ET.fromstring((tmp_path / "label_config.xml").read_text())
    assert (
        config.find("Image").get("name") == "photo"
        and config.find("Image").get("value") == "$image"
    )
    choices = config.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "photo"
    assert [c.get("value") for c in choices] == list(CLASSES)

    with open(tmp_path / "selected.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == K and [int(r["rank"]) for r in table] == list(range(1, K + 1))
    assert {f"p_{c}" for c in CLASSES} <= set(table[0])
    sheet = (tmp_path / "contact_sheet.html").read_text()
    assert sheet.count("<figure") == K and sheet.count("data:image/jpeg;base64,") == K
    assert json.loads((tmp_path / "summary.json").read_text())["selected"] == K


def test_image_urls_can_name_the_sample_directory(pool, known_model, tmp_path):
    _sample(
        pool[0],
        known_model,
        tmp_path,
        k=2,
        diversity=False,
        url_prefix="/data/local-files/?d={out_dir}/",
    )
    tasks = json.loads((tmp_path / "label_studio.json").read_text())
    assert (
        tasks[0]["data"]["image"]
        == f"/data/local-files/?d={str(tmp_path)[1:]}/{tasks[0]['data']['hoh_file']}"
    )


def test_already_labeled_images_are_not_proposed(pool, known_model, tmp_path):
    from hoh.components.sampling.sample import SamplingSettings, sample_pool
    from hoh.data.sources import resolve_path
    from hoh.trainer.predictor import Predictor

    pool_dir, by_id = pool
    first = _expected(by_id, "margin", 1)[0]
    summary = sample_pool(
        resolve_path(pool_dir, ("pool",), "pool"),
        Predictor(known_model, False),
        str(tmp_path),
        SamplingSettings(k=K, diversity=False),
        exclude_ids=frozenset({first}),
    )
    rows = [json.loads(line) for line in (tmp_path / "selected.jsonl").read_text().splitlines()]
    assert first not in {r["id"] for r in rows} and summary["excluded_labeled"] == 1


def test_a_tfrecord_pool_with_a_corrupt_record(tmp_path, known_model):
    """The pool as `hoh data import --unlabeled` lays it out, plus one record with bad bytes."""
    import tensorflow as tf

    from hoh.data.tfrecords import ShardedWriter, serialize_example

    writer = ShardedWriter(tf, tmp_path / "pool-root" / "span-1" / "pool")
    for i, colour in enumerate(_colours()[:10]):
        writer.write(
            serialize_example(tf, solid_png(colour), f"{i:064x}", f"img/{i}.png", None, 20, 20)
        )
    writer.write(serialize_example(tf, b"\x89PNG garbage", "f" * 64, "img/bad.png", None, 20, 20))
    writer.close()
    summary = _sample(tmp_path / "pool-root", known_model, tmp_path / "out", k=3)
    assert summary["scored"] == 10 and summary["selected"] == 3
    assert [s["source"] for s in summary["skipped"]] == ["img/bad.png"]
    assert "span 1" in summary["pool"] or "span-1" in summary["pool"]


def test_model_choice_follows_the_blessing():
    from hoh.components.sampling.component import choose_model

    assert choose_model(True, "cur", "base") == ("cur", "current")
    assert choose_model(None, "cur", None) == ("cur", "current")
    assert choose_model(False, "cur", "base") == ("base", "baseline")
    assert choose_model(False, "cur", None) == (None, "none")


# --- the command line and the way back from Label Studio -----------------------------------------


def test_cli_sample_then_labels_then_import_as_a_new_span(pool, known_model, tmp_path, capsys):
    from hoh.cli import main
    from hoh.data.importer import import_images

    pool_dir, by_id = pool
    out = tmp_path / "batch"
    assert (
        main(
            [
                "sample",
                "--model",
                str(known_model),
                "--pool",
                str(pool_dir),
                "--k",
                "8",
                "--out",
                str(out),
                "--strategy",
                "entropy",
            ]
        )
        == 0
    )
    tasks = json.loads((out / "label_studio.json").read_text())
    assert len(tasks) == 8
    # What Label Studio exports after a person labelled six tasks, cancelled one and left one.
    for i, task in enumerate(tasks):
        task["id"] = i + 1
        choice = {
            "from_name": "choice",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": ["warm" if i % 2 else "cool"]},
        }
        task["annotations"] = [] if i == 7 else [{"result": [choice], "was_cancelled": i == 6}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    src = tmp_path / "labeled"
    assert main(["labels", str(export), "--sample", str(out), "--out", str(src)]) == 0
    assert sorted(p.parent.name for p in src.rglob("*.png")) == ["cool"] * 3 + ["warm"] * 3
    assert main(["labels", str(export), "--sample", str(out), "--out", str(src)]) == 0  # idempotent
    assert len(list(src.rglob("*.png"))) == 6
    assert "left alone: 6" in capsys.readouterr().out

    report = import_images(src, tmp_path / "data")
    assert report.span == 1 and report.written == 6 and report.classes == ["cool", "warm"]


def test_cli_refuses_a_non_empty_output_and_bad_labels(tmp_path, known_model, pool, capsys):
    from hoh.cli import main
    from hoh.components.sampling.labelstudio import labels_from_export
    from hoh.errors import HohError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert (
        main(
            [
                "sample",
                "--model",
                str(known_model),
                "--pool",
                str(pool[0]),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(HohError, match="JSON list"):
        labels_from_export({"tasks": []})
    bad = [
        {
            "data": {"hoh_file": "images/a.png"},
            "annotations": [
                {
                    "result": [
                        {"from_name": "choice", "type": "choices", "value": {"choices": ["../x"]}}
                    ]
                }
            ],
        }
    ]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "s" / "images").mkdir(parents=True)
    (tmp_path / "s" / "images" / "a.png").write_bytes(solid_png((1, 1, 1)))
    assert (
        main(
            [
                "labels",
                str(tmp_path / "bad.json"),
                "--sample",
                str(tmp_path / "s"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "cannot be a class folder" in capsys.readouterr().err


# --- `hoh labels` with hostile exports: only the sample folder is read, only OUT/<class>/ written -


def _task(hoh_file, label: str) -> dict:
    choice = {
        "from_name": "choice",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [label]},
    }
    return {"data": {"hoh_file": hoh_file}, "annotations": [{"result": [choice]}]}


@pytest.fixture
def sample_dir(tmp_path):
    """A `hoh sample` folder with two images, and a file outside it an attacker would want."""
    sample = tmp_path / "batch"
    (sample / "images").mkdir(parents=True)
    (sample / "images" / "a.png").write_bytes(solid_png((10, 20, 30)))
    (sample / "images" / "b.png").write_bytes(solid_png((40, 50, 60)))
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.png").write_bytes(b"not yours")
    return sample


def _labels(tmp_path, sample, tasks) -> int:
    from hoh.cli import main

    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    return main(["labels", str(export), "--sample", str(sample), "--out", str(tmp_path / "src")])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    "attack, needle",
    [
        ("absolute", "is not a path inside the sample directory"),
        ("dotdot", "is not a path inside the sample directory"),
        ("symlink", "leads out of the sample directory"),
        ("nul_in_path", "is not a path inside the sample directory"),
        ("nul_in_label", "NUL"),
        ("slash_in_label", "cannot be a class folder name"),
        ("dotdot_label", "cannot be a class folder name"),
        ("backslash_in_label", "cannot be a class folder name"),
    ],
)
def test_labels_refuses_a_hostile_export_before_copying_anything(
    tmp_path, sample_dir, capsys, attack, needle
):
    secret = tmp_path / "private" / "secret.png"
    hostile = {
        "absolute": _task(str(secret), "horse"),
        "dotdot": _task("../private/secret.png", "horse"),
        "symlink": _task("images/innocent.png", "horse"),
        "nul_in_path": _task("images/a.png\0.txt", "horse"),
        "nul_in_label": _task("images/b.png", "hor\0se"),
        "slash_in_label": _task("images/b.png", "../../escaped"),
        "dotdot_label": _task("images/b.png", ".."),
        "backslash_in_label": _task("images/b.png", "a\\b"),
    }[attack]
    if attack == "symlink":
        (sample_dir / "images" / "innocent.png").symlink_to(secret)
    # A good entry comes first: it must not be copied either, the export is checked as a whole.
    assert _labels(tmp_path, sample_dir, [_task("images/a.png", "human"), hostile]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert _files(tmp_path / "src") == []
    assert _files(tmp_path) == sorted(  # nothing was written anywhere outside the inputs
        [
            "batch",
            "batch/images",
            "batch/images/a.png",
            "batch/images/b.png",
            "export.json",
            "private",
            "private/secret.png",
        ]
        + (["batch/images/innocent.png"] if attack == "symlink" else [])
    )


def test_labels_reads_a_symlink_that_stays_inside_the_sample_folder(tmp_path, sample_dir):
    (sample_dir / "images" / "alias.png").symlink_to(sample_dir / "images" / "a.png")
    assert _labels(tmp_path, sample_dir, [_task("images/alias.png", "human")]) == 0
    copied = tmp_path / "src" / "human" / "alias.png"
    assert copied.read_bytes() == (sample_dir / "images" / "a.png").read_bytes()
    assert not copied.is_symlink()


def test_labels_refuses_to_overwrite_a_different_existing_file(tmp_path, sample_dir, capsys):
    """Before, a file already at OUT/<class>/<name> was silently kept and counted as added."""
    mine = tmp_path / "src" / "horse" / "a.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"someone else's picture")
    tasks = [_task("images/b.png", "human"), _task("images/a.png", "horse")]
    assert _labels(tmp_path, sample_dir, tasks) == 2
    err = capsys.readouterr().err
    assert f"{mine} already exists with different content" in err
    assert mine.read_bytes() == b"someone else's picture"
    assert _files(tmp_path / "src") == ["horse", "horse/a.png"]  # b.png was not copied either


def test_labels_reports_files_already_there_instead_of_counting_them(tmp_path, sample_dir, capsys):
    tasks = [
        _task("images/a.png", "horse"),
        _task("images/b.png", "human"),
        {"data": {"hoh_file": "images/c.png"}, "annotations": []},
    ]
    assert _labels(tmp_path, sample_dir, tasks) == 0
    out = capsys.readouterr().out
    assert "copied into" in out and "horse 1, human 1" in out and "without a label yet" in out
    assert _labels(tmp_path, sample_dir, tasks) == 0  # the same export again
    out = capsys.readouterr().out
    assert "nothing" in out and "left alone: 2" in out
    assert str(tmp_path / "src" / "horse" / "a.png") in out
    assert _files(tmp_path / "src") == ["horse", "horse/a.png", "human", "human/b.png"]


@pytest.mark.parametrize(
    "tasks, needle",
    [
        ([_task("images/a.png", "horse"), _task("images/a.png", "human")], "labeled both"),
        (["just a string"], "task 1 is not a JSON object"),
        ([{"data": "images/a.png", "annotations": []}], "task 1 has no 'data' object"),
    ],
)
def test_labels_refuses_contradictory_or_malformed_tasks(
    tmp_path, sample_dir, capsys, tasks, needle
):
    assert _labels(tmp_path, sample_dir, tasks) == 2
    assert needle in capsys.readouterr().err
    assert _files(tmp_path / "src") == []
