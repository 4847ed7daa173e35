"""deploy/prometheus/ and deploy/grafana/: the files parse, and every query names real metrics.

The metric names are collected from the code that exports them, never from a list in this file:
the gateway's own registry (`GatewayMetrics`), the Triton families `hoh.serving.metrics` names
(checked against a real Triton's /metrics in the e2e test below) and the series `hoh monitor`
renders into its textfile for a summary with every part filled in. A query naming anything else
(a typo, a metric renamed in the code) fails here instead of drawing an empty panel.
`promtool check` and the rules' unit tests run too, with promtool from PATH or from
.tools/prometheus/bin (`make prometheus`).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import services
import yaml

from hoh.components.monitor import prom
from hoh.serving.gateway.metrics import GatewayMetrics
from hoh.serving.metrics import TRITON_METRICS, parse

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Series Prometheus itself adds to every scrape, and the labels it attaches to every series.
PROMETHEUS_SERIES = {"up": ()}
TARGET_LABELS = {"job", "instance", "component"}

# PromQL words that are not metric names.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def gateway_series() -> dict[str, set[str]]:
    """{series name: label names} of the gateway's registry, as Prometheus stores them."""
    metrics = GatewayMetrics()
    labels = {
        m._name: set(m._labelnames)
        for m in vars(metrics).values()
        if hasattr(m, "_labelnames")  # the metric objects (the registry has no label names)
    }
    out = {}
    for family in metrics.registry.collect():
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            out[family.name + suffix] = labels.get(family.name, set()) | extra
    return out


def full_summary() -> dict:
    """A monitor summary with every part present, so every series `prom` knows is rendered."""
    side = {"images": 40, "mean_confidence": 0.8, "class_share": {"horse": 0.5, "human": 0.5}}
    return {
        "verdict": "drift",
        "checks": {"drift": True, "slo_breached": True, "accuracy_low": True},
        "model": {"name": "hoh", "version": "3"},
        "window": {"end_ts": 1.0},
        "counts": {"days": 1, "result_lines": 40, "served_images": 40, "bad_lines": 0},
        "input_drift": {"drifted_share": 0.25, "embeddings": {"value": 0.1}},
        "prediction_drift": {"served": side, "reference": side},
        "service": {
            "requests": 10,
            "request_rate": 0.1,
            "error_ratio": 0.1,
            "latency_ms": {"p50": 10.0, "p95": 600.0, "p99": 700.0},
            "objective_p95_ms": 500.0,
            "slo_breached": True,
        },
        "online_accuracy": {
            "labels": 30,
            "accuracy": 0.7,
            "per_class": {"horse": {"precision": 0.8, "recall": 0.6}},
            "accuracy_low": True,
        },
    }


def monitor_series() -> dict[str, set[str]]:
    text = prom.render(prom.samples(full_summary(), 2.0))
    out: dict[str, set[str]] = {}
    for sample in parse(text):
        out.setdefault(sample.name, set()).update(sample.labels)
    return out


def exported() -> dict[str, set[str]]:
    series = {**gateway_series(), **monitor_series()}
    series.update({k: set(v) for k, v in {**TRITON_METRICS, **PROMETHEUS_SERIES}.items()})
    return series


def recorded() -> dict[str, str]:
    """{recorded series: its expression} over every rule file."""
    out = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out[rule["record"]] = rule["expr"]
    return out


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched on it) of every series selector in a PromQL
    expression; function names, keywords, grouping labels and Grafana variables are not."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    out = []
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = match.groups()
        if call or name.lower() in _KEYWORDS:
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        out.append((name, labels))
    return out


def check_expr(expr: str, where: str, known: dict[str, set[str]]) -> list[str]:
    problems = []
    for name, labels in selectors(expr):
        if name not in known:
            problems.append(f"{where}: {name} is not a metric hoh exports or records")
            continue
        unknown = labels - known[name] - TARGET_LABELS
        if unknown and not name.count(":"):  # recorded series keep their own labels
            problems.append(f"{where}: {name} has no label(s) {sorted(unknown)}")
    return problems


def test_selectors_are_read_from_promql():
    expr = (
        'sum by (model, le) (rate(hoh_gateway_request_seconds_bucket{route="predict"}[5m])) '
        '/ on (model) group_left hoh:x:rate5m > 0.5 and time() - up{job="a b"} offset 5m'
    )
    assert selectors(expr) == [
        ("hoh_gateway_request_seconds_bucket", {"route"}),
        ("hoh:x:rate5m", set()),
        ("up", {"job"}),
    ]
    assert check_expr("nope_total + up", "t", {"up": set()}) == [
        "t: nope_total is not a metric hoh exports or records"
    ]
    assert check_expr('up{verdict="x"}', "t", {"up": set()}) == [
        "t: up has no label(s) ['verdict']"
    ]


def test_the_metric_sources_are_the_real_ones():
    gateway = gateway_series()
    assert gateway["hoh_gateway_requests_total"] == {"route", "model", "status"}
    assert gateway["hoh_gateway_request_seconds_bucket"] == {"route", "le"}
    assert "process_resident_memory_bytes" in gateway  # the process collector is registered
    monitor = monitor_series()
    assert set(monitor) == set(prom._HELP), "prom declares a series it never renders"
    assert {"quantile"} <= monitor["hoh_monitor_latency_seconds"]


