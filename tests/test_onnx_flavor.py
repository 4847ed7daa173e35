"""The ONNX serving flavour (`push.flavor: onnx`): export, TF-exact preprocessing, the ensemble
the pusher writes, and that ensemble served by the real bundled tritonserver.

Parity is against the TensorFlow `serving_default` of the same SavedModel, on images made here
with Pillow (PNG is lossless, so the pixels are TensorFlow's own to float rounding).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_support import running_server
from PIL import Image
from tiny_model import (
    IMAGE_SIZE,
    build_model_artifact_dir,
    build_tiny_model,
    fake_saved_model,
    make_image,
    predict_in_process,
    run_pusher_executor,
)

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from hoh.components.triton_pusher import flavors, onnx_config, onnx_repository, repository
from hoh.components.triton_pusher.model_config import parse_model_config
from hoh.components.triton_pusher.onnx_export import export_onnx
from hoh.serving import onnx_preprocess_model as pre
from hoh.serving.onnx_classifier_model import as_triton_strings

CLASSES_A = ("human", "horse")
CLASSES_B = ("cat", "dog", "horse")
PARITY = 1e-4


def pngs(seed: int, n: int) -> list[bytes]:
    """Sizes above, below and at the model's input size, so resizing goes both ways."""
    sizes = [(40, 30), (17, 23), (IMAGE_SIZE, IMAGE_SIZE), (90, 61), (5, 7), (33, 100)]
    return [make_image(seed + i, size=sizes[i % len(sizes)]) for i in range(n)]


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", CLASSES_A, seed=0)


@pytest.fixture(scope="module")
def exported(tiny):
    return export_onnx(str(tiny))


def ort_session(model: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


# ====================================================================== preprocessing


@pytest.mark.parametrize("shape", [(30, 40), (7, 5), (224, 224), (300, 97), (1, 1), (2, 64)])
@pytest.mark.parametrize("size", [32, 224])
def test_resize_is_tensorflows_bilinear(shape, size):
    import tensorflow as tf

    pixels = np.random.default_rng(sum(shape) + size).integers(0, 256, (*shape, 3), np.uint8)
    expected = tf.image.resize(pixels, [size, size], method="bilinear").numpy()
    np.testing.assert_allclose(pre.resize_bilinear(pixels, size), expected, rtol=0, atol=1e-4)


def _decode_and_resize(data: bytes, size: int) -> np.ndarray:
    """The training/serving preprocessing of transforms/images.py."""
    import tensorflow as tf

    from hoh.transforms.images import decode_and_resize

    return decode_and_resize(tf.constant([data]), size).numpy()[0]


def _exact_variants() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (21, 34, 3), np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (21, 34), np.uint8)])
    grey = rng.integers(0, 256, (21, 34), np.uint8)
    grey_alpha = Image.fromarray(np.dstack([grey, rgb[:, :, 0]]), "LA")
    buf_la = io.BytesIO()
    grey_alpha.save(buf_la, format="PNG")
    palette = Image.fromarray(rgb).quantize(16)
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    return {
        "png-rgb": encode(rgb),
        "png-rgba": encode(rgba),  # alpha dropped, not composited (tf channels=3)
        "png-grey": encode(grey),
        "png-grey-alpha": buf_la.getvalue(),  # grey replicated, alpha dropped
        "png-palette": buf.getvalue(),
        "bmp": encode(rgb, "BMP"),
        # Lossy, but decoded alike: training uses libjpeg's accurate IDCT, as Pillow does.
        "jpeg": encode(rgb, "JPEG"),
        "jpeg-grey": encode(grey, "JPEG"),
        "gif": make_image(4, size=(26, 19), fmt="GIF"),
    }


@pytest.mark.parametrize("name", sorted(_exact_variants()))
def test_preprocess_matches_decode_and_resize(name):
    data = _exact_variants()[name]
    ours = pre.preprocess(data, 224)
    assert ours.dtype == np.float32 and ours.shape == (224, 224, 3)
    np.testing.assert_allclose(ours, _decode_and_resize(data, 224), rtol=0, atol=1e-6)


