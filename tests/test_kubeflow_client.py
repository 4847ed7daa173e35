"""`hoh kfp submit | schedule` against a local stand-in of the KFP v2beta1 API
(tests/kfp_fake_server.py).

There is no Kubeflow cluster here: what is checked is what the kfp SDK, driven by hoh, sends to
the documented REST endpoints - the uploaded package, the parameters, the cron, the credentials -
and that mistakes are refused before the first request.
"""

from __future__ import annotations

import json

import pytest
import yaml
from kfp_fake_server import FakeKfpServer
from test_kubeflow_compile import compile_args

from hoh.cli import main

TOKEN = "t0k3n-for-tests"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    output = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    assert main(compile_args(output)) == 0
    return output


@pytest.fixture
def kfp():
    with FakeKfpServer() as server:
        yield server


def _run(*args: str) -> int:
    return main(["kfp", *args])


def test_submit_uploads_the_compiled_pipeline_and_starts_a_run(kfp, package, capsys):
    assert (
        _run(
            "submit",
            "--host",
            kfp.url,
            "--package",
            str(package),
            "--experiment",
            "nightly",
            "--param",
            "data_root=gs://lake/horses",
            "--param",
            "span=3",
            "--token",
            TOKEN,
        )
        == 0
    )
    (upload,) = kfp.calls("POST", "/pipelines/upload")
    assert (
        upload.files["uploadfile"] == package.read_bytes()
    )  # the compiled pipeline, byte for byte
    assert upload.query["name"] == "hoh"
    (run,) = kfp.calls("POST", "/runs")
    version = kfp.versions[upload_pipeline_id(kfp)][0]
    assert run.json["pipeline_version_reference"] == {
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    from hoh.pipeline.factory import span_range_config
    from hoh.pipeline.pipeline import as_runtime_parameter

    assert run.json["runtime_config"]["parameters"] == {
        "data_root": "gs://lake/horses",
        "range_config": as_runtime_parameter("range_config", span_range_config(3)).default,
    }
    assert json.loads(run.json["runtime_config"]["parameters"]["range_config"])["static_range"] == {
        "start_span_number": 3,
        "end_span_number": 3,
    }
    assert run.json["experiment_id"] == next(iter(kfp.experiments))
    assert next(iter(kfp.experiments.values()))["display_name"] == "nightly"
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)
    out = capsys.readouterr().out
    run_id = next(iter(kfp.runs))
    assert f"run {run_id}" in out and f"{kfp.url}/#/runs/details/{run_id}" in out


def upload_pipeline_id(kfp: FakeKfpServer) -> str:
    return next(iter(kfp.pipelines))


def test_a_second_submit_adds_a_version_of_the_same_pipeline(kfp, package):
    for _ in range(2):
        assert _run("submit", "--host", kfp.url, "--package", str(package)) == 0
    assert len(kfp.pipelines) == 1 and len(kfp.calls("POST", "/pipelines/upload_version")) == 1
    versions = kfp.versions[upload_pipeline_id(kfp)]
    assert [v["package"] for v in versions] == [package.read_text()] * 2
    runs = [r.json for r in kfp.calls("POST", "/runs")]
    assert [r["pipeline_version_reference"]["pipeline_version_id"] for r in runs] == [
        v["pipeline_version_id"] for v in versions
    ]
    assert all(r["runtime_config"].get("parameters", {}) == {} for r in runs)  # compiled defaults


def test_cache_flags_reach_the_uploaded_spec_and_never_cache_track_run(kfp, package):
    """The kfp client drops `enable_caching` for a run of an uploaded version, so --cache and
    --no-cache are written into the uploaded spec; TrackRun stays uncached either way."""

    def uploaded_caching(index: int) -> dict:
        text = kfp.versions[upload_pipeline_id(kfp)][index]["package"]
        assert text.startswith("# hoh pipeline hoh for Kubeflow Pipelines v2")
        tasks = yaml.safe_load(text)["root"]["dag"]["tasks"]
        return {name: task["cachingOptions"]["enableCache"] for name, task in tasks.items()}

    compiled = package.read_bytes()
    assert _run("submit", "--host", kfp.url, "--package", str(package), "--no-cache") == 0
    assert not any(uploaded_caching(0).values())
    cron = ["--cron", "0 0 3 * * *"]
    assert _run("schedule", "--host", kfp.url, "--package", str(package), *cron, "--cache") == 0
    caching = uploaded_caching(1)
    assert caching.pop("TrackRun") is False and all(caching.values())
    assert package.read_bytes() == compiled  # the user's file is left as compiled


