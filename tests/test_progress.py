"""hoh.progress: a bar on a terminal, plain lines in logs, silence for quick loops."""

from __future__ import annotations

import io

from hoh.progress import Progress, StagedProgress


def test_log_stream_gets_plain_lines_and_a_final_count():
    out = io.StringIO()
    progress = Progress("check", stream=out, every_seconds=0)
    for done in range(1, 4):
        progress.update(done, 3)
    progress.close()
    assert out.getvalue().splitlines() == [
        "check: 1/3 files",
        "check: 2/3 files",
        "check: 3/3 files",
        "check: 3/3 files",
    ]
    assert "\r" not in out.getvalue()


def test_a_quick_loop_stays_silent():
    out = io.StringIO()
    progress = Progress("check", stream=out, every_seconds=3600)
    for done in range(1, 100):
        progress.update(done, 99)
    progress.close()
    assert out.getvalue() == ""


def test_terminal_gets_a_bar_with_counts_and_an_unknown_total_works():
    out = io.StringIO()
    progress = Progress("scored", unit="images", stream=out, tty=True)
    progress.update(40)
    progress.update(120)
    progress.close()
    text = out.getvalue()
    assert "scored" in text and "120 images" in text and "\r" in text
    out = io.StringIO()
    progress = Progress("write", stream=out, tty=True)
    progress.update(5, 10)
    progress.update(10, 10)
    progress.close()
    assert "10/10" in out.getvalue() and "100%" in out.getvalue()


def test_staged_progress_starts_a_new_report_per_stage():
    out = io.StringIO()
    staged = StagedProgress(stream=out, every_seconds=0)
    staged("check", 1, 2)
    staged("check", 2, 2)
    staged("write", 1, 1)
    staged.close()
    assert out.getvalue().splitlines() == [
        "check: 1/2 files",
        "check: 2/2 files",
        "check: 2/2 files",
        "write: 1/1 files",
        "write: 1/1 files",
    ]