def test_preprocess_request_keeps_the_tensorflow_flavours_limits():
    limits = pre.read_limits(
        {
            "max_batch_size": 4,
            "parameters": {
                "max_image_bytes": {"string_value": "100000"},
                "max_image_pixels": {"string_value": "10000"},
                "max_images_per_request": {"string_value": "2"},
                "image_size": {"string_value": "8"},
            },
        }
    )
    assert pre.preprocess_request(pngs(0, 2)[:2], limits).shape == (2, 8, 8, 3)
    with pytest.raises(pre.InputError, match="request holds 3 images; the limit is 2"):
        pre.preprocess_request(pngs(0, 3), limits)
    big = make_image(1, size=(200, 100))  # 20000 pixels
    with pytest.raises(pre.InputError, match="^input 1: PNG image of 200x100 pixels is above"):
        pre.preprocess_request([pngs(0, 1)[0], big], limits)
    with pytest.raises(pre.InputError, match="^input 0: not a PNG"):
        pre.preprocess_request([b"hello"], limits)
    truncated = make_image(2)[:60]  # a valid header, no pixel data
    with pytest.raises(pre.InputError, match="^input 0: could not be decoded"):
        pre.preprocess_request([truncated], limits)


# ====================================================================== export


def test_export_names_and_shapes(exported):
    session = ort_session(exported.model)
    assert exported.image_size == IMAGE_SIZE and exported.num_classes == len(CLASSES_A)
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [
        ("image", [IMAGE_SIZE, IMAGE_SIZE, 3])
    ]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "label"]


def test_onnx_flavour_matches_serving_default(tiny, exported):
    images = pngs(10, 12)
    pixels = np.stack([pre.preprocess(d, exported.image_size) for d in images])
    probabilities, labels = ort_session(exported.model).run(None, {"image": pixels})
    reference = predict_in_process(tiny, images)
    np.testing.assert_allclose(probabilities, reference["probabilities"], rtol=0, atol=PARITY)
    assert labels.shape == (len(images), 1)
    assert [s.encode() for s in labels[:, 0]] == list(reference["label"])
    assert len(set(labels[:, 0])) == 2  # both classes occur: the comparison means something


def test_export_refuses_a_model_without_the_image_map(tmp_path):
    import tensorflow as tf

    class NoImages(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            n = tf.shape(image_bytes)[0]
            return {"probabilities": tf.ones([n, 2]), "label": image_bytes}

    module = NoImages()
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.serve})
    with pytest.raises(repository.PushError, match="cannot find the decoded image batch"):
        export_onnx(str(tmp_path))


def test_export_names_a_model_that_does_not_load(tmp_path):
    model = fake_saved_model(tmp_path / "m", pb=b"not a SavedModel")
    with pytest.raises(repository.PushError, match=f"cannot load the SavedModel {model}: "):
        export_onnx(str(model))


# ====================================================================== repository


def push(tmp_path, model: Path, repo: Path, **settings):
    values = {"flavor": "onnx", "max_batch_size": 8, "preferred_batch_sizes": (4, 8), **settings}
    return flavors.push_model(str(model), str(repo), repository.TritonPushSettings(**values))


