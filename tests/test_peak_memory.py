"""Per-step peak RSS: the kernel's high-water mark when the step set it, else sampled RSS."""

import sys
import time

import pytest

from hoh.pipeline.telemetry.peak_memory import PeakMemory, format_mb


def _status(path, hwm_kb, rss_kb):
    path.write_text(
        f"Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t  {hwm_kb} kB\nVmRSS:\t {rss_kb} kB\n"
    )


def test_a_step_that_raised_the_high_water_mark_reports_it_exactly(tmp_path):
    status = tmp_path / "status"
    _status(status, hwm_kb=1024 * 1000, rss_kb=1024 * 600)
    memory = PeakMemory(status=status)
    memory.reset()
    _status(status, hwm_kb=1024 * 1500, rss_kb=1024 * 700)  # a new process peak during the step
    assert memory.peak_mb() == 1500.0


def test_a_step_below_an_earlier_peak_reports_its_sampled_rss(tmp_path):
    status = tmp_path / "status"
    _status(status, hwm_kb=1024 * 3000, rss_kb=1024 * 600)
    memory = PeakMemory(status=status)
    memory.reset()
    _status(status, hwm_kb=1024 * 3000, rss_kb=1024 * 900)
    memory._sample()  # what the background thread does every interval
    _status(status, hwm_kb=1024 * 3000, rss_kb=1024 * 700)
    assert memory.peak_mb() == 900.0
    memory.reset()  # the next step starts from its own RSS, not the previous step's peak
    assert memory.peak_mb() == 700.0


def test_missing_proc_reports_nothing(tmp_path):
    memory = PeakMemory(status=tmp_path / "absent")
    memory.reset()
    assert memory.peak_mb() is None
    (tmp_path / "partial").write_text("Name:\tpython\n")
    assert PeakMemory(status=tmp_path / "partial").peak_mb() is None


def test_format():
    assert format_mb(None) == ""
    assert format_mb(812.4) == "812 MB"
    assert format_mb(2048.0) == "2.00 GB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux-only")
def test_background_sampling_sees_a_short_lived_allocation_on_linux():
    with PeakMemory(interval=0.01) as memory:
        memory.reset()
        before = memory.peak_mb()
        block = bytearray(200 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
        time.sleep(0.1)
        del block
        time.sleep(0.05)
        assert memory.peak_mb() > before + 150
