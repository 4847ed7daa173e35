"""The Evidently dashboard as a user sees it: two `hoh monitor` runs fill a workspace, `hoh
dashboard` serves it on a free loopback port, and its HTTP API must show the project, the runs'
snapshots and panel data equal to the runs' own figures.

The captures and the served model are test_monitor.py's (the gateway's capture layout, the known
closed-form model); the UI is the `evidently ui` the installed package ships, started through
`hoh dashboard` and stopped by its PID.
"""

from __future__ import annotations

import datetime
import json
import sys
import urllib.request

import pytest
from services import free_port, start_server
from test_monitor import IN_DAY, SHIFT_DAY, _window, served_model, world  # noqa: F401

from hoh.components.monitor import workspace as ws
from hoh.components.monitor.monitor import run_monitor
from hoh.config import MonitorConfig

pytestmark = pytest.mark.e2e


def _get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.loads(response.read())


def _series(base: str, project: str, metric: str, tags: list[str], **labels) -> list[dict]:
    body = {"series_filter": [{"tags": tags, "metadata": {}, "metric": metric,
                               "metric_labels": labels}]}  # fmt: skip
    request = urllib.request.Request(
        f"{base}/api/v2/snapshots/{project}/data_series_batch",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["series"]


@pytest.fixture(scope="module")
def filled(world, served_model, tmp_path_factory):  # noqa: F811
    """(workspace folder, summaries of an in-distribution day and a shifted day)."""
    data, captures, _ = world
    root = tmp_path_factory.mktemp("dashboard")
    config = MonitorConfig(label_batch=False)
    summaries = [
        run_monitor(_window(captures, day), str(served_model), str(data), root / name, config)
        for name, day in (("in", IN_DAY), ("shift", SHIFT_DAY))
    ]
    return root / config.workspace, summaries


def test_each_run_adds_its_snapshots_to_the_project(filled):
    folder, summaries = filled
    for summary in summaries:
        added = summary["workspace"]
        assert added["where"] == str(folder) and added["project"] == "hoh monitoring"
        assert sorted(added["snapshots"]) == [ws.INPUT_DRIFT, ws.SERVED]
    ids = {summary["workspace"]["project_id"] for summary in summaries}
    assert len(ids) == 1, "the second run must reuse the project, not make another"


def test_the_dashboard_serves_the_project_its_snapshots_and_panel_data(filled):
    folder, (ok, shifted) = filled
    port = free_port()
    argv = [sys.executable, "-m", "hoh.cli", "dashboard", "--workspace", str(folder)]
    server = start_server([*argv, "--port", str(port)], port, "evidently-ui", timeout=90)
    try:
        base = f"http://127.0.0.1:{port}"
        projects = _get(base, "/api/projects")
        project = next(p for p in projects if p["name"] == "hoh monitoring")
        pid = project["id"]
        assert pid == ok["workspace"]["project_id"]
        snapshots = _get(base, f"/api/projects/{pid}/snapshots")
        expected = {i for s in (ok, shifted) for i in s["workspace"]["snapshots"].values()}
        assert {s["id"] for s in snapshots} == expected
        titles = [p["title"] for p in _get(base, f"/api/v2/dashboards/{pid}")["panels"]]
        assert titles == [p.title for p in ws.panels()]

        share = _series(base, pid, "evidently:metric_v2:DriftedColumnsCount", [ws.INPUT_DRIFT],
                        value_type="share")  # fmt: skip
        assert [round(v, 6) for v in share[0]["values"]] == [
            round(s["input_drift"]["drifted_share"], 6) for s in (ok, shifted)
        ]
        assert shifted["input_drift"]["drifted_share"] > ok["input_drift"]["drifted_share"]
        rows = _series(base, pid, "evidently:metric_v2:RowCount", [ws.SERVED])
        assert rows[0]["values"] == [s["counts"]["served_images"] for s in (ok, shifted)]
        confidence = _series(base, pid, "evidently:metric_v2:MeanValue", [ws.SERVED],
                             column=ws.CONFIDENCE)  # fmt: skip
        assert confidence[0]["values"] == pytest.approx(
            [s["prediction_drift"]["served"]["mean_confidence"] for s in (ok, shifted)], abs=1e-5
        )
        mix = _series(base, pid, "evidently:metric_v2:UniqueValueCount", [ws.SERVED],
                      column=ws.PREDICTED, value_type="share")  # fmt: skip
        by_class = {s["params"]["label"]: s["values"] for s in mix}
        for i, summary in enumerate((ok, shifted)):
            for name, share_of in summary["prediction_drift"]["served"]["class_share"].items():
                assert by_class[name][i] == pytest.approx(share_of, abs=1e-5)
        drifted = _series(base, pid, "evidently:metric_v2:ValueDrift", [ws.INPUT_DRIFT])
        assert {s["params"]["column"] for s in drifted} >= set(shifted["input_drift"]["drifted"])

        # monitor.workspace_url: the same UI as a remote workspace takes a run's snapshot.
        snapshot = ws.served_snapshot([("horses", 0.9), ("humans", 0.7)], ["horses", None])
        when = datetime.datetime(2026, 12, 3)
        added = ws.add_run(ws.open_workspace(None, base), "hoh monitoring", {ws.SERVED: snapshot},
                           when, {"version": "3"})  # fmt: skip
        assert added["project_id"] == pid
        assert len(_get(base, f"/api/projects/{pid}/snapshots")) == len(expected) + 1
        rows = _series(base, pid, "evidently:metric_v2:RowCount", [ws.SERVED])
        assert rows[0]["values"][-1] == 2
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_an_unreachable_remote_workspace_is_one_clear_error():
    from hoh.errors import RunFailed

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RunFailed, match=f"Evidently UI {url}: not reachable"):
        ws.open_workspace(None, url)


def test_dashboard_without_a_workspace_is_a_usage_error(tmp_path, capsys):
    from hoh.cli import main
    from hoh.errors import ExitCode

    code = main(["dashboard", "--workspace", str(tmp_path / "nothing")])
    assert code == ExitCode.USAGE
    assert "no such directory" in capsys.readouterr().err