def test_push_writes_an_ensemble_and_every_config_parses(tmp_path, tiny, exported):
    result = push(
        tmp_path,
        tiny,
        tmp_path / "repo",
        gpu_fp16=True,
        cpu_step_queue_delay_us=300,
        max_queue_delay_us=7000,
    )
    repo = tmp_path / "repo"
    ensemble = parse_model_config((repo / "hoh" / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble" and result.version == 1
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "hoh_preprocess",
        "hoh_classifier",
    ]
    assert json.loads(ensemble.parameters["class_names"].string_value) == list(CLASSES_A)
    assert [o.name for o in ensemble.output] == ["probabilities", "label"]

    preprocess = parse_model_config((repo / "hoh_preprocess" / "config.pbtxt").read_text())
    assert preprocess.backend == "python"
    assert preprocess.parameters["image_size"].string_value == str(IMAGE_SIZE)
    assert (repo / "hoh_preprocess" / "warmup" / "image_bytes").is_file()

    cls_dir = repo / "hoh_classifier"
    local = parse_model_config((cls_dir / "config.pbtxt").read_text())
    stock = parse_model_config((cls_dir / "configs" / "stock.pbtxt").read_text())
    gpu = parse_model_config((cls_dir / "configs" / "gpu.pbtxt").read_text())
    assert local.backend == "python" and stock.platform == gpu.platform == "onnxruntime_onnx"
    assert [g.kind for g in stock.instance_group] == [stock.instance_group[0].KIND_CPU]
    assert [g.kind for g in gpu.instance_group] == [gpu.instance_group[0].KIND_GPU]
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    # The CPU steps' batching wait is their own setting; a GPU batches for push.max_queue_delay_us.
    waits = [c.dynamic_batching.max_queue_delay_microseconds for c in (preprocess, local, stock)]
    assert waits == [300, 300, 300] and gpu.dynamic_batching.max_queue_delay_microseconds == 7000
    for config in (local, stock, gpu):
        assert list(config.version_policy.specific.versions) == [1]
        assert config.output[0].label_filename == "1/labels.txt"
        assert config.dynamic_batching.preferred_batch_size == [4, 8]
    pixels = np.stack([pre.preprocess(d, IMAGE_SIZE) for d in pngs(1, 3)])
    written = ort_session((cls_dir / "1" / "model.onnx").read_bytes()).run(None, {"image": pixels})
    np.testing.assert_array_equal(
        written[0], ort_session(exported.model).run(None, {"image": pixels})[0]
    )
    assert (cls_dir / "1" / "labels.txt").read_text() == "human\nhorse\n"
    again = push(tmp_path, tiny, repo)
    assert not again.pushed and again.version == 1  # a retried execution writes nothing


def test_fp32_option_and_model_config_name_fallback(tmp_path, tiny):
    push(tmp_path, tiny, tmp_path / "repo", gpu_fp16=False)
    gpu = parse_model_config(
        (tmp_path / "repo" / "hoh_classifier" / "configs" / "gpu.pbtxt").read_text()
    )
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.parameters["precision_mode"] == "FP32"
    # Triton falls back to config.pbtxt where configs/<name>.pbtxt is absent: preprocessing
    # and the ensemble keep their CPU configs under --model-config-name=gpu.
    assert not (tmp_path / "repo" / "hoh_preprocess" / "configs").exists()


def test_failed_push_leaves_the_served_ensemble_untouched(tmp_path, tiny, monkeypatch):
    repo = tmp_path / "repo"
    push(tmp_path, tiny, repo)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    other = build_tiny_model(tmp_path / "other", CLASSES_B, seed=7)

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_config, "ensemble_config", fails)
    with pytest.raises(OSError, match="No space left"):
        push(tmp_path, other, repo)
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before
    for name in ("hoh", "hoh_preprocess", "hoh_classifier"):
        assert repository.list_versions(str(repo / name)) == [1]


def test_flavour_switch_publishes_a_new_version(tmp_path, tiny):
    repo = tmp_path / "repo"
    first = push(tmp_path, tiny, repo, flavor="tensorflow")
    second = push(tmp_path, tiny, repo)  # same model, other flavour: not "already pushed"
    assert (first.version, second.version, second.pushed) == (1, 2, True)
    assert repository.served_versions(str(repo / "hoh")) == [2]
    assert parse_model_config((repo / "hoh" / "config.pbtxt").read_text()).platform == "ensemble"


def test_triton_strings():
    out = as_triton_strings(np.array([["a"], ["é"]], dtype=object))
    assert out.tolist() == [[b"a"], ["é".encode()]]


# ====================================================================== real server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-serving")
    repo = root / "repository"
    for name, classes, seed in (("hoh", CLASSES_A, 0), ("second", CLASSES_B, 5)):
        build_model_artifact_dir(root / f"model-{name}", class_names=classes, seed=seed)
        run_pusher_executor(
            root / f"model-{name}",
            repo,
            root / f"pushed-{name}",
            flavor="onnx",
            model_name=name,
            max_batch_size=8,
            preferred_batch_sizes=[4, 8],
            max_queue_delay_us=20_000,
            max_images_per_request=6,
        )
    with running_server(repo, root / "triton.log", repository_poll_secs=1) as server:
        yield server, root


def _client(server, name="hoh"):
    from hoh.serving.client import TritonImageClient

    return TritonImageClient(server.http_url, model_name=name)


