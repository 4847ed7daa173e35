"""The pipeline benchmark's parsing and table (bench/pipeline.py); no timing is asserted.

The benchmark reads `hoh run`'s progress lines, so these tests feed it lines made by the real
ProgressHandler: a change of that format breaks here, not silently in the next benchmark run.
"""

from __future__ import annotations

import logging

from bench import pipeline as bench
from hoh.pipeline.telemetry.progress import ProgressHandler


class _Memory:
    def __init__(self, peaks):
        self.peaks = iter(peaks)

    def reset(self):
        pass

    def peak_mb(self):
        return next(self.peaks)


def _progress_lines() -> str:
    lines, clock = [], iter([0.0, 1.5, 2.0, 26.9, 30.0, 30.1])
    handler = ProgressHandler(
        lines.append, clock=lambda: next(clock), memory=_Memory([1024.0, 1731.0, None])
    )
    logger = logging.getLogger("test-bench-progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for component in ("StatisticsGen", "Trainer", "TritonPusher"):
            logger.info("Component %s is running.", component)
            logger.info("Component %s is finished.", component)
    finally:
        logger.removeHandler(handler)
    return "\n".join(
        lines
        + [
            "data: eval 218, train 809 examples",
            "metrics (eval split): auc 1.0000, binary_accuracy 0.9954, example_count 218.0000",
        ]
    )


def test_seconds_peaks_and_metrics_are_read_from_real_progress_lines():
    out = _progress_lines()
    assert bench.component_seconds(out) == {
        "StatisticsGen": 1.5,
        "Trainer": 24.9,
        "TritonPusher": 0.1,
    }
    peaks = bench.component_peak_rss_mb(out)
    assert set(peaks) == {"StatisticsGen", "Trainer"}  # no peak where none was measured
    assert abs(peaks["StatisticsGen"] - 1024.0) < 11 and abs(peaks["Trainer"] - 1731.0) < 11
    assert bench.run_metrics(out) == {"auc": 1.0, "binary_accuracy": 0.9954}


def test_table_has_both_baselines_ratios_and_the_step_rows():
    pipeline = {
        "import": {"seconds": 10.0, "peak_rss_mb": 550.0, "images_per_second": 100.0},
        "run": {"seconds": 60.0, "peak_rss_mb": 1900.0},
        "total_seconds": 70.0,
        "components_seconds": {"Transform": 5.0, "Trainer": 25.0},
        "components_peak_rss_mb": {"Transform": 1000.0, "Trainer": 1700.0},
        "transform_images_per_second": 200.0,
        "train_images_per_second": 150.0,
        "metrics": {"auc": 1.0, "binary_accuracy": 0.99},
    }
    run = {
        "pipeline": pipeline,
        "baseline": {
            "seconds": 70.0,
            "train_images_per_second": 50.0,
            "peak_rss_mb": 1400.0,
            "accuracy": 0.99,
            "auc": 1.0,
        },
        "baseline_exempt": {
            "seconds": 35.0,
            "train_images_per_second": 100.0,
            "peak_rss_mb": 1300.0,
            "accuracy": 0.99,
            "auc": 1.0,
        },
    }
    table = bench.table(run)
    assert (
        "| wall time, import -> evaluated/pushed model (s) | 70.0 | 35.0 | 70.0 | 1.00x | 2.00x |"
        in table
    )
    assert "| training images/s | 50.0 | 100.0 | 150.0 | 3.00x | 1.50x |" in table
    assert "| Transform | 5.0 | 200.0 | 1000 |" in table
    assert "| `hoh run` outside components (start-up, loading TFX, summary) | 30.0 | | |" in table
    only_pipeline = bench.table({"pipeline": pipeline})
    assert "| held-out AUC |  |  | 1.000 |  |  |" in only_pipeline


def test_split_tree_links_each_source_under_its_split(tmp_path):
    src = tmp_path / "src"
    for rel in ("horses/a.png", "humans/b.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    bench.link_split_tree(
        src, {"train": ["horses/a.png"], "eval": ["humans/b.png"]}, tmp_path / "tree"
    )
    assert (tmp_path / "tree/train/horses/a.png").read_bytes() == b"horses/a.png"
    assert (tmp_path / "tree/eval/humans/b.png").is_symlink()
    assert not (tmp_path / "tree/train/humans").exists()