def test_schedule_sends_the_cron_and_parameters_as_given(kfp, package, capsys):
    assert (
        _run(
            "schedule",
            "--host",
            kfp.url,
            "--package",
            str(package),
            "--cron",
            "0 30 2 * * MON-FRI",
            "--param",
            "data_root=/mnt/lake",
            "--max-concurrency",
            "1",
            "--name",
            "nightly-retrain",
            "--pipeline-root",
            "gs://other/root",
        )
        == 0
    )
    (job,) = kfp.calls("POST", "/recurringruns")
    assert job.json["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * MON-FRI"}}
    assert job.json["runtime_config"] == {
        "parameters": {"data_root": "/mnt/lake"},
        "pipeline_root": "gs://other/root",
    }
    assert job.json["max_concurrency"] == 1 and job.json["no_catchup"] is True
    assert job.json["mode"] == "ENABLE" and job.json["display_name"] == "nightly-retrain"
    assert kfp.calls("POST", "/pipelines/upload")[0].files["uploadfile"] == package.read_bytes()
    job_id = next(iter(kfp.recurring_runs))
    out = capsys.readouterr().out
    assert f"recurring run {job_id}" in out and f"{kfp.url}/#/recurringrun/details/{job_id}" in out


def test_schedule_with_catchup_and_concurrency(kfp, package):
    assert (
        _run(
            "schedule",
            "--host",
            kfp.url,
            "--package",
            str(package),
            "--cron",
            "@daily",
            "--catchup",
            "--max-concurrency",
            "2",
        )
        == 0
    )
    (job,) = kfp.calls("POST", "/recurringruns")
    assert job.json["no_catchup"] is False and job.json["max_concurrency"] == 2
    assert job.json["trigger"]["cron_schedule"]["cron"] == "@daily"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["schedule", "--cron", "0 3 * * *"], "Kubeflow Pipelines wants 6 with seconds first"),
        (["schedule", "--cron", "0 0 3 * * *", "--max-concurrency", "0"], "--max-concurrency"),
        (["submit", "--param", "epoch=5"], "no such parameter"),
        (["submit", "--param", "span"], "NAME=VALUE"),
        (["submit", "--token", "a", "--token-file", "b"], "not both"),
    ],
)
def test_mistakes_are_refused_before_any_request(kfp, package, capsys, args, needle):
    assert _run(*args, "--host", kfp.url, "--package", str(package)) == 2
    assert needle in capsys.readouterr().err
    assert kfp.requests == []


def test_a_bad_cron_is_refused_before_compiling_or_any_request(kfp, capsys, tmp_path):
    """No --package: the flags are checked before a minute of compiling."""
    assert _run("schedule", "--host", kfp.url, "--cron", "*/5 * * * *", "--profile", "tiny") == 2
    assert "6 with seconds first" in capsys.readouterr().err and kfp.requests == []


def test_server_errors_are_one_line(kfp, package, capsys):
    url = kfp.url
    kfp.stop()  # nothing listens there any more
    assert (
        _run("submit", "--host", url, "--package", str(package)) == 1
    )  # ExitCode.FAILED: retry later
    err = capsys.readouterr().err
    assert "cannot reach Kubeflow Pipelines" in err and "Traceback" not in err


def test_parameter_shortcuts_rewrite_the_compiled_defaults(kfp, package):
    """`--param epochs=5` sends trainer_config = the compiled one with training.epochs 5."""
    args = compile_args(package)[2:-2]  # the compile flags, without "kfp compile" and --output
    assert (
        _run(
            "submit",
            "--host",
            kfp.url,
            "--package",
            str(package),
            *args,
            "--param",
            "epochs=5",
            "--param",
            "min_auc=0.8",
        )
        == 0
    )
    sent = kfp.calls("POST", "/runs")[0].json["runtime_config"]["parameters"]
    defaults = {
        name: p["defaultValue"]
        for name, p in yaml.safe_load(package.read_text())["root"]["inputDefinitions"][
            "parameters"
        ].items()
    }
    assert set(sent) == {"trainer_config", "eval_config"}
    trainer, compiled = json.loads(sent["trainer_config"]), json.loads(defaults["trainer_config"])
    assert trainer["training"]["epochs"] == 5
    compiled["training"]["epochs"] = 5
    assert trainer == compiled  # nothing else changed
    auc = next(
        m
        for spec in json.loads(sent["eval_config"])["metrics_specs"]
        for m in spec["metrics"]
        if m["class_name"] == "AUC"
    )
    assert auc["per_slice_thresholds"][0]["threshold"]["value_threshold"]["lower_bound"] == 0.8
    assert sent["eval_config"].replace("0.8", "0.0") == defaults["eval_config"]  # only that changed