@pytest.mark.e2e
def test_served_ensemble_matches_serving_default(served):
    server, root = served
    images = pngs(40, 6)
    with _client(server) as client:
        probabilities, labels = client.infer(images)
        assert client.model_info().class_names == CLASSES_A
    reference = predict_in_process(root / "model-hoh" / "Format-Serving", images)
    np.testing.assert_allclose(probabilities, reference["probabilities"], rtol=0, atol=PARITY)
    assert labels == [s.decode() for s in reference["label"]]


@pytest.mark.e2e
def test_python_backend_classifier_equals_plain_onnxruntime(served):
    import tritonclient.http as tc

    server, root = served
    model_onnx = (root / "repository" / "hoh_classifier" / "1" / "model.onnx").read_bytes()
    pixels = np.stack([pre.preprocess(d, IMAGE_SIZE) for d in pngs(60, 5)])
    client = tc.InferenceServerClient(server.http_url)
    try:
        inp = tc.InferInput("image", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels, binary_data=True)
        result = client.infer("hoh_classifier", [inp])
    finally:
        client.close()
    probabilities, labels = ort_session(model_onnx).run(None, {"image": pixels})
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    assert [s.decode() for s in result.as_numpy("label")[:, 0]] == list(labels[:, 0])


def _files(repo: Path, models) -> dict[Path, bytes]:
    return {
        p: p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] in models
    }


@pytest.mark.e2e
def test_two_models_in_one_repository_answer_with_their_own_classes(served, tmp_path):
    server, root = served
    repo = root / "repository"
    with _client(server, "second") as client:
        predictions = client.predict(pngs(70, 4))
    assert all(set(p.probabilities) == set(CLASSES_B) for p in predictions)
    assert all(p.label in CLASSES_B for p in predictions)
    # A push of one model never touches the other's files.
    first = _files(repo, ("hoh", "hoh_preprocess", "hoh_classifier"))
    build_tiny_model(tmp_path / "second-v2", CLASSES_B, seed=9)
    flavors.push_model(
        str(tmp_path / "second-v2"),
        str(repo),
        repository.TritonPushSettings(
            flavor="onnx", model_name="second", max_batch_size=8, preferred_batch_sizes=(4, 8)
        ),
    )
    assert _files(repo, ("hoh", "hoh_preprocess", "hoh_classifier")) == first
    assert repository.served_versions(str(repo / "second")) == [2]


@pytest.mark.e2e
def test_bad_images_get_named_errors_through_the_ensemble(served):
    from hoh.serving.client import InvalidImage

    server, _ = served
    with _client(server) as client:
        with pytest.raises(InvalidImage, match="not a PNG, JPEG, GIF or BMP"):
            client.predict([pngs(80, 1)[0], b"not an image"])
        with pytest.raises(InvalidImage, match="could not be decoded"):
            client.predict([make_image(81)[:60]])
        assert len(client.predict(pngs(82, 2))) == 2  # the server still answers


@pytest.mark.e2e
def test_hoh_predict_against_the_onnx_flavour(served):
    server, root = served
    paths = []
    for i, data in enumerate(pngs(90, 3)):
        paths.append(root / f"cli-{i}.png")
        paths[-1].write_bytes(data)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hoh.cli",
            "predict",
            *map(str, paths),
            "--url",
            server.http_url,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = json.loads(out)
    reference = predict_in_process(
        root / "model-hoh" / "Format-Serving", [p.read_bytes() for p in paths]
    )
    assert [r["label"] for r in rows] == [s.decode() for s in reference["label"]]
    assert all(set(r["probabilities"]) == set(CLASSES_A) for r in rows)


def test_generated_preprocessing_model_is_what_the_repository_holds(tmp_path, tiny):
    push(tmp_path, tiny, tmp_path / "repo")
    version = tmp_path / "repo" / "hoh_preprocess" / "1"
    names = sorted(p.name for p in version.glob("*.py"))
    assert names == sorted(onnx_repository.PREPROCESS_SOURCES)


