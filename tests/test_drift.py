"""Drift check: descriptors, a real shift flagged and named, random splits not flagged, label
drift, embeddings, streaming memory, report files, the CLI."""

from __future__ import annotations

import io
import json
import random
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from test_sampling_model import solid_png

from hoh.components.drift import descriptors
from hoh.components.drift.evaluation import descriptor_report, embedding_report, verdict
from hoh.components.drift.profile import Profile, ReducedEmbeddings, build_profile, fit_pca
from hoh.config import DriftConfig
from hoh.data.sources import ImageRecord, ImageSource, reference_span, resolve_path, span_source


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


# --- descriptors ----------------------------------------------------------------------------------


def test_pixel_statistics_of_known_images():
    grey = descriptors.pixel_statistics(np.full((10, 12, 3), 128, np.uint8))
    assert grey["brightness"] == pytest.approx(128 / 255, abs=1e-4)
    assert (
        grey["contrast"] == pytest.approx(0) and grey["sharpness"] == 0 and grey["saturation"] == 0
    )
    red = descriptors.pixel_statistics(np.tile(np.array([255, 0, 0], np.uint8), (8, 8, 1)))
    assert (red["mean_r"], red["mean_g"], red["mean_b"], red["saturation"]) == pytest.approx(
        (1, 0, 0, 1)
    )
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    sharp = descriptors.pixel_statistics(np.stack([checker] * 3, axis=2))
    assert sharp["contrast"] == pytest.approx(0.5, abs=1e-3) and sharp["sharpness"] > 1e5


def test_describe_image_reads_every_format_and_keeps_the_original_size():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (600, 1200, 3), dtype=np.uint8))
    for fmt, image in (
        ("PNG", photo.convert("RGBA")),
        ("JPEG", photo),
        ("GIF", photo.convert("P")),
        ("BMP", photo),
    ):
        data = _encode(image, fmt)
        row = descriptors.describe_image(data)
        assert set(row) == set(descriptors.COLUMNS)
        assert (row["format"], row["width"], row["height"]) == (fmt, 1200, 600)
        assert row["aspect_ratio"] == 2.0 and row["encoded_bytes"] == len(data)
    for junk in (b"", b"not an image", _encode(photo, "PNG")[:200]):
        with pytest.raises(descriptors.UndecodableImage):
            descriptors.describe_image(junk)


def test_blur_lowers_sharpness_and_darkening_lowers_brightness():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    base = descriptors.describe_image(_encode(image, "PNG"))
    blurred = descriptors.describe_image(_encode(image.filter(ImageFilter.GaussianBlur(2)), "PNG"))
    darker = descriptors.describe_image(_encode(ImageEnhance.Brightness(image).enhance(0.5), "PNG"))
    assert blurred["sharpness"] < base["sharpness"] / 10
    assert darker["brightness"] == pytest.approx(base["brightness"] / 2, rel=0.05)


# --- spans: a real shift, and the same distribution split at random -------------------------------


