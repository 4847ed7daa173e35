"""The Triton repository writer (components/triton_pusher/repository.py), without a server.

A fake SavedModel (any `saved_model.pb` + the Trainer's `assets.extra/`) is enough here: the
writer never loads the model, so these tests need neither TensorFlow nor TFX and run in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_model import FAKE_MODEL_FLAVOR, fake_saved_model
from tritonclient.grpc import model_config_pb2 as mc

from hoh.components.triton_pusher import repository as repo


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*"))
    }


SETTINGS = repo.TritonPushSettings(
    flavor=FAKE_MODEL_FLAVOR,
    model_name="hoh",
    max_batch_size=16,
    preferred_batch_sizes=(4, 8),
    max_queue_delay_us=500,
    instance_count=2,
    versions_to_serve=1,
    versions_to_keep=2,
)


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("classes", [("human", "horse"), ("a", "b", "c", "d", "e")])
def test_every_written_config_parses_as_model_config(tmp_path, classes):
    model = fake_saved_model(tmp_path / "m", classes)
    result = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS)
    model_dir = Path(result.model_dir)
    configs = [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]
    assert [p.name for p in configs] == ["config.pbtxt", "gpu.pbtxt"]
    for path in configs:
        config = repo.parse_model_config(path.read_text())
        assert config.name == "hoh"
        assert config.backend == "python"
        assert config.max_batch_size == 16
        (inp,) = config.input
        assert (inp.name, inp.data_type, list(inp.dims)) == ("image_bytes", mc.TYPE_STRING, [1])
        probs, label = config.output
        assert (probs.name, probs.data_type, list(probs.dims)) == (
            "probabilities",
            mc.TYPE_FP32,
            [-1],  # each served version has its own width (class_names.v<N>)
        )
        assert probs.label_filename == "1/labels.txt"  # inside the version it describes
        assert (label.name, label.data_type, list(label.dims)) == ("label", mc.TYPE_STRING, [1])
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert list(config.version_policy.specific.versions) == [1]
        assert config.response_cache.enable == SETTINGS.response_cache
        assert json.loads(config.parameters["class_names"].string_value) == list(classes)
        assert json.loads(config.parameters["class_names.v1"].string_value) == list(classes)
        (group,) = config.instance_group
        assert group.count == 2
        (warmup,) = config.model_warmup
        assert warmup.inputs["image_bytes"].input_data_file == "image_bytes"
        assert warmup.inputs["image_bytes"].data_type == mc.TYPE_STRING
    kinds = [repo.parse_model_config(p.read_text()).instance_group[0].kind for p in configs]
    assert kinds == [mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU]
    assert (model_dir / "1" / "labels.txt").read_text().splitlines() == list(classes)
    assert not (model_dir / "labels.txt").exists()


def test_warmup_file_is_length_prefixed_sample_image(tmp_path):
    sample = b"\xff\xd8\xff" + os.urandom(300)
    model = fake_saved_model(tmp_path / "m", sample=sample)
    result = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS)
    data = (Path(result.model_dir) / "warmup" / "image_bytes").read_bytes()
    assert struct.unpack("<I", data[:4])[0] == len(sample)
    assert data[4:] == sample


@pytest.mark.parametrize("sample", [None, b"not an image"])
def test_no_warmup_without_a_usable_sample_image(tmp_path, sample):
    model = fake_saved_model(tmp_path / "m", sample=sample)
    result = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS)
    config = repo.parse_model_config((Path(result.model_dir) / "config.pbtxt").read_text())
    assert not config.model_warmup  # a failing warmup would keep the model from loading


def test_version_layout(tmp_path):
    model = fake_saved_model(tmp_path / "m")
    result = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS, source="uri://m")
    version_dir = Path(result.version_dir)
    assert result.version == 1 and version_dir.name == "1"
    assert (version_dir / "model.py").read_bytes() == (
        Path(repo.__file__).parents[2] / "serving" / "triton_model.py"
    ).read_bytes()
    assert (version_dir / "model.savedmodel" / "saved_model.pb").read_bytes() == b"graph"
    assert (version_dir / "model.savedmodel" / "assets.extra" / "labels.txt").exists()
    info = json.loads((version_dir / "hoh_push.json").read_text())
    assert info["source"] == "uri://m" and info["class_names"] == ["human", "horse"]
    # The image validator model.py imports from its own directory (stdlib-only, hoh's copy).
    assert (version_dir / "hoh_imagecheck.py").read_bytes() == (
        Path(repo.__file__).parents[2] / "hoh" / "imagecheck.py"
    ).read_bytes()
    # Both are precompiled (hash-checked), so the stub never writes into the version dir.
    for module in ("model", "hoh_imagecheck"):
        (pyc,) = (version_dir / "__pycache__").glob(f"{module}.*.pyc")
        flags = struct.unpack("<I", pyc.read_bytes()[4:8])[0]
        assert flags == 0b11  # hash-based, checked against the source


_STANDALONE_SCRIPT = """
import importlib.util, sys
class NoHoh:
    def find_spec(self, name, path=None, target=None):
        if name == "hoh" or name.startswith("hoh."):
            raise ImportError("hoh is not installed in this serving image")
