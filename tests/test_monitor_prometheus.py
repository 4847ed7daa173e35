"""Service health in `hoh monitor` from Prometheus (`monitor.prometheus_url`).

The arithmetic (counter increases across restarts and series born in the window, PromQL's
histogram_quantile) is checked by hand on API answers shaped like Prometheus's; an unreachable
Prometheus is an UNKNOWN service or a named fallback to the audit log; and end to end a real
Prometheus scrapes two real gateways (one in front of a real Triton, one whose Triton is down)
and the monitor's figures equal the traffic sent and the audit log's count of it.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import services
from test_gateway_e2e import png, start_gateway, triton_count
from test_gateway_e2e import triton as triton  # noqa: F401 (the module's Triton fixture)
from test_monitor_service import DAY, END, day_of_traffic, monitor_argv, write_audit

from hoh.components.monitor import prometheus as promsrc
from hoh.components.monitor.monitor import run_monitor, summary_lines
from hoh.components.monitor.service import health, read_requests
from hoh.components.monitor.window import read_window
from hoh.config import MonitorConfig


def vector(*items: tuple[dict, float]) -> dict:
    return {
        "resultType": "vector",
        "result": [{"metric": m, "value": [0, str(v)]} for m, v in items],
    }


def matrix(*items: tuple[dict, list[float]]) -> dict:
    return {
        "resultType": "matrix",
        "result": [
            {"metric": m, "values": [[i, str(v)] for i, v in enumerate(vs)]} for m, vs in items
        ],
    }


def test_counter_increase_counts_restarts_and_series_born_in_the_window():
    assert promsrc.increase([5, 7, 7, 10], before=5) == 5
    assert promsrc.increase([2, 4], before=None) == 4  # created in the window: from zero
    assert promsrc.increase([8, 2, 3], before=6) == 2 + 2 + 1  # restarted after 8
    assert promsrc.increase([], before=3) == 0
    grown = promsrc.increases(
        [({"status": "200"}, [3.0, 4.0]), ({"status": "503"}, [1.0])], [({"status": "200"}, [2.0])]
    )
    assert grown == [({"status": "200"}, 2.0), ({"status": "503"}, 1.0)]


def test_bucket_quantile_is_promqls_histogram_quantile_by_hand():
    buckets = {0.1: 10.0, 0.5: 90.0, 1.0: 100.0, math.inf: 100.0}
    assert promsrc.bucket_quantile(0.05, buckets) == pytest.approx(0.05)  # 5 of 10 in [0, 0.1]
    assert promsrc.bucket_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 40 / 80)
    assert promsrc.bucket_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * 5 / 10)
    assert promsrc.bucket_quantile(0.99, {0.5: 1.0, math.inf: 10.0}) == 0.5  # in +Inf
    assert promsrc.bucket_quantile(0.5, {0.5: 0.0, math.inf: 0.0}) is None
    assert promsrc.bucket_quantile(0.5, {0.5: 3.0}) is None  # no +Inf bucket: not a histogram


def test_selectors_filter_route_and_escape_the_model():
    sel = promsrc.selectors('a"b')
    assert sel["requests"] == 'hoh_gateway_requests_total{route="predict",model="a\\"b"}'
    assert sel["latency"] == 'hoh_gateway_request_seconds_bucket{route="predict"}'
    assert sel["failures"] == 'nv_inference_request_failure{model="a\\"b"}'
    assert promsrc.selectors(None)["successes"] == "nv_inference_request_success"
    assert promsrc.range_seconds(10.0, 70.2) == 61


def fake_prometheus(answers: dict[tuple[str, str], dict]):
    """`run` for `health`: the answer per (selector's metric name, 'window' | 'before')."""
    asked = []

    def run(promql: str, at: float) -> dict:
        asked.append((promql, at))
        name = promql.split("(")[-1].split("{")[0]
        if promql.startswith("count_over_time"):
            return answers.get(("alive", "window"), vector(({}, 5)))
        return answers.get((name, "window" if at == 200.0 else "before"), vector())

    return run, asked


def test_health_from_api_answers_by_hand():
    le = lambda bound: {"route": "predict", "le": bound}  # noqa: E731
    run, asked = fake_prometheus(
        {
            ("hoh_gateway_requests_total", "before"): vector(({"status": "200"}, 100)),
            ("hoh_gateway_requests_total", "window"): matrix(
                ({"status": "200"}, [100, 110, 118]),  # 18 ok
                ({"status": "503"}, [1, 2]),  # 2 new 5xx
                ({"status": "400"}, [1]),
            ),
            ("hoh_gateway_request_seconds_bucket", "window"): matrix(
                (le("0.1"), [10, 19]), (le("1.0"), [20, 21]), (le("+Inf"), [20, 21])
            ),
            ("nv_inference_request_success", "window"): matrix(({"version": "3"}, [4, 9])),
            ("nv_inference_queue_duration_us", "window"): matrix(({"version": "3"}, [0, 4500])),
        }
    )
    result = promsrc.health("http://p:9090", 100.0, 200.0, "hoh", 500.0, 0.05, run=run)
    assert ("count_over_time(hoh_gateway_in_flight[100s])", 200.0) in asked
    assert ('hoh_gateway_requests_total{route="predict",model="hoh"}', 100.0) in asked
    assert result["source"] == "prometheus" and "error" not in result
    assert (result["requests"], result["server_errors"], result["client_errors"]) == (21, 2, 1)
    assert result["successful"] == 18 and result["request_rate"] == pytest.approx(0.21)
    assert result["error_ratio"] == pytest.approx(2 / 21)
    # 21 observations: 19 up to 0.1 s, 21 up to 1 s; p50 rank 10.5 in [0, 0.1]
    assert result["latency_ms"]["p50"] == pytest.approx(100 * 10.5 / 19)
    assert result["latency_ms"]["p95"] == pytest.approx(100 + 900 * (0.95 * 21 - 19) / 2)
    assert result["latency_requests"] == 21
    assert result["triton"] == {
        "successes": 9,
        "failures": 0,
        "queue_ms_mean": pytest.approx(0.5),
        "compute_ms_mean": 0.0,
    }
    assert result["slo_breached"] and result["reasons"] == [
        f"p95 latency {result['latency_ms']['p95']:.0f} ms is above the 500 ms objective "
        "(21 predict requests, gateway histogram)",
        "9.5% of 21 predict requests failed with 5xx (objective: at most 5.0%)",
    ]


def test_no_gateway_series_in_the_window_is_an_error_not_a_quiet_zero():
    run, _ = fake_prometheus({("alive", "window"): vector()})
    result = promsrc.health("http://p:9090", 100.0, 200.0, "hoh", 500.0, 0.01, run=run)
    assert result["requests"] is None and not result["slo_breached"]
    assert "has no hoh_gateway_in_flight samples in the window" in result["error"]


def test_an_unreachable_prometheus_is_named():
    url = f"http://127.0.0.1:{services.free_port()}"
    result = promsrc.health(url, 100.0, 200.0, None, 500.0, 0.01)
    assert result["error"].startswith(f"Prometheus at {url} is not reachable")
    with pytest.raises(promsrc.PrometheusError, match="is not reachable"):
        promsrc.query(url, "up", 1.0, timeout=2)


def _monitor(tmp_path: Path, config: MonitorConfig, audit_dirs=(), now: float = END) -> dict:
    (tmp_path / "captures").mkdir(exist_ok=True)
    (tmp_path / "reference").mkdir(exist_ok=True)
    window = read_window(tmp_path / "captures", DAY, DAY, "3", "hoh")
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    return run_monitor(
        window, "unused", str(tmp_path / "reference"), out, config, audit_dirs=audit_dirs, now=now
    )


def test_monitor_says_service_unknown_or_names_the_fallback(tmp_path):
    url = f"http://127.0.0.1:{services.free_port()}"
    config = MonitorConfig(prometheus_url=url)
    alone = _monitor(tmp_path, config)
    assert alone["service"]["source"] == "prometheus" and alone["service"]["error"]
    assert any(n.startswith("service health unknown: Prometheus at") for n in alone["notes"])
    lines = summary_lines(alone)
    assert lines[0].endswith(", service health UNKNOWN")
    assert any(line.strip().startswith("service: UNKNOWN, Prometheus at") for line in lines)
    audit = write_audit(tmp_path / "audit", day_of_traffic())
    fallback = _monitor(tmp_path, config, audit_dirs=[audit])
    assert fallback["service"]["source"] == "audit_log"
    assert fallback["service"]["requests"] == 22 and fallback["verdict"] == "slo_breached"
    assert any(
        n.startswith("service health from the audit log: Prometheus") for n in fallback["notes"]
    )
    assert "UNKNOWN" not in summary_lines(fallback)[0]


def test_prometheus_url_must_be_a_url_and_the_cli_takes_it(tmp_path, capsys):
    from hoh.cli import main
    from hoh.errors import ExitCode

    with pytest.raises(ValueError, match="prometheus_url"):
        MonitorConfig(prometheus_url="localhost:9090")
    assert MonitorConfig().prometheus_url is None
    base = monitor_argv(tmp_path)
    code = main([*base, "--prometheus", "localhost:9090", "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.USAGE and "--prometheus 'localhost:9090' is not an http" in err
    url = f"http://127.0.0.1:{services.free_port()}"
    code = main([*base, "--prometheus", url, "--out", str(tmp_path / "o2")])
    out = capsys.readouterr().out
    assert code == ExitCode.OK and "service health UNKNOWN" in out
    assert f"service: UNKNOWN, Prometheus at {url} is not reachable" in out


# ---------------------------------------------------------------------- real Prometheus


def scrape_config(path: Path, gateways: list[str], triton_metrics: str) -> Path:
    """A scrape config for this test's processes: every second, the jobs of deploy/prometheus."""
    host = lambda url: url.split("://", 1)[1].split("/", 1)[0]  # noqa: E731
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "hoh-gateway",
                "static_configs": [{"targets": [host(u) for u in gateways]}],
            },
            {"job_name": "hoh-triton", "static_configs": [{"targets": [host(triton_metrics)]}]},
        ],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture
def prometheus_server(tmp_path):
    """Start a real Prometheus on a free loopback port; yields (url, start(config))."""
    binary = services.tool("prometheus", "prometheus")
    started = []

    def start(config: Path) -> str:
        port = services.free_port()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        started.append(services.start_server(argv, port, "prometheus", timeout=60))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def _sum_now(url: str, promql: str) -> float:
    result = promsrc.series(promsrc.query(url, f"sum({promql})", time.time()))
    return result[0][1][0] if result else 0.0


@pytest.mark.e2e
def test_service_health_from_a_real_prometheus_equals_the_traffic_sent(
    triton,  # noqa: F811
    prometheus_server,
    tmp_path,
):
    ok, bad, down = 12, 3, 4
    start = time.time() - 1
    env = {"HOH_GATEWAY_RATE_LIMIT_PER_S": "1000", "HOH_GATEWAY_RATE_LIMIT_BURST": "1000"}
    served = start_gateway(
        tmp_path / "served", ["--triton", triton.server.grpc_url, "--insecure-no-auth"], env=env
    )
    dead = None
    try:
        dead = start_gateway(
            tmp_path / "dead",
            ["--triton", f"127.0.0.1:{services.free_port()}", "--insecure-no-auth"],
            env={**env, "HOH_GATEWAY_TRITON_TIMEOUT_S": "3"},
        )
        config = scrape_config(
            tmp_path / "prometheus.yml", [served.url, dead.url], triton.server.metrics_url
        )
        url = prometheus_server(config)
        headers = {"Content-Type": "image/png"}
        with served.client() as c:
            assert c.get("/metrics").status_code == 200  # no token needed: Prometheus scrapes it
            for i in range(ok):
                r = c.post("/v1/models/hoh/predict", content=png(200 + i), headers=headers)
                assert r.status_code == 200, r.text
            for _ in range(bad):
                r = c.post("/v1/models/hoh/predict", content=b"not an image", headers=headers)
                assert r.status_code == 400, r.text
        with dead.client() as c:
            for i in range(down):
                r = c.post("/v1/models/hoh/predict", content=png(300 + i), headers=headers)
                assert r.status_code == 503, r.text
        # The two jobs are scraped independently: wait until Prometheus holds both the gateways'
        # counts and Triton's count after this traffic, or the window ends before Triton's scrape.
        sel = promsrc.selectors("hoh")
        served_by_triton = triton_count(triton, "nv_inference_request_success")
        deadline = time.monotonic() + 60
        while (
            _sum_now(url, sel["requests"]) < ok + bad + down
            or _sum_now(url, sel["successes"]) < served_by_triton
        ):  # scraped every second
            assert time.monotonic() < deadline, "Prometheus never saw all the requests"
            time.sleep(0.5)
        end = time.time()
        result = promsrc.health(url, start, end, "hoh", 500.0, 0.01)
    finally:
        for gateway in (served, dead):
            if gateway is not None:
                gateway.stop()
    assert "error" not in result, result.get("error")
    assert result["requests"] == ok + bad + down
    assert (result["successful"], result["client_errors"], result["server_errors"]) == (
        ok,
        bad,
        down,
    )
    assert result["error_ratio"] == pytest.approx(down / (ok + bad + down))
    assert result["slo_breached"]  # 21 % of predict requests failed with 5xx
    assert result["latency_ms"]["p95"] > 0 and result["latency_requests"] == ok + bad + down
    assert result["triton"]["successes"] >= 1 and result["triton"]["failures"] == 0
    assert result["triton"]["queue_ms_mean"] is not None
    logged = health(
        read_requests([served.audit_dir, dead.audit_dir], start, end, "hoh"),
        end - start,
        500.0,
        0.01,
    )
    same = ("requests", "successful", "client_errors", "server_errors", "error_ratio")
    assert {k: result[k] for k in same} == {k: logged[k] for k in same}
    # The monitor itself, on today's window, with the Prometheus of this test.
    today = datetime.now(timezone.utc).date()
    (tmp_path / "captures").mkdir()
    (tmp_path / "reference").mkdir()
    summary = run_monitor(
        read_window(tmp_path / "captures", today, today, "3", "hoh"),
        "unused",
        str(tmp_path / "reference"),
        tmp_path / "out",
        MonitorConfig(prometheus_url=url),
        now=end,
    )
    service = summary["service"]
    assert service["source"] == "prometheus" and service["requests"] == ok + bad + down
    assert summary["checks"]["slo_breached"] and summary["verdict"] == "slo_breached"
    textfile = (tmp_path / "out" / "hoh_monitor.prom").read_text()
    assert f'hoh_monitor_requests{{model="hoh",version="3"}} {float(ok + bad + down)!r}' in textfile
    with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as response:
        targets = json.loads(response.read())["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"hoh-gateway", "hoh-triton"}
    with pytest.raises(promsrc.PrometheusError, match=r"answered 400 to sum\(: .*parse error"):
        promsrc.query(url, "sum(", end)
