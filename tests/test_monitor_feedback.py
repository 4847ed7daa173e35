"""Online accuracy: `POST /v1/feedback` on the gateway (its own scope, stored beside the captures)
and the accuracy, per-class precision/recall and confusion matrix `hoh monitor` computes from it.

The route is exercised on the real app (real JWT checks; Triton is never called by it). Captures
and feedback lines are written with the gateway's own `Capturer.write` and `FeedbackStore`, and
every figure is checked against values worked out by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from gateway_support import AUDIENCE, ISSUER, Keys
from PIL import Image

from hoh.components.monitor.accuracy import online_accuracy, read_feedback, scores
from hoh.components.monitor.monitor import run_monitor, summary_lines
from hoh.components.monitor.window import read_window
from hoh.config import GatewayConfig, MonitorConfig
from hoh.serving.gateway.app import create_app
from hoh.serving.gateway.capture import Capture, Capturer
from hoh.serving.gateway.feedback import FEEDBACK_DIR, FeedbackStore

DAY = date(2026, 12, 1)
RID = "0123456789abcdef0123456789abcdef"


# --- the route --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def _client(tmp_path: Path, keys: Keys, capture: bool = True):
    import warnings

    with warnings.catch_warnings():  # starlette's notice about httpx: it works, not ours to fix
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    settings = GatewayConfig(
        jwks_file=str(keys.write_jwks(tmp_path / "jwks.json")),
        issuer=ISSUER,
        audience=AUDIENCE,
        audit_dir=str(tmp_path / "audit"),
        capture_dir=str(tmp_path / "captures") if capture else None,
        triton_url="127.0.0.1:1",  # never called by these routes
    )
    return TestClient(create_app(settings))


def _auth(keys: Keys, scope: str) -> dict:
    return {"Authorization": f"Bearer {keys.token(scope=scope)}"}


def test_feedback_needs_its_own_scope_and_is_stored_beside_the_captures(tmp_path, keys):
    with _client(tmp_path, keys) as client:
        body = {"request_id": RID, "index": 1, "class": "horse"}
        denied = client.post("/v1/feedback", json=body, headers=_auth(keys, "predict"))
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "insufficient_scope"
        assert client.post("/v1/feedback", json=body).status_code == 401
        ok = client.post("/v1/feedback", json=body, headers=_auth(keys, "feedback"))
        assert ok.status_code == 200, ok.text
        assert ok.json()["stored"] == body
        feedback_id = ok.headers["X-Request-ID"]
        admin = client.post(
            "/v1/feedback", json={"request_id": RID, "class": "human"}, headers=_auth(keys, "admin")
        )
        assert admin.status_code == 200
    [file] = (tmp_path / "captures" / FEEDBACK_DIR).glob("feedback-*.jsonl")
    lines = [json.loads(x) for x in file.read_text().splitlines()]
    assert [(x["request_id"], x["index"], x["class"]) for x in lines] == [
        (RID, 1, "horse"),
        (RID, 0, "human"),
    ]
    assert lines[0]["feedback_id"] == feedback_id
    audit = (tmp_path / "audit").glob("audit-*.jsonl")
    decisions = [json.loads(x) for f in audit for x in f.read_text().splitlines()]
    routes = [(d.get("route"), d.get("status")) for d in decisions if d["kind"] == "decision"]
    assert routes == [("feedback", 403), ("feedback", 401), ("feedback", 200), ("feedback", 200)]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"{not json", "not JSON"),
        (json.dumps({"request_id": "abc", "class": "horse"}).encode(), "32 hex digits"),
        (json.dumps({"request_id": RID, "class": ""}).encode(), "class must be"),
        (json.dumps({"request_id": RID, "class": "x", "index": -1}).encode(), "index must be"),
        (json.dumps({"request_id": RID, "class": "x", "index": True}).encode(), "index must be"),
        (json.dumps({"request_id": RID, "class": "x", "who": 1}).encode(), "unknown field"),
        (json.dumps([RID, "horse"]).encode(), "JSON object"),
        (b"", "JSON object"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(tmp_path, keys, body, needle):
    with _client(tmp_path, keys) as client:
        answer = client.post(
            "/v1/feedback",
            content=body,
            headers={**_auth(keys, "feedback"), "content-type": "application/json"},
        )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "bad_feedback" and needle in error["message"]
    assert not (tmp_path / "captures" / FEEDBACK_DIR).exists()


def test_feedback_without_a_capture_dir_says_so_and_a_huge_body_is_refused(tmp_path, keys):
    with _client(tmp_path, keys, capture=False) as client:
        answer = client.post(
            "/v1/feedback", json={"request_id": RID, "class": "x"}, headers=_auth(keys, "feedback")
        )
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "feedback_disabled"
    with _client(tmp_path, keys) as client:
        answer = client.post(
            "/v1/feedback",
            json={"request_id": RID, "class": "x" * 10_000},
            headers=_auth(keys, "feedback"),
        )
        assert answer.status_code == 413


# --- the figures ------------------------------------------------------------------------------


def test_scores_by_hand():
    pairs = [("horse", "horse")] * 3 + [("horse", "human")] + [("human", "human")] * 2
    pairs += [("human", "horse")]
    result = scores(pairs, ["horse", "human", "zebra"])
    assert result["labels"] == 7 and result["correct"] == 5
    assert result["accuracy"] == pytest.approx(5 / 7)
    horse, human, zebra = (result["per_class"][c] for c in ("horse", "human", "zebra"))
    assert horse == {"precision": 3 / 4, "recall": 3 / 4, "support": 4}
    assert human == {"precision": 2 / 3, "recall": 2 / 3, "support": 3}
    assert zebra == {"precision": None, "recall": None, "support": 0}
    matrix = result["confusion_matrix"]["rows_true_columns_served"]
    assert matrix["horse"] == {"horse": 3, "human": 1, "zebra": 0}
    assert matrix["human"] == {"horse": 1, "human": 2, "zebra": 0}
    assert scores([])["accuracy"] is None


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 20 % 256, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _rid(i: int) -> str:
    return f"{i:032x}"


def captured_window(root: Path, served: list[str], version: str = "3") -> None:
    """One captured image per request `_rid(i)` (index 0), served as `served[i]`."""
    capturer = Capturer(root, rate=1.0, queue_size=1)
    try:
        for i, label in enumerate(served):
            other = "human" if label == "horse" else "horse"
            result = {"class": label, "probability": 0.9, "probabilities": {label: 0.9, other: 0.1}}
            image = _png(i)
            when = datetime(2026, 12, 1, 12, 0, i % 60, tzinfo=timezone.utc)
            capturer.write(
                Capture(
                    _rid(i),
                    0,
                    "hoh",
                    version,
                    image,
                    hashlib.sha256(image).hexdigest(),
                    result,
                    when,
                )
            )
    finally:
        capturer.close()


def feed_back(root: Path, labels: list[tuple[str, int, str]]) -> None:
    store = FeedbackStore(root)
    for n, (rid, index, label) in enumerate(labels):
        store.append({"request_id": rid, "index": index, "class": label}, f"{n:032x}")


@pytest.fixture
def labelled(tmp_path):
    """12 served images: 0-7 served horse, 8-11 served human. Truth: 0-5 horse, 6-7 human
    (wrong), 8-10 human, 11 horse (wrong); image 3 first labelled human then corrected to
    horse; a label for a request the window did not capture; one torn line."""
    root = tmp_path / "captures"
    captured_window(root, ["horse"] * 8 + ["human"] * 4)
    truth = ["horse"] * 6 + ["human"] * 2 + ["human"] * 3 + ["horse"]
    feed_back(root, [(_rid(3), 0, "human")])
    feed_back(root, [(_rid(i), 0, t) for i, t in enumerate(truth)])
    feed_back(root, [(_rid(99), 0, "horse")])
    with open(next((root / FEEDBACK_DIR).glob("*.jsonl")), "a") as f:
        f.write('{"request_id": "00", "class"\n')
    return root


def test_online_accuracy_of_a_window_by_hand(labelled):
    labels, bad = read_feedback(labelled)
    assert labels[(_rid(3), 0)] == "horse"  # the correction wins
    assert len(bad) == 1 and bad[0]["line"].endswith(":15")
    window = read_window(labelled, DAY, DAY, "3", "hoh")
    result = online_accuracy(window, min_accuracy=0.8, min_labels=10)
    # served horse: 8, of which truly horse 6 -> precision 6/8; truly horse 7 -> recall 6/7
    # served human: 4, of which truly human 3 -> precision 3/4; truly human 5 -> recall 3/5
    assert result["labels"] == 12 and result["correct"] == 9
    assert result["accuracy"] == pytest.approx(9 / 12)
    assert result["per_class"]["horse"] == {"precision": 6 / 8, "recall": 6 / 7, "support": 7}
    assert result["per_class"]["human"] == {"precision": 3 / 4, "recall": 3 / 5, "support": 5}
    matrix = result["confusion_matrix"]["rows_true_columns_served"]
    assert matrix == {"horse": {"horse": 6, "human": 1}, "human": {"horse": 2, "human": 3}}
    assert result["unmatched"] == 1 and result["bad_line_count"] == 1
    assert result["accuracy_low"] and result["judged"]
    assert result["reasons"] == [
        "online accuracy 75.0% on 12 fed-back labels is below monitor.min_accuracy=80%"
    ]
    few = online_accuracy(window, min_accuracy=0.8, min_labels=13)
    assert not few["accuracy_low"] and not few["judged"] and few["accuracy"] == 0.75


def test_no_feedback_is_no_accuracy(tmp_path):
    captured_window(tmp_path / "c", ["horse"] * 3)
    window = read_window(tmp_path / "c", DAY, DAY, "3", "hoh")
    assert online_accuracy(window, 0.8, 1) is None


def test_low_accuracy_is_the_verdict_in_summary_textfile_and_fires_the_trigger(labelled, tmp_path):
    (tmp_path / "reference").mkdir()
    window = read_window(labelled, DAY, DAY, "3", "hoh")
    started = []
    config = MonitorConfig(min_feedback=10, label_batch=False, on_alert="local")
    summary = run_monitor(
        window,
        "no-model-needed",  # 12 images < min_images: no drift test, no model loaded
        str(tmp_path / "reference"),
        tmp_path / "out",
        config,
        launcher=lambda argv, log, wait: started.append(argv) or {"pid": 7},
    )
    assert summary["verdict"] == "accuracy_low"
    assert summary["checks"] == {"drift": False, "accuracy_low": True, "slo_breached": False}
    assert summary["trigger"]["fired"] and summary["trigger"]["why"] == ["accuracy_low"]
    assert len(started) == 1
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["online_accuracy"]["accuracy"] == 0.75
    text = (tmp_path / "out" / "hoh_monitor.prom").read_text()
    assert 'hoh_monitor_online_accuracy{model="hoh",version="3"} 0.75' in text
    assert 'hoh_monitor_feedback_labels{model="hoh",version="3"} 12.0' in text
    assert 'hoh_monitor_class_recall{class="human",model="hoh",version="3"} 0.6' in text
    assert 'hoh_monitor_accuracy_low{model="hoh",version="3"} 1.0' in text
    lines = summary_lines(summary)
    assert lines[0].startswith("monitor: ACCURACY_LOW")
    assert any("online accuracy: 75.0% on 12 fed-back labels" in x for x in lines)