sys.meta_path.insert(0, NoHoh())
spec = importlib.util.spec_from_file_location("model", sys.argv[1])
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)
print(model.imagecheck.__file__)
try:
    sof = b"\\xff\\xd8\\xff\\xc0\\x00\\x11\\x08\\x4e\\x20\\x4e\\x20\\x03"  # 20000x20000
    model.check_image(0, sof, 10**7, 10**6)
except model.InputError as exc:
    print(exc)
"""


def test_pushed_model_py_runs_without_hoh_and_uses_its_own_validator(tmp_path):
    result = repo.push_model(
        str(fake_saved_model(tmp_path / "m")), str(tmp_path / "repo"), SETTINGS
    )
    version_dir = Path(result.version_dir)
    proc = subprocess.run(
        [sys.executable, "-c", _STANDALONE_SCRIPT, str(version_dir / "model.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    where, message = proc.stdout.splitlines()
    assert where == str(version_dir / "hoh_imagecheck.py")
    assert message == (
        "input 0: JPEG image of 20000x20000 pixels is above the limit of 1000000 pixels"
    )


# ------------------------------------------------------------------ versions


def test_versions_increase_and_old_ones_are_deleted(tmp_path):
    repository = tmp_path / "repo"
    pushed = []
    for i in range(4):
        model = fake_saved_model(tmp_path / f"m{i}", pb=f"graph{i}".encode())
        pushed.append(repo.push_model(str(model), str(repository), SETTINGS))
    assert [r.version for r in pushed] == [1, 2, 3, 4]
    assert pushed[2].removed_versions == (1,) and pushed[3].removed_versions == (2,)
    assert repo.list_versions(str(repository / "hoh")) == [3, 4]
    newest = repository / "hoh" / "4" / "model.savedmodel" / "saved_model.pb"
    assert newest.read_bytes() == b"graph3"
    assert not [p for p in (repository / "hoh").iterdir() if p.name.startswith(".")]


def test_a_version_dropped_from_the_config_is_deleted_at_the_next_push(tmp_path):
    """With keep == serve, the version a push stops serving is the one Triton may still be
    loading from the config it read just before: it goes one push later."""
    repository = tmp_path / "repo"
    settings = repo.TritonPushSettings(flavor=FAKE_MODEL_FLAVOR, versions_to_keep=1)
    pushed = []
    for i in range(3):
        model = fake_saved_model(tmp_path / f"m{i}", pb=f"graph{i}".encode())
        pushed.append(repo.push_model(str(model), str(repository), settings))
    assert [r.removed_versions for r in pushed] == [(), (), (1,)]
    assert repo.served_versions(str(repository / "hoh")) == [3]
    assert sorted(p.name for p in (repository / "hoh").iterdir() if p.name.isdigit()) == ["2", "3"]


def test_next_version_follows_the_highest_existing_one(tmp_path):
    model_dir = tmp_path / "repo" / "hoh"
    (model_dir / "7").mkdir(parents=True)
    (model_dir / "configs").mkdir()
    model = fake_saved_model(tmp_path / "m")
    result = repo.push_model(
        str(model),
        str(tmp_path / "repo"),
        repo.TritonPushSettings(flavor=FAKE_MODEL_FLAVOR, versions_to_keep=5),
    )
    assert result.version == 8


def test_retrying_the_same_model_does_not_publish_it_twice(tmp_path):
    model = fake_saved_model(tmp_path / "m")
    first = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS, source="uri://m")
    again = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS, source="uri://m")
    other = repo.push_model(str(model), str(tmp_path / "repo"), SETTINGS, source="uri://other")
    assert (first.version, first.pushed) == (1, True)
    assert (again.version, again.pushed) == (1, False)
    assert (other.version, other.pushed) == (2, True)


def test_unchanged_warmup_is_not_rewritten_and_the_config_pins_the_new_version(tmp_path):
    """A changed file outside the version dirs makes a polling Triton reload every version."""
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a")), str(repository), SETTINGS)
    warmup = repository / "hoh" / "warmup" / "image_bytes"
    os.utime(warmup, (1, 1))
    repo.push_model(str(fake_saved_model(tmp_path / "b", pb=b"other")), str(repository), SETTINGS)
    assert warmup.stat().st_mtime == 1
    config = repo.parse_model_config((repository / "hoh" / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [2]
    assert config.output[0].label_filename == "2/labels.txt"


@pytest.mark.parametrize(
    "names, expected",
    [
        (
            ["1", "2", "10", "configs", "warmup", ".hoh-staging-h-1-ab", "01", "0", "3.tmp"],
            [0, 1, 2, 10],
        ),
        ([], []),
    ],
)
def test_version_numbers_match_what_triton_loads(names, expected):
    assert repo.version_numbers(names) == expected


def test_temp_names_are_never_versions():
    """Triton parses version dirs with std::stoll, which reads '3.tmp' as 3: ours start with '.'"""
    for prefix in (repo._STAGING, repo._TRASH, repo._WRITING):
        name = repo._temp_name(prefix, "-3")
        assert name.startswith(".") and not name[0].isdigit()
        assert repo.version_numbers([name]) == []


# ------------------------------------------------------------------ crash safety


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_failure_while_staging_leaves_the_repository_untouched(tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a")), str(repository), SETTINGS)
    before = tree(repository)

    def disk_full(src, dst):
        Path(dst).mkdir()
        (Path(dst) / "saved_model.pb").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repo, "copy_tree", disk_full)
    with pytest.raises(OSError, match="No space"):
        repo.push_model(
            str(fake_saved_model(tmp_path / "b", classes=list("abc"))), str(repository), SETTINGS
        )
    assert tree(repository) == before  # not even config.pbtxt/labels.txt of the new model


def test_failed_rename_leaves_previous_versions_and_no_leftovers(tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a")), str(repository), SETTINGS)
    before = tree(repository)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(repo.LocalFS, "rename_dir", staticmethod(refuse))
    new_model = fake_saved_model(tmp_path / "b", classes=("a", "b", "c"), sample=b"GIF89a" + b"1")
    with pytest.raises(repo.PushError, match="could not publish version 2"):
        repo.push_model(str(new_model), str(repository), SETTINGS)
    assert tree(repository) == before  # config.pbtxt, labels.txt, warmup restored too


def test_failure_on_the_first_push_leaves_no_model_files(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(repo.LocalFS, "rename_dir", staticmethod(refuse))
    with pytest.raises(repo.PushError):
        repo.push_model(str(fake_saved_model(tmp_path / "a")), str(tmp_path / "repo"), SETTINGS)
    assert [
        p.relative_to(tmp_path / "repo").as_posix()
        for p in (tmp_path / "repo").rglob("*")
        if p.is_file()
    ] == []


def test_stale_leftovers_are_cleaned_on_the_next_push(tmp_path):
    model_dir = tmp_path / "repo" / "hoh"
    host = socket.gethostname()
    dead = model_dir / f"{repo._STAGING}{host}-{_dead_pid()}-deadbeef"
    live = model_dir / f"{repo._STAGING}{host}-{os.getpid()}-0badf00d"
    old_remote = model_dir / f"{repo._STAGING}other-host-1-cafecafe"
    new_remote = model_dir / f"{repo._STAGING}other-host-1-feedfeed"
    trash = model_dir / f"{repo._TRASH}{host}-1-aaaa-3"
    for d in (dead, live, old_remote, new_remote, trash):
        (d / "model.savedmodel").mkdir(parents=True)
    os.utime(old_remote, (0, 0))
    repo.push_model(str(fake_saved_model(tmp_path / "m")), str(tmp_path / "repo"), SETTINGS)
    left = sorted(p.name for p in model_dir.iterdir() if p.name.startswith("."))
    assert left == sorted([live.name, new_remote.name])


def test_is_stale_temp_rules():
    alive = lambda pid: pid == 42  # noqa: E731
    day = 24 * 3600
    assert repo.is_stale_temp(".hoh-trash-h-1-ab-3", 0, "h", alive)
    assert repo.is_stale_temp(".hoh-staging-h-7-ab", 0, "h", alive)
    assert not repo.is_stale_temp(".hoh-staging-h-42-ab", 0, "h", alive)
    assert not repo.is_stale_temp(".hoh-staging-pod-x-7-ab", 60, "h", alive)
    assert repo.is_stale_temp(".hoh-staging-pod-x-7-ab", day + 1, "h", alive)
    assert repo.is_stale_temp(".hoh-write-h-7-ab", 0, "h", alive)
    assert not repo.is_stale_temp(".hidden-by-someone-else", day * 9, "h", alive)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_name": "a/b"}, "model_name"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"preferred_batch_sizes": (8, 64)}, r"preferred_batch_sizes \[64\]"),
        ({"versions_to_keep": 1, "versions_to_serve": 2}, "versions_to_keep"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
        ({"cpu_step_queue_delay_us": -1}, "cpu_step_queue_delay_us must be >= 0, got -1"),
        (
            {"flavor": "onnx", "versions_to_serve": 2, "versions_to_keep": 2},
            r"versions_to_serve \(2\) needs flavor: tensorflow",
        ),
    ],
)
def test_invalid_settings_are_refused_before_writing(tmp_path, changes, message):
    settings = repo.TritonPushSettings(**{"flavor": FAKE_MODEL_FLAVOR, **changes})
    with pytest.raises(repo.PushError, match=message):
        repo.push_model(str(fake_saved_model(tmp_path / "m")), str(tmp_path / "repo"), settings)
    assert not (tmp_path / "repo").exists()


def test_model_info_checks(tmp_path):
    meta = '{"class_names": ["a", "b"], "num_classes": 2}'
    info = repo.parse_model_info("a\nb\n\n", meta, None, "m")
    assert info.class_names == ("a", "b") and info.sample_image is None
    from_json = repo.parse_model_info(None, '{"class_names": ["x", "y"]}', b"", "m")
    assert from_json.class_names == ("x", "y")
    with pytest.raises(repo.PushError, match="differ"):
        repo.parse_model_info("a\nb\n", '{"class_names": ["b", "a"]}', None, "m")
    with pytest.raises(repo.PushError, match="num_classes=3"):
        repo.parse_model_info("a\nb\n", '{"num_classes": 3}', None, "m")
    with pytest.raises(repo.PushError, match="no class names"):
        repo.parse_model_info(None, None, None, "m")
    with pytest.raises(repo.PushError, match="duplicate"):
        repo.parse_model_info("a\na\n", None, None, "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(repo.PushError, match="no saved_model.pb"):
        repo.read_model_info(str(tmp_path / "empty"))


# ------------------------------------------------------------------ killed pushes

OLD_CLASSES, NEW_CLASSES = ("human", "horse"), ("cat", "dog", "horse")
_PUSH_SCRIPT = """
import sys
from hoh.components.triton_pusher import repository as repo
settings = repo.TritonPushSettings(flavor="tensorflow", versions_to_keep=2)
repo.push_model(sys.argv[1], sys.argv[2], settings,
                source="uri://new")