def _shift(image: Image.Image) -> Image.Image:
    """What a new camera might do: darker, a red cast, softer focus, smaller frames."""
    image = ImageEnhance.Brightness(image.convert("RGB")).enhance(0.65)
    r, g, b = image.split()
    image = Image.merge(
        "RGB", (r.point(lambda v: min(255, v + 45)), g, b.point(lambda v: int(v * 0.8)))
    )
    return image.filter(ImageFilter.GaussianBlur(1.2)).resize((48, 48), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def spans(tmp_path_factory) -> tuple[Path, Path]:
    """(data root with span-1 = demo images and span-2 = the same images shifted, image folder)."""
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    root = tmp_path_factory.mktemp("drift_spans")
    images, shifted = root / "images", root / "shifted"
    make_demo_dataset(images, per_class=60, size=64)
    for path in images.rglob("*.png"):
        target = shifted / path.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        _shift(Image.open(path)).save(target)
    import_images(images, root / "data")
    import_images(shifted, root / "data")
    return root / "data", images


def test_a_real_shift_is_flagged_with_the_shifted_descriptors_named(spans, tmp_path):
    from hoh.components.drift.check import check_drift

    data, _ = spans
    splits = ("train", "eval")
    summary = check_drift(span_source(data, 2, splits), span_source(data, 1, splits), str(tmp_path))
    assert summary["drift_detected"] is True
    drifted = set(summary["descriptors"]["drifted"])
    assert {"brightness", "sharpness", "width", "height"} <= drifted
    assert {"saturation", "mean_b"} & drifted  # the colour cast
    assert summary["drifted_share"] >= 0.5 and summary["labels"]["drifted"] is False
    assert any("descriptors drifted" in reason for reason in summary["reasons"])
    by_name = {f["name"]: f for f in summary["features"]}
    assert by_name["brightness"]["current_mean"] < by_name["brightness"]["reference_mean"]
    assert by_name["width"]["reference_mean"] == 64 and by_name["width"]["current_mean"] == 48
    for feature in summary["features"]:
        assert {"test", "statistic", "value", "threshold", "drifted"} <= set(feature)
        assert feature["statistic"] in ("p_value", "distance")
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    html = (tmp_path / "report.html").read_text()
    assert len(html) > 10_000 and "brightness" in html
    assert summary["reference"]["images"] == summary["current"]["images"] == 120


def _subset(profile: Profile, rows: list[int]) -> Profile:
    part = Profile(profile.description)
    part.columns = {k: [v[i] for i in rows] for k, v in profile.columns.items()}
    return part


@pytest.fixture(scope="module")
def demo_profile(spans) -> Profile:
    return build_profile(ImageSource("demo images", folder=str(spans[1])), "demo images")


@pytest.mark.parametrize("seed", range(5))
def test_a_random_split_of_one_distribution_is_not_flagged(demo_profile, seed):
    rows = list(range(demo_profile.rows))
    random.Random(seed).shuffle(rows)
    half = len(rows) // 2
    first, second = _subset(demo_profile, rows[:half]), _subset(demo_profile, rows[half:])
    _, results = descriptor_report(first, second, DriftConfig())
    assert verdict(results["descriptors"], results["labels"], None) == []
    assert results["descriptors"]["count"] <= 1


def test_label_proportion_drift_is_flagged(demo_profile):
    labels = demo_profile.columns["label"]
    horses = [i for i, label in enumerate(labels) if label == "horses"]
    humans = [i for i, label in enumerate(labels) if label == "humans"]
    current = _subset(demo_profile, horses[:45] + humans[:5])
    _, results = descriptor_report(demo_profile, current, DriftConfig())
    assert results["labels"]["drifted"] is True
    assert results["labels"]["current"] == {"horses": 0.9, "humans": 0.1}
    assert any(
        "class proportions" in r for r in verdict(results["descriptors"], results["labels"], None)
    )
    _, without = descriptor_report(demo_profile, current, DriftConfig(label_drift=False))
    assert without["labels"] is None


def test_first_span_records_no_reference_and_never_blocks(spans, tmp_path):
    from hoh.components.drift.check import check_drift

    summary = check_drift(span_source(spans[0], 1, ("train",)), None, str(tmp_path))
    assert summary["drift_detected"] is False and summary["reference"] is None
    assert "no reference" in summary["notes"][0]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "summary.json").is_file()


def test_reference_span_is_the_previous_one_or_the_pinned_one():
    from hoh.errors import HohError

    assert reference_span([1, 2, 5], 5) == 2
    assert reference_span([3], 3) is None
    assert reference_span([1, 2, 5], 5, pinned=1) == 1
    with pytest.raises(HohError, match="does not exist"):
        reference_span([1, 2], 2, pinned=7)
    with pytest.raises(HohError, match="is the current span"):
        reference_span([1, 2], 2, pinned=2)


def test_unreadable_images_are_listed_and_skipped(tmp_path, spans):
    from hoh.components.drift.check import check_drift

    folder = tmp_path / "current"
    shutil.copytree(spans[1] / "horses", folder / "horses")
    (folder / "horses" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "horses" / ".DS_Store").write_bytes(b"junk")
    summary = check_drift(
        resolve_path(folder, ("train",), "current"),
        resolve_path(spans[1], ("train",), "reference"),
        str(tmp_path / "out"),
    )
    skipped = {Path(s["source"]).name for s in summary["current"]["skipped"]}
    assert skipped == {"broken.png", ".DS_Store"}
    assert summary["current"]["images"] == 60


def test_resolve_path_knows_roots_spans_and_folders(spans, tmp_path):
    from hoh.errors import HohError

    data, images = spans
    assert "span-2" in resolve_path(data, ("train", "eval"), "x").tfrecord_files[0]
    assert resolve_path(data / "span-1", ("eval",), "x").tfrecord_files
    assert resolve_path(images, ("train",), "x").folder == str(images)
    with pytest.raises(HohError, match="without the split"):
        resolve_path(data / "span-1", ("pool",), "x")
    with pytest.raises(HohError, match="not a directory"):
        resolve_path(tmp_path / "missing", ("train",), "x")


# --- streaming ------------------------------------------------------------------------------------


def test_profiles_stream_memory_does_not_grow_with_the_number_of_images():
    """200 incompressible 256x256 PNGs (~40 MB encoded) pass through; only the table stays."""
    rng = np.random.default_rng(3)

    def records():
        for i in range(200):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            data = _encode(Image.fromarray(pixels), "PNG", compress_level=0)
            yield ImageRecord(f"{i:064x}", f"img{i}.png", None, data)

    tracemalloc.start()
    try:
        profile = build_profile(records(), "noise")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert profile.rows == 200
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MB: images are being held"


# --- embeddings -----------------------------------------------------------------------------------


