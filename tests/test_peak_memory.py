"""Per-step peak RSS from the kernel's high-water mark."""
import sys

import pytest

from hoh.pipeline.peak_memory import PeakMemory, format_mb


def test_reads_the_high_water_mark_and_reports_missing_proc_as_none(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t  524288 kB\nVmRSS:\t 1000 kB\n")
    memory = PeakMemory(status=status, clear_refs=tmp_path / "missing-dir" / "clear_refs")
    assert memory.peak_mb() == 512.0
    assert memory.reset() is False
    assert PeakMemory(status=tmp_path / "absent").peak_mb() is None
    status.write_text("Name:\tpython\n")
    assert memory.peak_mb() is None


def test_format():
    assert format_mb(None) == ""
    assert format_mb(812.4) == "812 MB"
    assert format_mb(2048.0) == "2.00 GB"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc high-water mark is Linux-only")
def test_reset_really_lowers_the_peak_on_linux():
    memory = PeakMemory()
    block = bytearray(300 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it is resident
    high = memory.peak_mb()
    del block
    assert memory.reset() is True
    assert memory.peak_mb() < high - 200