"""


def served_model(model_dir: Path, config_file: str) -> tuple[tuple[str, ...], int]:
    """(classes, newest version) that `config_file` makes Triton serve; asserts it is whole."""
    config = repo.parse_model_config((model_dir / config_file).read_text())
    if config.version_policy.HasField("latest"):  # what Triton picks: the newest directories
        on_disk = repo.version_numbers(p.name for p in model_dir.iterdir() if p.is_dir())
        served = on_disk[-config.version_policy.latest.num_versions :]
    else:
        served = list(config.version_policy.specific.versions)
    assert served, f"{config_file} serves no version"
    for version in served:
        assert (model_dir / str(version) / "model.savedmodel" / "saved_model.pb").is_file()
        assert (model_dir / str(version) / "model.py").is_file()
        assert (model_dir / str(version) / "hoh_imagecheck.py").is_file()
    newest = max(served)
    info = json.loads((model_dir / str(newest) / "hoh_push.json").read_text())
    classes = tuple(info["class_names"])
    probabilities = config.output[0]
    assert tuple((model_dir / probabilities.label_filename).read_text().splitlines()) == classes
    assert list(probabilities.dims) == [-1]
    assert tuple(json.loads(config.parameters["class_names"].string_value)) == classes
    for version in served:
        key = f"class_names.v{version}"
        named = json.loads((model_dir / str(version) / "hoh_push.json").read_text())["class_names"]
        assert json.loads(config.parameters[key].string_value) == named
    for warmup in config.model_warmup:
        assert (model_dir / "warmup" / warmup.inputs["image_bytes"].input_data_file).is_file()
    return classes, newest


def test_a_push_killed_at_any_step_leaves_the_old_model_or_the_new_one(tmp_path):
    """SIGKILL the pusher at every checkpoint in turn; Triton must find one whole model each time.

    Before the fix, config.pbtxt and labels.txt (3 classes) were replaced before version 3 was
    renamed in: a kill in between left them over the 2-class version 2, which Triton reloaded.
    """
    template = tmp_path / "template"
    for i in (1, 2):  # keep=2, so the new push also deletes version 1
        model = fake_saved_model(tmp_path / f"old{i}", OLD_CLASSES, pb=f"old{i}".encode())
        repo.push_model(
            str(model),
            str(template),
            repo.TritonPushSettings(flavor=FAKE_MODEL_FLAVOR, versions_to_keep=2),
        )
    sample = b"GIF89a" + b"new sample"  # another warmup file: that write is a step too
    new_model = fake_saved_model(tmp_path / "new", NEW_CLASSES, sample=sample, pb=b"new")
    outcomes = []
    for step in range(1, 40):
        repository = tmp_path / f"repo-{step}"
        shutil.copytree(template, repository)
        env = dict(os.environ, **{repo.KILL_AT_STEP_ENV: str(step)})
        proc = subprocess.run(
            [sys.executable, "-c", _PUSH_SCRIPT, str(new_model), str(repository)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        model_dir = repository / "hoh"
        if proc.returncode == 0:  # ran past its last checkpoint: every step has been killed
            assert served_model(model_dir, "config.pbtxt") == (NEW_CLASSES, 3)
            assert repo.list_versions(str(model_dir)) == [2, 3]
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        cpu = served_model(model_dir, "config.pbtxt")
        gpu = served_model(model_dir, "configs/gpu.pbtxt")
        assert cpu in ((OLD_CLASSES, 2), (NEW_CLASSES, 3))
        assert gpu in ((OLD_CLASSES, 2), (NEW_CLASSES, 3))
        outcomes.append("new" if cpu[0] == NEW_CLASSES else "old")
        # A version dir the config does not serve is no version yet (nor a baseline).
        assert repo.list_versions(str(model_dir))[-1] == cpu[1]
        # The next push (the retried execution) cleans up and ends with the new model.
        result = repo.push_model(
            str(new_model),
            str(repository),
            repo.TritonPushSettings(flavor=FAKE_MODEL_FLAVOR, versions_to_keep=2),
            source="uri://new",
        )
        assert served_model(model_dir, "config.pbtxt")[0] == NEW_CLASSES
        assert result.pushed == (outcomes[-1] == "old")
        assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".")]
    else:
        pytest.fail("the push never completed")
    assert len(outcomes) >= 8, outcomes  # staging, warmup, rename, two configs, retire ...
    # Old until the single publishing step, new from then on.
    assert outcomes == sorted(outcomes, key=lambda o: o == "new") and "new" in outcomes


def test_unpublished_version_of_a_live_pusher_is_left_alone(tmp_path):
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a")), str(repository), SETTINGS)
    orphan = repository / "hoh" / "2"
    (orphan / "model.savedmodel").mkdir(parents=True)
    live = f"{socket.gethostname()}-{os.getpid()}-abcd1234"
    (orphan / "hoh_push.json").write_text(json.dumps({"pusher": live}))
    assert repo.list_versions(str(repository / "hoh")) == [1]
    assert repo.clean_stale_temps(str(repository / "hoh")) == []  # its pusher may still publish
    (orphan / "hoh_push.json").write_text(
        json.dumps({"pusher": f"{socket.gethostname()}-{_dead_pid()}-abcd1234"})
    )
    assert repo.clean_stale_temps(str(repository / "hoh")) == ["2"]
    assert not orphan.exists()
