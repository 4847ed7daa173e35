"""Service health in `hoh monitor`: rates and latency percentiles of the window, from the audit
log the gateway writes (with its own `AuditLog` and `record_for`), checked against values worked
out by hand. No model is loaded: these windows hold too few captures for the drift tests.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hoh.components.monitor.monitor import run_monitor, summary_lines
from hoh.components.monitor.service import Requests, health, nearest_rank, read_requests
from hoh.components.monitor.window import read_window
from hoh.config import MonitorConfig
from hoh.errors import ExitCode, UsageError
from hoh.serving.gateway.audit import AuditLog, record_for

DAY = date(2026, 12, 1)
START = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
END = datetime(2026, 12, 2, tzinfo=timezone.utc).timestamp()


def _at(hour: int, minute: int = 0, day: int = 1) -> str:
    return datetime(2026, 12, day, hour, minute, tzinfo=timezone.utc).isoformat(
        timespec="milliseconds"
    )


def write_audit(directory: Path, records: list[dict]) -> Path:
    log = AuditLog(directory, anchor_every=7)  # anchors and decisions interleave
    for r in records:
        log.write(record_for(**r))
    log.close()
    return directory


def predict(status: int, latency_ms: float, when: str = "", model: str = "hoh", **extra) -> dict:
    return {
        "time": when or _at(12),
        "route": "predict",
        "model": model,
        "status": status,
        "latency_ms": latency_ms,
        **extra,
    }


def day_of_traffic() -> list[dict]:
    """20 successful requests of 10, 20 ... 200 ms, two 503 of 5 s, three 401; and lines the
    window must ignore: another day, another route, another model."""
    records = [predict(200, 10.0 * (i + 1), _at(i % 24, i)) for i in range(20)]
    records += [predict(503, 5000.0, _at(13)), predict(503, 5000.0, _at(14))]
    records += [predict(401, 1.0, _at(15), model=None) for _ in range(3)]
    records += [
        predict(200, 9999.0, _at(12, day=2)),  # the next day
        predict(200, 9999.0, "2026-11-30T23:59:59.999+00:00"),  # the day before
        {**predict(200, 9999.0), "route": "metrics"},
        predict(200, 9999.0, model="other"),
    ]
    return records


def test_nearest_rank_by_hand():
    values = [10.0 * (i + 1) for i in range(20)]
    assert nearest_rank(values, 50) == 100.0  # rank ceil(10) = 10
    assert nearest_rank(values, 95) == 190.0  # rank ceil(19) = 19
    assert nearest_rank(values, 99) == 200.0  # rank ceil(19.8) = 20
    assert nearest_rank([7.0], 99) == 7.0 and nearest_rank([], 50) is None


def test_health_of_a_day_by_hand(tmp_path):
    audit = write_audit(tmp_path / "audit", day_of_traffic())
    # A 401 carries no model: count requests of any model, as for a gateway serving one.
    requests = read_requests([audit], START, END, None)
    assert len(requests.calls) == 20 + 2 + 3 + 1  # + the "other" model's request
    requests = read_requests([audit], START, END, "hoh")
    assert len(requests.calls) == 22 and requests.bad_lines == 0
    result = health(requests, 86400.0, 500.0, 0.01)
    assert result["requests"] == 22 and result["successful"] == 20
    assert result["server_errors"] == 2 and result["client_errors"] == 0
    assert result["latency_ms"] == {"p50": 100.0, "p95": 190.0, "p99": 200.0}
    assert result["error_ratio"] == pytest.approx(2 / 22)
    assert result["request_rate"] == pytest.approx(22 / 86400)
    assert result["slo_breached"] and result["reasons"] == [
        "9.1% of 22 predict requests failed with 5xx (objective: at most 1.0%)"
    ]
    slow = health(requests, 86400.0, 150.0, 0.5)
    assert slow["slo_breached"] and slow["reasons"] == [
        "p95 latency 190 ms is above the 150 ms objective (20 successful requests)"
    ]
    assert not health(requests, 86400.0, 190.0, 0.1)["slo_breached"]  # "above", not "at"


def test_no_requests_is_not_judged_and_damaged_lines_are_counted(tmp_path):
    audit = write_audit(tmp_path / "audit", [predict(200, 50.0)])
    with open(next(audit.glob("audit-*.jsonl")), "a") as f:
        f.write('{"kind": "decision", "route": "predict", "model": "hoh", "status": "x"\n')
        line = {"kind": "decision", "route": "predict", "model": "hoh", "time": _at(1)}
        f.write(json.dumps(line) + "\n")  # no status, no latency
    requests = read_requests([audit], START, END, "hoh")
    assert len(requests.calls) == 1 and requests.bad_lines == 2
    empty = health(Requests(), 3600.0, 500.0, 0.01)
    assert not empty["slo_breached"] and empty["error_ratio"] is None
    assert empty["latency_ms"] == {"p50": None, "p95": None, "p99": None}


def test_several_replicas_add_up(tmp_path):
    a = write_audit(tmp_path / "a", [predict(200, 10.0)] * 3)
    b = write_audit(tmp_path / "b", [predict(500, 20.0)])
    requests = read_requests([a, b], START, END, "hoh")
    assert sorted(requests.calls) == [(200, 10.0)] * 3 + [(500, 20.0)]


def test_an_audit_dir_without_a_log_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"empty holds no audit-NNNNNN.jsonl files"):
        (tmp_path / "empty").mkdir()
        read_requests([tmp_path / "empty"], START, END, None)


@pytest.fixture
def breached_run(tmp_path):
    """A window without captures (insufficient data) whose audit log breaks the objective."""
    (tmp_path / "captures").mkdir()
    (tmp_path / "reference").mkdir()
    audit = write_audit(tmp_path / "audit", day_of_traffic())
    window = read_window(tmp_path / "captures", DAY, DAY, "3", "hoh")
    out = tmp_path / "out"
    summary = run_monitor(
        window,
        str(tmp_path / "no-model-needed"),
        str(tmp_path / "reference"),
        out,
        MonitorConfig(),
        audit_dirs=[audit],
        now=END + 3600,
    )
    return summary, out


def test_a_breached_window_is_slo_breached_in_summary_and_textfile(breached_run):
    summary, out = breached_run
    assert summary["verdict"] == "slo_breached"
    assert summary["checks"] == {"drift": False, "accuracy_low": False, "slo_breached": True}
    assert summary["label_batch"] is None  # a slow service is not the model's fault
    assert json.loads((out / "summary.json").read_text())["service"]["latency_ms"]["p95"] == 190.0
    values = {}
    for family in text_string_to_metric_families((out / "hoh_monitor.prom").read_text()):
        for s in family.samples:
            values[(s.name, s.labels.get("quantile") or s.labels.get("verdict"))] = s.value
    assert values[("hoh_monitor_latency_seconds", "0.95")] == pytest.approx(0.19)
    assert values[("hoh_monitor_latency_seconds", "0.5")] == pytest.approx(0.1)
    assert values[("hoh_monitor_latency_objective_seconds", None)] == 0.5
    assert values[("hoh_monitor_slo_breached", None)] == 1.0
    assert values[("hoh_monitor_verdict", "slo_breached")] == 1.0
    assert values[("hoh_monitor_verdict", "insufficient_data")] == 0.0
    assert values[("hoh_monitor_error_ratio", None)] == pytest.approx(2 / 22)
    assert values[("hoh_monitor_request_rate", None)] == pytest.approx(22 / 86400)
    lines = summary_lines(summary)
    assert lines[0].startswith("monitor: SLO_BREACHED")
    assert any("p50/p95/p99 100/190/200 ms" in line for line in lines)


def test_a_window_still_running_counts_its_rate_over_the_elapsed_time(tmp_path):
    (tmp_path / "captures").mkdir()
    (tmp_path / "reference").mkdir()
    audit = write_audit(tmp_path / "audit", [predict(200, 10.0, _at(1))] * 6)
    window = read_window(tmp_path / "captures", DAY, DAY, "3", "hoh")
    summary = run_monitor(
        window,
        "unused",
        str(tmp_path / "reference"),
        tmp_path / "out",
        audit_dirs=[audit],
        now=START + 2 * 3600,
    )
    assert summary["service"]["request_rate"] == pytest.approx(6 / 7200)
    assert summary["verdict"] == "insufficient_data"


def monitor_argv(tmp_path: Path) -> list[str]:
    """`hoh monitor` over empty but existing inputs: what the option checks run against."""
    for name in ("captures", "reference", "model/hoh/3/model.savedmodel"):
        (tmp_path / name).mkdir(parents=True)
    return [
        "monitor",
        "--capture", str(tmp_path / "captures"),
        "--since", str(DAY), "--until", str(DAY),
        "--model", str(tmp_path / "model" / "hoh" / "3"),
        "--reference", str(tmp_path / "reference"),
    ]  # fmt: skip


def test_cli_audit_option_and_bad_dir(tmp_path, capsys):
    from hoh.cli import main

    base = monitor_argv(tmp_path)
    code = main([*base, "--audit", str(tmp_path / "nope"), "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.USAGE and "nope holds no audit" in err and "\n" not in err
    audit = write_audit(tmp_path / "audit", day_of_traffic())
    code = main([*base, "--audit", str(audit), "--out", str(tmp_path / "o2")])
    out = capsys.readouterr().out
    assert code == ExitCode.OK and "monitor: SLO_BREACHED" in out and "22 predict requests" in out
