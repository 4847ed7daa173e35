"""The short fuzz run of `make test` (bench/fuzz_images.py): a few thousand inputs, no finding.

The 300 s run and its results are in docs/BENCHMARKS.md; this one keeps the harness working
and catches a regression that the seeds' neighbourhood already reaches.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fuzz_images
from hoh import imagecheck

ROOT = Path(__file__).resolve().parents[1]


def test_short_fuzz_run_finds_nothing(tmp_path):
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is not installed (requirements-dev); the fuzz run cannot happen"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fuzz_images", "--runs", "5000", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stat::number_of_executed_units: 5000" in proc.stderr
    assert list((tmp_path / "findings").iterdir()) == []
    assert len(list((tmp_path / "corpus").iterdir())) > len(fuzz_images.seed_images())


def test_the_property_fails_when_a_check_undercounts():
    """The harness must be able to fail: a check that lets a bigger image through is caught."""
    seeds = fuzz_images.seed_images()
    lying = imagecheck.ImageInfo("PNG", 1, 1, decoded_pixels=1)
    target = fuzz_images.make_target(
        (ValueError,),
        check_server=lambda d: lying,
        check_importer=lambda d: lying,
        decode=lambda d: (7, 9),
    )
    with pytest.raises(fuzz_images.Violation, match="accepted .* but TensorFlow decoded 9x7"):
        target(seeds["rgb.png"])
    honest = imagecheck.ImageInfo("PNG", 9, 7, decoded_pixels=63)
    fuzz_images.make_target(
        (ValueError,), lambda d: honest, lambda d: honest, decode=lambda d: (7, 9)
    )(seeds["rgb.png"])


def test_seeds_are_real_images_the_checks_accept():
    limits = imagecheck.Limits(
        fuzz_images.MAX_BYTES, fuzz_images.MAX_PIXELS, fuzz_images.MAX_GIF_FRAMES
    )
    formats = {imagecheck.check(data, limits).format for data in fuzz_images.seed_images().values()}
    assert formats == set(imagecheck.FORMATS)