# --- credentials: from the environment or a file, never echoed, warned about in clear text ------

SECRET = "s3cr3t-session-value-7f3a"


def _submit(kfp, package, *extra: str) -> int:
    return _run("submit", "--host", kfp.url, "--package", str(package), *extra)


def test_token_from_the_environment_reaches_the_server(kfp, package, capsys, monkeypatch):
    monkeypatch.setenv("HOH_KFP_TOKEN", TOKEN)
    assert _submit(kfp, package) == 0
    assert kfp.requests and all(
        r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests
    )
    captured = capsys.readouterr()
    assert "--token shows" not in captured.err  # no flag, no warning about flags
    assert TOKEN not in captured.out + captured.err


def test_token_flag_still_works_but_warns_that_ps_shows_it(kfp, package, capsys):
    assert _submit(kfp, package, "--token", TOKEN) == 0
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in kfp.requests)
    captured = capsys.readouterr()
    assert "hoh: warning: --token shows the token" in captured.err
    assert "HOH_KFP_TOKEN" in captured.err and TOKEN not in captured.out + captured.err


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_the_cookie_is_sent_from_a_file_the_environment_or_the_flag(
    kfp, package, capsys, monkeypatch, tmp_path, source
):
    cookie = f"authservice_session={SECRET}"
    if source == "file":
        (tmp_path / "cookie").write_text(cookie + "\n")
        args = ["--cookie-file", str(tmp_path / "cookie")]
    elif source == "env":
        monkeypatch.setenv("HOH_KFP_COOKIE", cookie)
        args = []
    else:
        args = ["--cookie", cookie]
    assert _submit(kfp, package, *args) == 0
    assert kfp.requests and all(r.headers.get("cookie") == cookie for r in kfp.requests)
    captured = capsys.readouterr()
    assert ("--cookie shows the session" in captured.err) == (source == "flag")
    assert SECRET not in captured.out + captured.err


@pytest.mark.parametrize("source", ["file", "env", "flag"])
@pytest.mark.parametrize("bad", [SECRET, f"{SECRET}\r\nX-Injected: 1", f"=x{SECRET}"])
def test_a_malformed_cookie_is_refused_without_showing_it(
    kfp, package, capsys, monkeypatch, tmp_path, source, bad
):
    if source == "file":
        (tmp_path / "cookie").write_text(bad)
        args = ["--cookie-file", str(tmp_path / "cookie")]
    elif source == "env":
        monkeypatch.setenv("HOH_KFP_COOKIE", bad)
        args = []
    else:
        args = ["--cookie", bad]
    assert _submit(kfp, package, *args) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert {"file": "--cookie-file", "env": "$HOH_KFP_COOKIE", "flag": "--cookie"}[source] in (
        captured.err
    )
    assert "Traceback" not in captured.err and kfp.requests == []


def test_a_token_with_a_line_break_is_refused_without_showing_it(kfp, package, capsys, monkeypatch):
    monkeypatch.setenv("HOH_KFP_TOKEN", f"{SECRET}\nX-Injected: 1")
    assert _submit(kfp, package) == 2
    captured = capsys.readouterr()
    assert "line break" in captured.err and SECRET not in captured.out + captured.err
    assert kfp.requests == []


def test_credentials_over_plain_http_warn_and_none_do_not(kfp, package, capsys, monkeypatch):
    monkeypatch.setenv("HOH_KFP_TOKEN", TOKEN)
    assert _submit(kfp, package) == 0
    assert f"credentials are sent unencrypted to {kfp.url}" in capsys.readouterr().err
    monkeypatch.delenv("HOH_KFP_TOKEN")
    assert _submit(kfp, package) == 0
    assert "unencrypted" not in capsys.readouterr().err


