"""`hoh data demo`: reproducible, decodable, and only solvable from shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageStat

from hoh.cli import main
from hoh.data.demo import make_demo_dataset
from hoh.errors import HohError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "set"
    counts = make_demo_dataset(root, per_class=6, classes=("horses", "humans", "birds"))
    return root, counts


def test_counts_names_and_format(three_classes):
    root, counts = three_classes
    assert counts == {"horses": 6, "humans": 6, "birds": 6}
    assert sorted(p.name for p in root.iterdir()) == ["birds", "horses", "humans"]
    names = sorted(p.name for p in (root / "horses").iterdir())
    assert names[:2] == ["horse-0001.png", "horse-0002.png"]
    modes = set()
    for path in root.rglob("*"):
        if path.is_file():
            with Image.open(path) as image:
                assert (image.format, image.size) == ("PNG", (300, 300))
                modes.add(image.mode)
                image.load()
    assert modes == {"RGB", "RGBA"}


def test_decodable_by_the_pipeline_decoder(three_classes):
    import tensorflow as tf

    root, _ = three_classes
    for path in sorted(root.rglob("*.png"))[::4]:
        pixels = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
        assert tuple(pixels.shape) == (300, 300, 3)


def test_same_seed_same_bytes_and_smaller_sets_are_prefixes(three_classes, tmp_path):
    root, _ = three_classes
    make_demo_dataset(tmp_path / "again", per_class=6, classes=("horses", "humans", "birds"))
    assert _files(tmp_path / "again") == _files(root)
    make_demo_dataset(tmp_path / "prefix", per_class=2, classes=("birds",))
    assert _files(tmp_path / "prefix") == {
        k: v for k, v in _files(root).items() if k in ("birds/bird-0001.png", "birds/bird-0002.png")
    }
    make_demo_dataset(tmp_path / "other", per_class=2, seed=1, classes=("birds",))
    assert _files(tmp_path / "other").keys() == _files(tmp_path / "prefix").keys()
    assert _files(tmp_path / "other") != _files(tmp_path / "prefix")


def _best_threshold_accuracy(values: list[float], labels: list[int]) -> float:
    """Accuracy of the best single cut on one statistic, measured on the data it was fitted to."""
    best = 0.0
    for cut in values:
        hits = sum((v > cut) == bool(y) for v, y in zip(values, labels)) / len(values)
        best = max(best, hits, 1 - hits)
    return best


def test_classes_are_not_separable_by_colour_statistics(tmp_path):
    # Smaller images draw the same distributions faster; in-sample best cuts flatter the statistic.
    make_demo_dataset(tmp_path / "d", per_class=40, size=64)
    stats, labels = [], []
    for label, cls in enumerate(("horses", "humans")):
        for path in sorted((tmp_path / "d" / cls).iterdir()):
            with Image.open(path) as image:
                stat = ImageStat.Stat(image.convert("RGB"))
            stats.append((*stat.mean, sum(stat.mean) / 3))
            labels.append(label)
    for column, name in enumerate(("red", "green", "blue", "brightness")):
        accuracy = _best_threshold_accuracy([s[column] for s in stats], labels)
        assert accuracy < 0.7, f"mean {name} alone separates the classes ({accuracy:.2f})"


def test_refuses_bad_arguments_and_non_empty_output(tmp_path):
    with pytest.raises(HohError, match="unknown demo class.*unicorns.*known: horses, humans, bird"):
        make_demo_dataset(tmp_path / "a", classes=("horses", "unicorns"))
    with pytest.raises(HohError, match="per-class"):
        make_demo_dataset(tmp_path / "a", per_class=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(HohError, match="already exists and is not empty"):
        make_demo_dataset(tmp_path / "full", per_class=1)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary left behind


def test_cli_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()  # an empty folder is fine
    code = main(
        [
            "data",
            "demo",
            "--out",
            str(out),
            "--per-class",
            "2",
            "--size",
            "64",
            "--classes",
            "humans,birds",
        ]
    )
    assert code == 0
    assert "wrote 4 images (humans 2, birds 2)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["birds", "humans"]
