"""A small stand-in for the Kubeflow Pipelines v2beta1 REST API, on 127.0.0.1 and a free port.

It implements what the kfp SDK calls to upload a pipeline (or a new version), get or create an
experiment, create a run and create a recurring run, list runs and read one; answers like the
real API server (enough for the SDK's response models), and records every request so tests can
check what arrived: the uploaded file, the cron, the parameters, the auth header. There is no
KFP cluster on the machines this project is tested on; this is what `hoh kfp` is tested against.

    with FakeKfpServer() as kfp:
        ... kfp.url ...
        kfp.requests  # [Recorded(method, path, query, headers, body, json, files)]
"""

from __future__ import annotations

import dataclasses
import datetime
import email.parser
import email.policy
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any = None
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _multipart_files(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def _display_name_filter(query: dict[str, str]) -> Optional[str]:
    """The `display_name EQUALS x` predicate the SDK sends to find a pipeline / experiment."""
    if not query.get("filter"):
        return None
    for predicate in json.loads(query["filter"]).get("predicates", []):
        if predicate.get("key") == "display_name":
            return predicate.get("stringValue") or predicate.get("string_value")
    return None


class FakeKfpServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        # How a run goes on as it is read: PENDING -> RUNNING -> final_state (with final_error);
        # a final_state that is not final (RUNNING) never ends, for timeouts.
        self.final_state = "SUCCEEDED"
        self.final_error: Optional[str] = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeKfpServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self, "POST")

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-kfp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FakeKfpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    # ------------------------------------------------------------------ request handling

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        content_type = handler.headers.get("Content-Type", "")
        headers = {k.lower(): v for k, v in handler.headers.items()}  # HTTP names are case-blind
        record = Recorded(method, parts.path, query, headers, body)
        if content_type.startswith("application/json") and body:
            record.json = json.loads(body)
        elif content_type.startswith("multipart/form-data"):
            record.files = _multipart_files(content_type, body)
        with self._lock:
            self.requests.append(record)
            route = self._route(method, parts.path)
            status, answer = (
                route(record) if route else (404, {"error": f"no route {method} {parts.path}"})
            )
        payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, method: str, path: str) -> Optional[Callable[[Recorded], tuple[int, Any]]]:
        if not path.startswith(API):
            return None
        path = path[len(API) :]
        routes = {
            ("GET", "/healthz"): lambda r: (200, {"multi_user": False}),
            ("GET", "/pipelines"): self._list_pipelines,
            ("POST", "/pipelines/upload"): self._upload_pipeline,
            ("POST", "/pipelines/upload_version"): self._upload_version,
            ("GET", "/experiments"): self._list_experiments,
            ("POST", "/experiments"): self._create_experiment,
            ("POST", "/runs"): self._create_run,
            ("GET", "/runs"): self._list_runs,
            ("POST", "/recurringruns"): self._create_recurring_run,
        }
        if (method, path) in routes:
            return routes[(method, path)]
        segments = path.strip("/").split("/")
        if method == "GET" and len(segments) == 2 and segments[0] == "runs":
            return lambda r: self._get_run(segments[1])
        if (
            method == "GET"
            and len(segments) == 3
            and segments[0] == "pipelines"
            and segments[2] == "versions"
        ):
            return lambda r: self._list_versions(segments[1])
        return None

    def _list_pipelines(self, r: Recorded) -> tuple[int, Any]:
        name = _display_name_filter(r.query)
        found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
        return 200, {"pipelines": found, "total_size": len(found)} if found else {}

    def _add_version(self, pipeline_id: str, name: str, package: bytes) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._id("version"),
            "display_name": name,
            "created_at": _now(),
            "package": package.decode("utf-8"),
        }
        self.versions.setdefault(pipeline_id, []).append(version)
        return version

    def _upload_pipeline(self, r: Recorded) -> tuple[int, Any]:
        name = r.query.get("name", "")
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return 409, {"error": f"pipeline {name} exists"}
        pipeline = {"pipeline_id": self._id("pipeline"), "display_name": name, "created_at": _now()}
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, r.files["uploadfile"])
        return 200, pipeline

    def _upload_version(self, r: Recorded) -> tuple[int, Any]:
        pipeline_id = r.query.get("pipelineid", "")
        if pipeline_id not in self.pipelines:
            return 404, {"error": f"no pipeline {pipeline_id}"}
        version = self._add_version(pipeline_id, r.query.get("name", ""), r.files["uploadfile"])
        return 200, {k: v for k, v in version.items() if k != "package"}

    def _list_versions(self, pipeline_id: str) -> tuple[int, Any]:
        versions = sorted(
            self.versions.get(pipeline_id, []), key=lambda v: v["pipeline_version_id"], reverse=True
        )
        shown = [{k: v for k, v in version.items() if k != "package"} for version in versions]
        return 200, {"pipeline_versions": shown, "total_size": len(shown)}

    def _list_experiments(self, r: Recorded) -> tuple[int, Any]:
        name = _display_name_filter(r.query)
        found = [e for e in self.experiments.values() if name is None or e["display_name"] == name]
        return 200, {"experiments": found, "total_size": len(found)} if found else {}

    def _create_experiment(self, r: Recorded) -> tuple[int, Any]:
        experiment = {**r.json, "experiment_id": self._id("experiment"), "created_at": _now()}
        self.experiments[experiment["experiment_id"]] = experiment
        return 200, experiment

    def _create_run(self, r: Recorded) -> tuple[int, Any]:
        run = {**r.json, "run_id": self._id("run"), "created_at": _now(), "state": "PENDING"}
        self.runs[run["run_id"]] = run
        return 200, run

    def _list_runs(self, r: Recorded) -> tuple[int, Any]:
        experiment = r.query.get("experiment_id")
        found = [
            run for run in self.runs.values() if experiment in (None, run.get("experiment_id"))
        ]
        if r.query.get("sort_by") == "created_at desc":
            found.sort(key=lambda run: run["created_at"], reverse=True)
        found = found[: int(r.query.get("page_size") or 10)]
        return 200, {"runs": found, "total_size": len(found)} if found else {}

    def _get_run(self, run_id: str) -> tuple[int, Any]:
        run = self.runs.get(run_id)
        if run is None:
            return 404, {"error": f"no run {run_id}"}
        if run["state"] == "PENDING":
            run["state"] = "RUNNING"
        elif run["state"] == "RUNNING" and self.final_state != "RUNNING":
            run.update(state=self.final_state, finished_at=_now())
            if self.final_error:
                run["error"] = {"code": 2, "message": self.final_error}
        return 200, run

    def _create_recurring_run(self, r: Recorded) -> tuple[int, Any]:
        job = {
            **r.json,
            "recurring_run_id": self._id("recurring-run"),
            "created_at": _now(),
            "status": "ENABLED",
        }
        self.recurring_runs[job["recurring_run_id"]] = job
        return 200, job