def test_https_with_credentials_does_not_warn():
    from hoh.pipeline.kfp.client import Auth, transport_warning

    assert transport_warning("https://kfp.example.com/pipeline", Auth(token=TOKEN)) is None
    assert "unencrypted" in transport_warning("http://kfp.example.com", Auth(cookie="a=b"))


def test_a_password_in_the_host_url_is_refused_without_showing_it(kfp, package, capsys):
    host = kfp.url.replace("http://", f"http://admin:{SECRET}@")
    assert _run("submit", "--host", host, "--package", str(package)) == 2
    captured = capsys.readouterr()
    assert "user name or password in the URL" in captured.err
    assert SECRET not in captured.out + captured.err and kfp.requests == []


def test_secrets_stay_out_of_repr(tmp_path):
    from hoh.pipeline.kfp.client import read_auth

    (tmp_path / "cookie").write_text(f"session={SECRET}")
    auth, warnings = read_auth(token=TOKEN, cookie_file=str(tmp_path / "cookie"), environ={})
    assert auth.token == TOKEN and auth.cookie == f"session={SECRET}" and len(warnings) == 1
    assert TOKEN not in repr(auth) and SECRET not in repr(auth)


# ------------------------------------------------------------------ runs: wait, list

FAST = ["--set", "kubeflow.wait_poll_s=0.01"]


def test_submit_wait_follows_the_run_to_its_end(kfp, package, capsys):
    assert _run("submit", "--host", kfp.url, "--package", str(package), "--wait", *FAST) == 0
    run_id = next(iter(kfp.runs))
    out = capsys.readouterr().out.splitlines()
    assert out[-3:-1] == [f"run {run_id}: RUNNING", f"run {run_id}: SUCCEEDED"]
    assert out[-1].split()[2:5] == ["SUCCEEDED", "0m00s", run_id]
    assert len(kfp.calls("GET", f"/runs/{run_id}")) == 2


def test_submit_wait_fails_with_the_runs_error(kfp, package, capsys):
    kfp.final_state, kfp.final_error = "FAILED", "Trainer: OOMKilled"
    assert _run("submit", "--host", kfp.url, "--package", str(package), "--wait", *FAST) == 1
    run_id = next(iter(kfp.runs))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"hoh: error: run {run_id} ended FAILED: Trainer: OOMKilled (")
    assert f"/#/runs/details/{run_id})" in err[-1]


def test_submit_wait_gives_up_after_the_timeout_and_says_the_run_goes_on(kfp, package, capsys):
    kfp.final_state = "RUNNING"
    limits = ["--set", "kubeflow.wait_timeout_s=0.2", *FAST]
    assert _run("submit", "--host", kfp.url, "--package", str(package), "--wait", *limits) == 1
    err = capsys.readouterr().err
    assert "still RUNNING after 0.2 s (kubeflow.wait_timeout_s); it goes on in Kubeflow" in err


def test_kfp_runs_lists_the_newest_runs_of_an_experiment(kfp, package, capsys):
    for experiment in ("nightly", "nightly", "adhoc"):
        args = ("--package", str(package), "--experiment", experiment)
        assert _run("submit", "--host", kfp.url, *args) == 0
    capsys.readouterr()
    first, second, third = kfp.runs
    kfp.runs[first]["created_at"] = "2026-12-01T10:00:00Z"
    kfp.runs[second].update(created_at="2026-12-02T10:00:00Z", state="FAILED")
    kfp.runs[second].update(finished_at="2026-12-02T10:30:00Z", error={"message": "Evaluator"})
    assert _run("runs", "--host", kfp.url, "--experiment", "nightly") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[4] for line in lines] == [second, first]  # newest first
    assert lines[0].split()[:4] == ["2026-12-02", "10:00", "FAILED", "30m00s"]
    assert lines[0].endswith("Evaluator") and lines[1].split()[2:4] == ["PENDING", "-"]
    assert _run("runs", "--host", kfp.url, "--limit", "1") == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert _run("runs", "--host", kfp.url, "--experiment", "nope") == 1
    assert "has no experiment 'nope'" in capsys.readouterr().err
    assert _run("runs", "--host", kfp.url, "--limit", "0") == 2
    assert "--limit 0: give a number of runs, at least 1" in capsys.readouterr().err
    assert third  # the adhoc run is listed only without --experiment
