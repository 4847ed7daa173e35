"""The retraining trigger: fires once on drift or low accuracy, respects the cooldown, records
why, and refuses a state file it cannot read. The launcher is a fake that records the command;
one test starts a real (harmless) subprocess through the default launcher."""

from __future__ import annotations

import json
import sys

import pytest

from hoh.components.monitor import trigger
from hoh.errors import UsageError

HOUR = 3600.0
T0 = 1_796_256_000.0
DRIFT = {"drift": True, "accuracy_low": False, "slo_breached": False}
REASONS = ["4 of 12 descriptors drifted (brightness, mean_r, ...)"]


class FakeLauncher:
    def __init__(self, result: dict | None = None):
        self.calls: list[tuple[list[str], bool]] = []
        self.result = result or {"pid": 4242}

    def __call__(self, argv, log, wait):
        self.calls.append((argv, wait))
        return dict(self.result)


def fire(tmp_path, launcher, now, checks=DRIFT, mode="local", cooldown=24.0, args=("--x",)):
    return trigger.maybe_fire(
        checks,
        REASONS,
        next((k for k, v in checks.items() if v), "ok"),
        mode,
        list(args),
        cooldown,
        tmp_path / "state" / "trigger.json",
        tmp_path / "retrain.log",
        now,
        launcher,
    )


def test_fires_once_then_respects_the_cooldown_and_records_why(tmp_path):
    launcher = FakeLauncher()
    first = fire(tmp_path, launcher, T0)
    assert first["fired"] and first["why"] == ["drift"] and first["pid"] == 4242
    argv, wait = launcher.calls[0]
    assert argv[-3:] == ["hoh.cli", "run", "--x"] and argv[0] == sys.executable and not wait
    state = json.loads((tmp_path / "state" / "trigger.json").read_text())
    [firing] = state["fired"]
    assert firing["ts"] == T0 and firing["time"] == "2026-12-03T00:00:00+00:00"
    assert firing["verdict"] == "drift" and firing["reasons"] == REASONS
    assert firing["command"] == argv and firing["pid"] == 4242
    # The drift persists: the next windows inside the cooldown do not start another run.
    second = fire(tmp_path, launcher, T0 + 6 * HOUR)
    assert not second["fired"] and len(launcher.calls) == 1
    assert second["skipped"] == (
        "cooldown: fired at 2026-12-03T00:00:00+00:00, 6.0 h ago (monitor.cooldown_hours=24); "
        "next possible at 2026-12-04T00:00:00+00:00"
    )
    third = fire(tmp_path, launcher, T0 + 24 * HOUR)  # the cooldown is over
    assert third["fired"] and len(launcher.calls) == 2
    state = json.loads((tmp_path / "state" / "trigger.json").read_text())
    assert [f["ts"] for f in state["fired"]] == [T0, T0 + 24 * HOUR]


def test_only_drift_and_low_accuracy_fire(tmp_path):
    launcher = FakeLauncher()
    slow = {"drift": False, "accuracy_low": False, "slo_breached": True}
    result = fire(tmp_path, launcher, T0, checks=slow)
    assert not result["fired"] and "nothing that retraining would fix" in result["skipped"]
    low = {"drift": False, "accuracy_low": True, "slo_breached": True}
    assert fire(tmp_path, launcher, T0, checks=low)["why"] == ["accuracy_low"]
    assert fire(tmp_path, launcher, T0, mode="none") is None
    assert len(launcher.calls) == 1


def test_kubeflow_submits_with_the_kfp_client_and_a_failed_submit_is_not_a_firing(tmp_path):
    with pytest.raises(UsageError, match="needs the Kubeflow Pipelines API"):
        fire(tmp_path, FakeLauncher(), T0, mode="kubeflow", args=["--package", "p.yaml"])
    failed = FakeLauncher({"returncode": 1, "output": "hoh: error: cannot reach"})
    result = fire(tmp_path, failed, T0, mode="kubeflow", args=["--host", "http://kfp"])
    assert not result["fired"] and result["error"] == "exit status 1"
    assert not (tmp_path / "state" / "trigger.json").exists()  # the next window tries again
    ok = FakeLauncher({"returncode": 0, "output": "run: 1234"})
    result = fire(tmp_path, ok, T0 + 1, mode="kubeflow", args=["--host=http://kfp"])
    argv, wait = ok.calls[0]
    assert result["fired"] and argv[-4:] == ["hoh.cli", "kfp", "submit", "--host=http://kfp"]
    assert wait  # a submission is quick: its output is recorded


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "cannot be read"),
        ('{"fired": {"ts": 1}}', "not a hoh trigger state"),
        ('{"fired": [{"time": "yesterday"}]}', "not a hoh trigger state"),
        ("[]", "not a hoh trigger state"),
    ],
)
def test_a_bad_state_file_is_a_clear_error_and_nothing_starts(tmp_path, content, needle):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "trigger.json").write_text(content)
    launcher = FakeLauncher()
    with pytest.raises(UsageError, match=needle) as err:
        fire(tmp_path, launcher, T0)
    assert "trigger.json" in str(err.value) and "\n" not in str(err.value)
    assert not launcher.calls


def test_the_default_launcher_starts_a_detached_process_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "print('retraining would start here')"]
    started = trigger.launch(argv, tmp_path / "retrain.log", wait=False)
    import os

    os.waitpid(started["pid"], 0)  # our own child: reap it
    assert (tmp_path / "retrain.log").read_text() == "retraining would start here\n"
    waited = trigger.launch(argv, tmp_path / "submit.log", wait=True)
    assert waited["returncode"] == 0 and "would start" in waited["output"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--trigger-args", "'--data"], "--trigger-args"),
        (["--on-alert", "kubeflow", "--trigger-args", "--package p.yaml"], "needs the Kubeflow"),
        (["--on-alert", "local", "--trigger-state", "{state}"], "not a hoh trigger state"),
        (["--on-alert", "local", "--cooldown-hours", "-1"], "--cooldown-hours"),
    ],
)
def test_cli_trigger_settings_fail_first_in_one_line(tmp_path, capsys, extra, needle):
    from hoh.cli import main
    from hoh.errors import ExitCode

    (tmp_path / "captures").mkdir()
    (tmp_path / "reference").mkdir()
    (tmp_path / "state.json").write_text('{"fired": "yesterday"}')
    model = tmp_path / "repo" / "hoh" / "3"
    (model / "model.savedmodel").mkdir(parents=True)
    code = main(
        [
            "monitor",
            "--capture", str(tmp_path / "captures"),
            "--model", str(model),
            "--reference", str(tmp_path / "reference"),
            "--out", str(tmp_path / "out"),
            *[x.replace("{state}", str(tmp_path / "state.json")) for x in extra],
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.USAGE and needle in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing was done before the error