def test_pca_is_fitted_on_the_first_reference_rows_and_reused_for_current():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    reducer = ReducedEmbeddings(components=4, fit_rows=100)
    chunks = np.array_split(reference, 7)
    for chunk in chunks:
        reducer.add(chunk)
    reduced = reducer.finish()
    assert reduced.shape == (300, 4)
    fitted_on = int(
        next(n for n in np.cumsum([len(c) for c in chunks]) if n >= 100)
    )  # the first batches only
    np.testing.assert_allclose(reduced, fit_pca(reference[:fitted_on], 4)(reference), atol=1e-3)
    current = ReducedEmbeddings(4, 100, reducer.projection)
    current.add(reference[:10])
    np.testing.assert_allclose(current.finish(), reduced[:10], atol=1e-4)
    assert ReducedEmbeddings(4, 100).finish() is None


def _embedded(rows: np.ndarray) -> Profile:
    profile = Profile("synthetic")
    profile.embeddings = rows.astype(np.float32)
    return profile


def test_embedding_drift_votes_only_with_enough_images():
    rng = np.random.default_rng(5)

    def compare(rows: int, shift: float) -> dict:
        reference, current = rng.normal(size=(rows, 6)), rng.normal(shift, 1, size=(rows, 6))
        return embedding_report(_embedded(reference), _embedded(current), DriftConfig())[1]

    same, moved, small = compare(250, 0.0), compare(250, 0.8), compare(30, 0.8)
    assert not same["drifted"] and moved["drifted"] and moved["counts_in_verdict"]
    assert moved["rows"] == {"reference": 250, "current": 250} and moved["test"] == "mmd"
    assert small["drifted"] and not small["counts_in_verdict"] and small["note"]
    descriptors_ok = {"drifted_verdict": False}
    assert verdict(descriptors_ok, None, same) == [] and verdict(descriptors_ok, None, small) == []
    assert "embeddings drifted" in verdict(descriptors_ok, None, moved)[0]


def test_check_drift_with_a_model_adds_the_embedding_test(tmp_path, known_model):
    from hoh.components.drift.check import check_drift

    rng = np.random.default_rng(6)
    for side, tint in (("reference", (0, 0, 0)), ("current", (90, -40, -40))):
        for i, colour in enumerate(rng.integers(60, 160, (40, 3))):
            (tmp_path / side).mkdir(exist_ok=True)
            (tmp_path / side / f"{i}.png").write_bytes(solid_png(np.clip(colour + tint, 0, 255)))
    summary = check_drift(
        ImageSource("current", folder=str(tmp_path / "current")),
        ImageSource("reference", folder=str(tmp_path / "reference")),
        str(tmp_path / "out"),
        DriftConfig(embedding_min_rows=20, embedding_components=3),
        str(known_model),
    )
    embeddings = summary["embeddings"]
    assert (
        embeddings["drifted"] and embeddings["counts_in_verdict"] and embeddings["components"] <= 3
    )
    assert any("embeddings drifted" in reason for reason in summary["reasons"])
    assert (tmp_path / "out" / "embeddings.html").is_file() and "embeddings.html" in summary[
        "files"
    ]


# --- the command line -----------------------------------------------------------------------------


def test_cli_drift_on_span_directories(spans, tmp_path, capsys):
    from hoh.cli import main

    data, _ = spans
    args = [
        "drift",
        "--reference",
        str(data / "span-1"),
        "--current",
        str(data / "span-2"),
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "drift: DETECTED" in out and "brightness: mean" in out
    assert main(args + ["--fail-on-drift"]) == 5  # ExitCode.DRIFT_DETECTED, not a failure (1)
    assert (
        main(
            [
                "drift",
                "--reference",
                str(data / "span-1"),
                "--current",
                str(data / "span-1"),
                "--out",
                str(tmp_path / "same"),
                "--fail-on-drift",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "drift",
                "--reference",
                str(tmp_path / "nope"),
                "--current",
                str(data),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "not a directory" in capsys.readouterr().err


def test_run_summary_says_why_nothing_was_pushed():
    from hoh.pipeline.telemetry.summary import RunSummary

    drift = {
        "drift_detected": True,
        "drifted_share": 0.5,
        "reasons": ["6 of 12 descriptors drifted"],
        "reference": {"images": 10, "skipped": []},
        "current": {"images": 12, "skipped": []},
        "features": [],
        "notes": [],
        "blocks_push": True,
    }
    held = RunSummary(components=[], blessed=True, drift=drift).lines()
    assert held[1].startswith("drift: DETECTED") and "  - 6 of 12 descriptors drifted" in held
    assert any("held by the drift gate" in line for line in held)
    reported = RunSummary(
        components=[],
        blessed=True,
        pushed=True,
        pushed_version="2",
        pushed_destination="repo/hoh/2",
        drift={**drift, "blocks_push": False},
    ).lines()
    assert (
        not any("held" in line for line in reported)
        and "pushed: version 2 -> repo/hoh/2" in reported
    )