def test_prometheus_config_scrapes_gateway_triton_and_monitor():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"hoh-gateway", "hoh-triton", "hoh-monitor"}
    assert jobs["hoh-triton"]["static_configs"][0]["targets"] == ["hoh-triton:8002"]
    triton_k8s = (ROOT / "deploy" / "k8s" / "triton.yaml").read_text()
    assert "containerPort: 8002" in triton_k8s  # the port the scrape config names
    assert sorted(PROMETHEUS / f for f in config["rule_files"]) == RULE_FILES
    keep = jobs["hoh-monitor"]["metric_relabel_configs"][0]
    assert all(re.fullmatch(keep["regex"], name) for name in monitor_series())


def test_recording_and_alert_rules_name_only_exported_metrics():
    known = exported()
    records = recorded()
    problems = []
    for name, expr in records.items():  # in order: a rule may use the records above it
        problems += check_expr(expr, f"record {name}", known)
        known[name] = set()
    alerts = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts.append(rule)
                    problems += check_expr(rule["expr"], f"alert {rule['alert']}", known)
    assert not problems, "\n".join(problems)
    assert {a["alert"] for a in alerts} >= {
        "HohLatencyP95AboveObjective",
        "HohGatewayErrorRateHigh",
        "HohInputOrPredictionDrift",
        "HohOnlineAccuracyLow",
        "HohMonitorSloBreached",
    }


def test_alert_rules_have_the_documented_fields():
    docs = (ROOT / "docs" / "MONITORING.md").read_text()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in (r for r in group["rules"] if "alert" in r):
                name = rule["alert"]
                assert re.fullmatch(r"Hoh[A-Za-z0-9]+", name), name
                assert rule["labels"]["severity"] in ("page", "ticket"), name
                assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
                assert rule["annotations"]["runbook"] == "docs/MONITORING.md#alerts", name
                assert f"`{name}`" in docs, f"{name} is not described in docs/MONITORING.md"


def test_the_latency_objective_matches_the_config():
    from hoh.config import MonitorConfig

    alerts = yaml.safe_load((PROMETHEUS / "rules" / "hoh-alerts.yml").read_text())
    rule = next(
        r
        for g in alerts["groups"]
        for r in g["rules"]
        if r.get("alert") == "HohLatencyP95AboveObjective"
    )
    objective_s = float(rule["expr"].rsplit(">", 1)[1])
    assert objective_s * 1000 == MonitorConfig().latency_p95_objective_ms


def test_grafana_dashboard_panels_query_exported_metrics():
    known = {**exported(), **{name: set() for name in recorded()}}
    titles, problems = set(), []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            titles.add(panel["title"])
            assert panel["datasource"]["uid"] == "${datasource}" and "datasource" in variables
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                problems += check_expr(target["expr"], f"{path.name}: {panel['title']}", known)
    assert not problems, "\n".join(problems)
    for wanted in (
        "Latency percentiles (predict)",
        "Throughput",
        "Errors",
        "Cache hit ratio",
        "CPU",
        "Memory",
        "Served version",
        "Input drift share",
        "Online accuracy",
    ):
        assert wanted in titles


def test_grafana_provisioning_points_at_the_dashboards():
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "hoh-prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hoh.yml").read_text())
    provider = providers["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert DASHBOARDS


def test_the_rule_unit_tests_feed_only_exported_series():
    """The promtool unit tests (deploy/prometheus/tests/) stand for real traffic only when
    their input series are ones hoh (or Prometheus) really produces."""
    known = exported()
    problems = []
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert sorted((path.parent / f).resolve() for f in spec["rule_files"]) == RULE_FILES
        for case in spec["tests"]:
            for series in case["input_series"]:
                problems += check_expr(series["series"], path.name, known)
    assert not problems, "\n".join(problems)


def test_promtool_accepts_the_config_and_rules_and_their_unit_tests_pass():
    promtool = services.tool("promtool", "prometheus")  # skips without it, fails under CI
    for argv in (
        [promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")],
        [promtool, "check", "rules", *map(str, RULE_FILES)],
        [promtool, "test", "rules", *map(str, RULE_TESTS)],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_triton_exports_every_family_the_deploy_files_use(tmp_path):
    """The Triton names the structural tests trust, against a real server's /metrics (the CPU
    build hoh bundles, a model pushed with the response cache, after a few requests)."""
    import urllib.request

    from tiny_model import build_model_artifact_dir, make_image, run_pusher_executor

    from hoh.serving import server as srv
    from hoh.serving.client import TritonImageClient

    build_model_artifact_dir(tmp_path / "model", class_names=("human", "horse"), seed=0)
    run_pusher_executor(
        tmp_path / "model", tmp_path / "repository", tmp_path / "pushed", response_cache=True
    )
    server = srv.TritonServer(
        tmp_path / "repository",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        log_file=tmp_path / "triton.log",
    )
    try:
        server.start()
        server.wait_ready(timeout=240)
        client = TritonImageClient(server.http_url, protocol="http", timeout=60)
        for _ in range(2):
            client.predict([make_image(1)])
        client.close()
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            samples = parse(response.read().decode())
    finally:
        server.stop()
    seen: dict[str, set[str]] = {}
    for s in samples:
        seen.setdefault(s.name, set()).update(s.labels)
    missing = sorted(set(TRITON_METRICS) - set(seen))
    assert not missing, f"Triton does not export {missing}"
    for name, labels in TRITON_METRICS.items():
        assert set(labels) <= seen[name], name
