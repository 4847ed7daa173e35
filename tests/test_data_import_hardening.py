"""`hoh data import` under attack: unreadable folders, class-changing links, camera JPEGs,
report and output paths that cannot be written. Each test reproduces the attack itself."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from imagegen import encode, pattern, write, write_classes
from test_data_import import read_span

from hoh import durable, features
from hoh.cli import main
from hoh.data import importer
from hoh.data.importer import REPORT_NAME, import_images
from hoh.errors import HohError, RunFailed, UsageError


def _no_span_published(lake: Path) -> bool:
    """Neither a span nor a leftover temporary directory: the lake is as it was."""
    return not lake.exists() or not list(lake.iterdir())


def _records(report) -> dict[str, dict]:
    """id -> record over every split of the span the import wrote."""
    return {i: r for split in read_span(Path(report.span_dir)).values() for i, r in split.items()}


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hoh: error: ") and "Traceback" not in err
    return lines[0]


# --- item 7: silent loss and mislabelling -------------------------------------------------


def _make_unlistable(folder: Path, monkeypatch) -> None:
    """chmod 000, and where that does not stop us (root), make listing it fail the same way.

    Both paths end in os.walk's onerror with the PermissionError a real unreadable folder gives.
    """
    folder.chmod(0)
    try:
        os.listdir(folder)
    except PermissionError:
        return
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if os.path.realpath(path) == os.path.realpath(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_folder_stops_the_import_and_is_named(tmp_path, monkeypatch, capsys):
    src, lake = tmp_path / "src", tmp_path / "lake"
    write_classes(src, {"cats": 3, "dogs": 3})
    private = src / "cats" / "2024"
    for i in range(4):  # more cats than the folder that can be read
        write(private / f"{i}.png", encode(pattern(500 + i), "PNG"))
    _make_unlistable(private, monkeypatch)
    try:
        code = main(["data", "import", str(src), "--out", str(lake)])
        err = capsys.readouterr().err
    finally:
        private.chmod(0o755)
    assert code == HohError.exit_code
    line = _one_line_error(err)
    assert f"cannot read 1 folder(s) ({private}: Permission denied)" in line
    assert "Nothing was written" in line
    assert _no_span_published(lake)


def test_unreadable_file_is_rejected_with_its_reason_and_counted(tmp_path):
    src = tmp_path / "src"
    write_classes(src, {"cats": 3, "dogs": 3})
    (src / "dogs" / "gone.png").symlink_to(tmp_path / "deleted.png")
    report = import_images(src, tmp_path / "lake")
    [rejected] = report.rejected
    assert (rejected.path, rejected.kind) == ("dogs/gone.png", "unreadable")
    assert rejected.reason == "cannot read it: No such file or directory"
    assert (report.seen, report.written) == (7, 6) and report.adds_up


@pytest.mark.parametrize(
    "link, target, named",
    [
        # A folder inside cats/ that is really dogs/: read first, under the wrong class.
        ("cats/more", "../dogs", ["src/cats/more", "src/dogs", "'cats'", "'dogs'"]),
        # The same, with the real folder read before the link.
        ("zebras/more", "../cats", ["src/zebras/more", "src/cats", "'zebras'", "'cats'"]),
        # A class folder that is a link to another class folder.
        ("dogs", "cats", ["src/dogs", "src/cats", "'dogs'", "'cats'"]),
    ],
)
def test_link_into_another_class_folder_is_an_error_naming_both(tmp_path, link, target, named):
    src, lake = tmp_path / "src", tmp_path / "lake"
    layout = {"birds": 3, "cats": 3, "dogs": 3, "zebras": 3}
    layout.pop(link, None)  # a class folder that is itself the link
    write_classes(src, layout)
    (src / link).parent.mkdir(parents=True, exist_ok=True)
    (src / link).symlink_to(target, target_is_directory=True)
    with pytest.raises(HohError) as exc:
        import_images(src, lake)
    message = str(exc.value)
    for name in named:
        assert name in message, (name, message)
    assert "symbolic link must not change a class" in message and "Nothing was written" in message
    assert _no_span_published(lake)


def test_one_shared_folder_under_two_classes_is_an_error(tmp_path):
    store, src = tmp_path / "store", tmp_path / "src"
    write_classes(store, {"pictures": 3})
    write_classes(src, {"birds": 3})
    (src / "cats").symlink_to(store / "pictures", target_is_directory=True)
    (src / "dogs").symlink_to(store / "pictures", target_is_directory=True)
    with pytest.raises(HohError, match=r"src/dogs and .*src/cats are the same folder"):
        import_images(src, tmp_path / "lake")
    assert _no_span_published(tmp_path / "lake")


def test_links_that_keep_the_class_are_followed_once(tmp_path):
    store, src = tmp_path / "store", tmp_path / "src"
    shared = write_classes(store, {"pictures": 3}, seed=1)["pictures"]
    write_classes(src, {"birds": 3})
    (src / "cats").symlink_to(store / "pictures", target_is_directory=True)  # shared storage
    (src / "birds" / "loop").symlink_to(".", target_is_directory=True)  # birds/ again
    report = import_images(src, tmp_path / "lake")
    assert (report.seen, report.written, report.rejected, report.duplicates) == (6, 6, [], [])
    assert any("birds/loop is birds again" in w for w in report.warnings), report.warnings
    records = _records(report)
    for path in shared:
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()
        assert records[image_id][features.LABEL_KEY] == b"cats"


def test_file_link_into_another_class_is_rejected_and_the_file_keeps_its_class(tmp_path):
    src = tmp_path / "src"
    dogs = write_classes(src, {"cats": 3, "dogs": 3})["dogs"]
    (src / "cats" / "a-dog.png").symlink_to(dogs[0])  # sorts before dogs/0.png
    report = import_images(src, tmp_path / "lake")
    [rejected] = report.rejected
    assert (rejected.path, rejected.kind) == ("cats/a-dog.png", "link_to_other_class")
    assert "symbolic link to dogs/0.png in class 'dogs'" in rejected.reason
    assert report.duplicates == [] and report.written == 6 and report.adds_up
    dog_id = hashlib.sha256(dogs[0].read_bytes()).hexdigest()
    records = _records(report)
    assert records[dog_id][features.LABEL_KEY] == b"dogs"
    assert records[dog_id][features.SOURCE_KEY] == b"dogs/0.png"


# --- item 8: decodable images refused ------------------------------------------------------


def test_multi_picture_camera_jpeg_is_imported_and_decodes_like_the_transform(tmp_path):
    import tensorflow as tf
    from PIL import Image

    from hoh.transforms.images import decode_and_resize

    src = tmp_path / "src"
    write_classes(src, {"cats": 2, "dogs": 2})
    first, second = pattern(600, (64, 48)), pattern(601, (32, 24))
    mpo = src / "cats" / "camera.jpg"
    first.save(mpo, format="MPO", save_all=True, append_images=[second])
    with Image.open(mpo) as img:
        assert img.format == "MPO"  # what made it "unsupported" before
    report = import_images(src, tmp_path / "lake")
    assert report.rejected == [] and report.written == 5
    data = mpo.read_bytes()
    record = _records(report)[hashlib.sha256(data).hexdigest()]
    assert record[features.IMAGE_KEY] == data
    assert (record[features.WIDTH_KEY], record[features.HEIGHT_KEY]) == (64, 48)
    pixels = decode_and_resize(tf.constant([record[features.IMAGE_KEY]]), 16)
    assert pixels.shape == (1, 16, 16, 3)
    assert 0.0 <= float(tf.reduce_min(pixels)) and float(tf.reduce_max(pixels)) <= 1.0


# --- item 9: report after publish; unwritable outputs ---------------------------------------


@pytest.mark.parametrize("kind", ["under_a_file", "is_a_directory"])
def test_unwritable_report_fails_before_the_span_and_a_retry_reuses_the_number(
    tmp_path, capsys, kind
):
    src, lake = tmp_path / "src", tmp_path / "lake"
    write_classes(src, {"a": 3, "b": 3})
    blocker = write(tmp_path / "blocker", b"a file")
    bad = blocker / "report.json" if kind == "under_a_file" else tmp_path
    command = ["data", "import", str(src), "--out", str(lake)]
    assert main([*command, "--report", str(bad)]) == UsageError.exit_code
    line = _one_line_error(capsys.readouterr().err)
    assert f"report {bad}" in line
    assert ("is not a directory" if kind == "under_a_file" else "is a directory") in line
    assert _no_span_published(lake)
    good = tmp_path / "reports" / "r.json"
    assert main([*command, "--report", str(good)]) == 0
    assert features.list_spans(lake) == [1]
    assert good.read_text() == (lake / "span-1" / REPORT_NAME).read_text()


def test_report_failing_while_writing_publishes_nothing(tmp_path):
    src, lake = tmp_path / "src", tmp_path / "lake"
    write_classes(src, {"a": 3, "b": 3})
    reports = tmp_path / "reports"
    reports.mkdir()

    def sabotage(stage: str, done: int, total: int) -> None:
        if stage == "write" and reports.is_dir():  # the report folder becomes a file mid-import
            shutil.rmtree(reports)
            reports.write_bytes(b"")

    with pytest.raises(HohError, match=r"cannot write span 1 to .*Nothing was published"):
        import_images(src, lake, report_path=reports / "r.json", progress=sabotage)
    assert _no_span_published(lake)
    reports.unlink()
    assert import_images(src, lake, report_path=reports / "r.json").span == 1


def test_failed_publish_takes_the_report_back(tmp_path, monkeypatch):
    src, lake, extra = tmp_path / "src", tmp_path / "lake", tmp_path / "r.json"
    write_classes(src, {"a": 3, "b": 3})
    real_rename = os.rename

    def rename(a, b):
        if Path(b).name == "span-1":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(a))
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(HohError, match=r"Input/output error\. Nothing was published"):
        import_images(src, lake, report_path=extra)
    assert not extra.exists()  # it would describe a span that does not exist
    assert list(lake.iterdir()) == [] and list(tmp_path.glob(".r.json.tmp-*")) == []


def test_report_inside_a_span_is_refused_up_front(tmp_path):
    write_classes(tmp_path / "src", {"a": 2, "b": 2})
    lake = tmp_path / "lake"
    with pytest.raises(HohError, match=r"inside the span directory .*span-1; spans are immutable"):
        import_images(tmp_path / "src", lake, report_path=lake / "span-1" / "mine.json")
    assert not lake.exists()


def test_unwritable_out_is_one_line_from_the_real_command(tmp_path):
    src = tmp_path / "src"
    write_classes(src, {"a": 2, "b": 2})
    blocker = write(tmp_path / "blocker", b"a file")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hoh.cli",
            "data",
            "import",
            str(src),
            "--out",
            str(blocker / "lake"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == UsageError.exit_code, result.stderr
    line = _one_line_error(result.stderr)
    assert line == (
        f"hoh: error: output {blocker / 'lake'} cannot be created: {blocker} is not a directory"
    )
    assert result.stdout == ""


def test_disk_full_while_writing_is_one_line_and_publishes_nothing(tmp_path, monkeypatch, capsys):
    src, lake = tmp_path / "src", tmp_path / "lake"
    write_classes(src, {"a": 3, "b": 3})
    real = importer.serialize_example
    calls = []

    def disk_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(importer, "serialize_example", disk_full)
    # The input was fine and the disk failed: RunFailed's code (1), which a scheduler may retry.
    assert main(["data", "import", str(src), "--out", str(lake)]) == RunFailed.exit_code == 1
    line = _one_line_error(capsys.readouterr().err)
    assert f"cannot write span 1 to {lake.absolute()}: No space left on device" in line
    assert "Nothing was published" in line
    assert list(lake.iterdir()) == []  # no span, no leftover temporary directory


def test_files_then_directories_are_synced_before_the_rename_and_the_parent_after(
    tmp_path, monkeypatch
):
    write_classes(tmp_path / "src", {"a": 3, "b": 3})
    lake = tmp_path / "lake"
    lake.mkdir()
    extra = tmp_path / "extra.json"
    events: list[tuple[str, str]] = []
    real_sync, real_rename = durable.sync_path, os.rename

    def sync(path):
        events.append(("sync", str(path)))
        real_sync(path)

    def rename(a, b):
        if Path(b).name == "span-1":
            # Everything the span and --report will hold is in place before it becomes visible.
            assert (Path(a) / REPORT_NAME).is_file() and extra.is_file()
        events.append(("rename", str(b)))
        real_rename(a, b)

    monkeypatch.setattr(durable, "sync_path", sync)
    monkeypatch.setattr(importer, "sync_path", sync)
    monkeypatch.setattr(os, "rename", rename)
    report = import_images(tmp_path / "src", lake, report_path=extra)
    span_dir = Path(report.span_dir)
    publish = events.index(("rename", str(span_dir)))
    before = [p for kind, p in events[:publish] if kind == "sync"]
    names = {
        Path(p).relative_to(lake).as_posix().split("/", 1)[-1]
        for p in before
        if Path(p).is_relative_to(lake)
    }
    expected = {REPORT_NAME, "train", "eval"} | {
        f"{split}/{p.name}" for split in ("train", "eval") for p in (span_dir / split).iterdir()
    }
    assert expected <= names
    tmp_index = [i for i, p in enumerate(before) if Path(p).name.startswith(".tmp-span-1-")]
    file_index = [i for i, p in enumerate(before) if p.endswith(features.TFRECORD_SUFFIX)]
    assert tmp_index and max(file_index) < tmp_index[-1]  # files first, then their directory
    assert str(extra.parent) in before  # the --report copy's directory, before publishing
    assert events[publish + 1 :] == [("sync", str(lake.absolute()))]


def test_class_folders_spelt_two_ways_are_refused_before_anything_is_written(tmp_path, capsys):
    write_classes(tmp_path / "src", {"horses": 3, "Horses": 3, "humans": 3})
    code = main(["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "lake")])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 2
    assert "['Horses', 'horses'] differ only in case" in line and "Nothing was written" in line
    assert _no_span_published(tmp_path / "lake")


def test_a_later_span_spelling_a_known_class_differently_is_refused(tmp_path):
    write_classes(tmp_path / "one", {"horses": 3, "humans": 3})
    import_images(tmp_path / "one", tmp_path / "lake")
    # The next delivery arrives from a Mac: "Humans " with a trailing space, plus a new class.
    write_classes(tmp_path / "two", {"horses": 3, "Humans ": 3, "birds": 3})
    with pytest.raises(HohError, match=r"vs span 1 of .*\['Humans ', 'humans'\] differ only"):
        import_images(tmp_path / "two", tmp_path / "lake")
    assert features.list_spans(tmp_path / "lake") == [1]
    # A genuinely new class is fine.
    write_classes(tmp_path / "three", {"horses": 3, "humans": 3, "birds": 3})
    assert import_images(tmp_path / "three", tmp_path / "lake").classes == [
        "birds",
        "horses",
        "humans",
    ]
