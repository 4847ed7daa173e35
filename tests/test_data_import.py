"""`hoh data import`: what goes in comes out byte for byte; every other file is accounted for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from imagegen import animated_gif, encode, pattern, truncated, write, write_classes

from hoh import features
from hoh.cli import main
from hoh.data import importer
from hoh.data.importer import REPORT_NAME, import_images
from hoh.data.split import EVAL, TRAIN, assign_splits
from hoh.errors import HohError

MAX_PIXELS = 200 * 200  # small, so a 300x300 image counts as too large

# source path -> bytes, for every file that must be written
GOOD = {
    "horses/rgb.png": encode(pattern(1), "PNG"),
    "horses/rgba.png": encode(pattern(2, mode="RGBA"), "PNG"),
    "horses/gray.png": encode(pattern(3, mode="L"), "PNG"),
    "horses/palette.png": encode(pattern(4, mode="P"), "PNG"),
    "horses/photo.jpg": encode(pattern(5, (64, 48)), "JPEG", quality=90),
    "horses/bitmap.bmp": encode(pattern(6, (33, 17)), "BMP"),
    "horses/anim.gif": animated_gif(7),
    "horses/2024/june/nested.png": encode(pattern(8), "PNG"),
    "humans/a.png": encode(pattern(20), "PNG"),
    "humans/b.png": encode(pattern(21, (25, 50)), "PNG"),
    "humans/c.jpg": encode(pattern(22, mode="L"), "JPEG"),
    "humans/d.png": encode(pattern(23), "PNG"),
    "humans/e.png": encode(pattern(24), "PNG"),
}
# source path -> (bytes, expected kind)
BAD = {
    "horses/.DS_Store": (b"\x00\x00\x00\x01Bud1", "hidden_file"),
    "horses/truncated.png": (truncated(encode(pattern(9), "PNG")), "undecodable"),
    "horses/truncated.jpg": (truncated(encode(pattern(10, (64, 48)), "JPEG")), "undecodable"),
    "horses/header-cut.jpg": (encode(pattern(14, (64, 48)), "JPEG")[:150], "corrupt"),
    "horses/empty.png": (b"", "empty_file"),
    "horses/notes.png": (b"these are not the pixels you are looking for\n", "not_an_image"),
    "horses/scan.tiff": (encode(pattern(11), "TIFF"), "unsupported_format"),
    "horses/huge.png": (encode(pattern(12, (300, 300)), "PNG"), "too_large"),
    # 1-bit BMP: Pillow opens it, TensorFlow does not; TF is the decoder that counts.
    "horses/mono.bmp": (encode(pattern(13).convert("1"), "BMP"), "undecodable"),
    "humans/f.webp": (encode(pattern(25), "WEBP"), "unsupported_format"),
    "birds/not-a-bird.jpg": (b"<html>404</html>", "not_an_image"),
    "stray.png": (encode(pattern(30), "PNG"), "outside_class_folder"),
}
# source path -> the good file it copies
DUPLICATES = {
    "horses/z-copy.png": "horses/rgb.png",
    "humans/lookalike.png": "horses/rgb.png",  # same bytes filed under another class
}
HIDDEN_DIR_FILE = ".git/objects/x.png"  # never seen at all


def _make_mixed_source(root: Path) -> Path:
    for source, data in GOOD.items():
        write(root / source, data)
    for source, (data, _) in BAD.items():
        write(root / source, data)
    for source, original in DUPLICATES.items():
        write(root / source, GOOD[original])
    write(root / HIDDEN_DIR_FILE, encode(pattern(40), "PNG"))
    return root


def read_span(span_dir: Path) -> dict[str, dict[str, dict]]:
    """split -> id -> {feature: value} read back exactly as ImportExampleGen would find them."""
    import tensorflow as tf

    splits: dict[str, dict[str, dict]] = {}
    for split_dir in sorted(p for p in span_dir.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in split_dir.glob("*" + features.TFRECORD_SUFFIX))
        records = {}
        for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            values = {
                key: (f.bytes_list.value[0] if f.HasField("bytes_list") else f.int64_list.value[0])
                for key, f in feature.items()
            }
            records[values[features.ID_KEY].decode()] = values
        splits[split_dir.name] = records
    return splits


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    src = _make_mixed_source(root / "src")
    report = import_images(
        src, root / "lake", max_pixels=MAX_PIXELS, report_path=root / "extra" / "report.json"
    )
    return src, root, report


def test_counts_add_up(mixed):
    _, _, report = mixed
    assert report.seen == len(GOOD) + len(BAD) + len(DUPLICATES)
    assert report.written == len(GOOD)
    assert len(report.rejected) == len(BAD)
    assert len(report.duplicates) == len(DUPLICATES)
    assert report.adds_up
    assert f"seen {report.seen} = written {len(GOOD)} + rejected {len(BAD)} + duplicates 2" in (
        report.summary_lines()
    )


def test_every_bad_file_is_reported_with_its_reason(mixed):
    _, _, report = mixed
    assert {r.path: r.kind for r in report.rejected} == {p: kind for p, (_, kind) in BAD.items()}
    reasons = {r.path: r.reason for r in report.rejected}
    assert reasons["horses/scan.tiff"] == "unsupported format TIFF; supported: PNG, JPEG, BMP, GIF"
    assert reasons["humans/f.webp"].startswith("unsupported format WEBP")
    assert reasons["horses/huge.png"] == f"too large: 300x300 = 90000 pixels > max {MAX_PIXELS}"
    assert reasons["horses/empty.png"] == "empty file (0 bytes)"
    assert reasons["horses/truncated.png"].startswith("TensorFlow cannot decode it: ")
    assert "function_node" not in reasons["horses/truncated.png"]


def test_duplicates_are_written_once_and_name_both_paths(mixed):
    _, _, report = mixed
    by_path = {d.path: d for d in report.duplicates}
    assert {p: d.duplicate_of for p, d in by_path.items()} == DUPLICATES
    assert not by_path["horses/z-copy.png"].label_conflict
    assert by_path["humans/lookalike.png"].label_conflict
    assert "1 duplicate(s) are filed under different classes" in report.summary_lines()


def test_images_round_trip_byte_for_byte(mixed):
    src, _, report = mixed
    splits = read_span(Path(report.span_dir))
    records = {i: r for split in splits.values() for i, r in split.items()}
    assert len(records) == len(GOOD)
    from PIL import Image

    for source, data in GOOD.items():
        image_id = hashlib.sha256(data).hexdigest()
        record = records[image_id]
        assert record[features.IMAGE_KEY] == data
        assert record[features.SOURCE_KEY].decode() == source
        assert record[features.LABEL_KEY].decode() == source.split("/")[0]
        width, height = Image.open(src / source).size
        assert (record[features.WIDTH_KEY], record[features.HEIGHT_KEY]) == (width, height)


def test_layout_classes_and_report_files(mixed):
    _, root, report = mixed
    span_dir = root / "lake" / "span-1"
    assert report.span == importer.FIRST_SPAN and Path(report.span_dir) == span_dir.absolute()
    assert sorted(p.name for p in span_dir.iterdir()) == ["eval", REPORT_NAME, "train"]
    for split in features.SPLITS:
        assert [p.name for p in (span_dir / split).iterdir()] == ["data-00000-of-00001.tfrecord.gz"]
    assert report.classes == ["horses", "humans"]
    assert report.empty_classes == ["birds"]
    assert any("'birds'" in w and "1 not_an_image rejected" in w for w in report.warnings)
    assert report.counts["horses"][TRAIN] + report.counts["horses"][EVAL] == 8
    assert sum(report.split_counts.values()) == report.written
    saved = json.loads((span_dir / REPORT_NAME).read_text())
    assert saved == json.loads(report.to_json())
    assert json.loads((root / "extra" / "report.json").read_text()) == saved
    assert saved["rejected_by_kind"]["unsupported_format"] == 2
    assert not [p for p in (root / "lake").iterdir() if p.name.startswith(".")]


def test_split_is_deterministic_and_by_content(mixed, tmp_path):
    src, _, report = mixed
    again = import_images(src, tmp_path / "lake", max_pixels=MAX_PIXELS)

    def membership(r):
        return {s: sorted(ids) for s, ids in read_span(Path(r.span_dir)).items()}

    assert membership(again) == membership(report)
    assert set(membership(report)) == {TRAIN, EVAL}


def test_assign_splits_follows_the_hash_and_keeps_tiny_classes_usable():
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    splits = assign_splits(((i, "big") for i in ids), 0.25)
    share = sum(s == EVAL for s in splits.values()) / len(ids)
    assert 0.22 < share < 0.28
    # Adding another class never moves an image of this one.
    tiny = [hashlib.sha256(f"t{i}".encode()).hexdigest() for i in range(2)]
    more = assign_splits([*((i, "big") for i in ids), *((t, "tiny") for t in tiny)], 0.25)
    assert all(more[i] == splits[i] for i in ids)
    assert sorted(more[t] for t in tiny) == [EVAL, TRAIN]
    assert assign_splits([(tiny[0], "solo")], 0.99) == {tiny[0]: TRAIN}


def test_spans_append_and_are_never_overwritten(tmp_path):
    src, lake = tmp_path / "src", tmp_path / "lake"
    write_classes(src, {"cats": 3, "dogs": 3})
    assert import_images(src, lake).span == 1
    assert import_images(src, lake).span == 2
    assert import_images(src, lake, span=7).span == 7
    assert import_images(src, lake).span == 8
    before = sorted(p.name for p in (lake / "span-7" / "train").iterdir())
    with pytest.raises(HohError, match=r"span 7 already exists at .*span-7.*append span 9"):
        import_images(src, lake, span=7)
    assert sorted(p.name for p in (lake / "span-7" / "train").iterdir()) == before
    assert features.list_spans(lake) == [1, 2, 7, 8]
    assert sorted(p.name for p in lake.iterdir()) == ["span-1", "span-2", "span-7", "span-8"]


def test_tiny_classes_still_get_both_splits(tmp_path):
    write_classes(tmp_path / "src", {"a": 2, "b": 2, "c": 2})
    report = import_images(tmp_path / "src", tmp_path / "lake", eval_ratio=0.01)
    assert all(report.counts[c] == {TRAIN: 1, EVAL: 1} for c in "abc")


def test_crash_while_writing_leaves_no_span(tmp_path, monkeypatch):
    write_classes(tmp_path / "src", {"a": 3, "b": 3})
    real = importer.serialize_example
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(importer, "serialize_example", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        import_images(tmp_path / "src", tmp_path / "lake")
    assert list((tmp_path / "lake").iterdir()) == []


def test_small_shards(tmp_path):
    write_classes(tmp_path / "src", {"a": 4, "b": 4})
    report = import_images(tmp_path / "src", tmp_path / "lake", shard_bytes=1)
    for split, n in report.split_counts.items():
        names = sorted(p.name for p in (Path(report.span_dir) / split).iterdir())
        assert names == [f"data-{i:05d}-of-{n:05d}.tfrecord.gz" for i in range(n)]
        assert report.shards[split] == n
    assert sum(len(r) for r in read_span(Path(report.span_dir)).values()) == 8


def test_unlabeled_pool(tmp_path):
    src = tmp_path / "pool"
    for i in range(3):
        write(src / ("sub" if i else "") / f"{i}.png", encode(pattern(i), "PNG"))
    write(src / "bad.png", b"nope")
    report = import_images(src, tmp_path / "lake", unlabeled=True)
    assert (report.written, len(report.rejected), report.split_counts) == (3, 1, {"pool": 3})
    records = read_span(Path(report.span_dir))["pool"].values()
    assert all(features.LABEL_KEY not in r for r in records)
    sources = sorted(r[features.SOURCE_KEY].decode() for r in records)
    assert sources == ["0.png", "sub/1.png", "sub/2.png"]


@pytest.mark.parametrize(
    "layout, kwargs, message",
    [
        (None, {}, r"import source .*missing does not exist"),
        ({"only": 3}, {}, r"needs at least 2 classes with usable images, found only \(3 usable\)"),
        ({"a": 1, "b": 1}, {}, r"every class has a single usable image"),
        ({"a": 2, "b": 2}, {"eval_ratio": 1.0}, r"eval ratio must be strictly between 0 and 1"),
        ({"a": 2, "b": 2}, {"eval_ratio": 0}, r"eval ratio must be strictly between 0 and 1"),
    ],
)
def test_unusable_imports_raise_and_write_nothing(tmp_path, layout, kwargs, message):
    src = tmp_path / "missing"
    if layout is not None:
        write_classes(src, layout)
    with pytest.raises(HohError, match=message):
        import_images(src, tmp_path / "lake", **kwargs)
    assert not (tmp_path / "lake").exists()


def test_class_without_usable_images_is_named(tmp_path):
    write_classes(tmp_path / "src", {"good": 2})
    write(tmp_path / "src" / "broken" / "x.png", b"")
    with pytest.raises(HohError, match=r"without usable images: broken: 1 empty_file rejected"):
        import_images(tmp_path / "src", tmp_path / "lake")


def test_flat_folder_and_output_inside_source(tmp_path):
    write(tmp_path / "flat" / "x.png", encode(pattern(1), "PNG"))
    with pytest.raises(HohError, match=r"no class folders.*--unlabeled"):
        import_images(tmp_path / "flat", tmp_path / "lake")
    write_classes(tmp_path / "src", {"a": 2, "b": 2})
    with pytest.raises(HohError, match="inside the import source"):
        import_images(tmp_path / "src", tmp_path / "src" / "lake")


def test_cli_import_summary(tmp_path, capsys):
    write_classes(tmp_path / "src", {"a": 3, "b": 3})
    write(tmp_path / "src" / "a" / "bad.png", b"text")
    extra = tmp_path / "r.json"
    code = main(
        [
            "data",
            "import",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "lake"),
            "--report",
            str(extra),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "seen 7 = written 6 + rejected 1 + duplicates 0" in out
    assert "rejected: not_an_image 1" in out
    assert f"report: {tmp_path / 'lake' / 'span-1' / REPORT_NAME}" in out
    assert json.loads(extra.read_text())["written"] == 6


@pytest.mark.parametrize(
    "classes, expected",
    [(None, "does not exist"), ({"only": 2}, "needs at least 2 classes")],
)
def test_cli_import_errors_exit_without_traceback(tmp_path, capsys, classes, expected):
    src = tmp_path / "src"
    if classes:
        write_classes(src, classes)
    code = main(["data", "import", str(src), "--out", str(tmp_path / "lake")])
    assert code == HohError.exit_code != 0
    err = capsys.readouterr().err
    assert err.startswith("hoh: error: import source ") and expected in err and str(src) in err
    assert "Traceback" not in err


def test_cli_rejects_bad_ratio_at_parse_time(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", str(tmp_path), "--out", str(tmp_path / "o"), "--eval-ratio", "2"])
    assert exc.value.code == 2
    assert "must be strictly between 0 and 1" in capsys.readouterr().err