@pytest.mark.e2e
def test_a_new_push_switches_versions_under_traffic(served, tmp_path):
    """Runs last (it changes `hoh`): clients asking throughout the switch see no failure."""
    import threading
    import time

    server, root = served
    new_model = build_tiny_model(tmp_path / "v2", CLASSES_A, seed=3)
    images = pngs(100, 4)
    expected = predict_in_process(new_model, images)["probabilities"]
    failures, answers, stop = [], [0], threading.Event()

    def ask() -> None:
        with _client(server) as client:
            while not stop.is_set():
                try:
                    client.infer(images)
                    answers[0] += 1
                except Exception as exc:  # noqa: BLE001 - counted: the assertion below
                    failures.append(repr(exc))

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    try:
        result = flavors.push_model(
            str(new_model),
            str(root / "repository"),
            repository.TritonPushSettings(
                flavor="onnx",
                max_batch_size=8,
                preferred_batch_sizes=(4, 8),
                max_queue_delay_us=20_000,
                max_images_per_request=6,
            ),
        )
        assert result.version == 2
        deadline = time.monotonic() + 120
        with _client(server) as client:
            while not np.allclose(client.infer(images)[0], expected, atol=PARITY):
                assert time.monotonic() < deadline, "version 2 never served"
                time.sleep(0.5)
        time.sleep(2)  # the old steps unload after the switch: keep asking through it
    finally:
        stop.set()
        thread.join(timeout=60)
    assert answers[0] > 0 and failures == []
    for name in ("hoh_preprocess", "hoh_classifier"):  # version 1 stays until the next push
        assert repository.served_versions(str(root / "repository" / name)) == [1, 2]


def test_the_tensorflow_writer_refuses_the_onnx_flavour(tmp_path, tiny):
    settings = repository.TritonPushSettings(flavor="onnx")
    with pytest.raises(repository.PushError, match="flavors.push_model"):
        repository.push_model(str(tiny), str(tmp_path / "repo"), settings)
    assert not (tmp_path / "repo").exists()


def test_steps_keep_the_previous_ensembles_version_until_the_next_push(tmp_path, tiny):
    repo = tmp_path / "repo"
    for seed in (1, 2, 3):
        model = build_tiny_model(tmp_path / f"m{seed}", CLASSES_A, seed=seed)
        push(tmp_path, model, repo, versions_to_keep=3)
    ensemble = parse_model_config((repo / "hoh" / "config.pbtxt").read_text())
    assert [s.model_version for s in ensemble.ensemble_scheduling.step] == [3, 3]
    assert repository.served_versions(str(repo / "hoh")) == [3]
    for name in ("hoh_preprocess", "hoh_classifier"):
        assert repository.served_versions(str(repo / name)) == [2, 3]
        assert repository.list_versions(str(repo / name)) == [1, 2, 3]
    push(tmp_path, tiny, repo, versions_to_keep=2)
    for name in ("hoh_preprocess", "hoh_classifier"):
        assert repository.served_versions(str(repo / name)) == [3, 4]
        # 2 was in the config until this push: a polling Triton may be loading it right now
        assert repository.list_versions(str(repo / name)) == [2, 3, 4]
    push(tmp_path, build_tiny_model(tmp_path / "m5", CLASSES_A, seed=5), repo, versions_to_keep=2)
    for name in ("hoh_preprocess", "hoh_classifier"):  # retires what no config names any more
        assert repository.served_versions(str(repo / name)) == [4, 5]
        assert repository.list_versions(str(repo / name)) == [3, 4, 5]


def test_classifier_threads_share_the_cores_with_preprocessing():
    from hoh.serving.onnx_classifier_model import session_options

    def config(threads: str, beside: str) -> dict:
        return {
            "instance_group": [{"count": 1}],
            "parameters": {
                "intra_op_threads": {"string_value": threads},
                "cpu_instances_beside": {"string_value": beside},
            },
        }

    assert session_options(config("0", "2"), cpu_count=2).intra_op_num_threads == 1
    assert session_options(config("0", "1"), cpu_count=8).intra_op_num_threads == 4
    assert session_options(config("3", "2"), cpu_count=2).intra_op_num_threads == 3


def test_stub_processes_keep_freed_memory_on_glibc():
    """Both flavours' python models raise glibc's trim threshold at load (perf showed page
    faults from trimmed arenas as 30% of the preprocessing stub's CPU)."""
    import ctypes

    from hoh.serving import triton_model

    assert triton_model.keep_freed_memory() is True
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-1, 128 << 10) == 1  # restore glibc's default trim threshold
