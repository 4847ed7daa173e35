"""Class probabilities and backbone embeddings of a hoh model for batches of encoded images.

One forward pass gives both: the exported SavedModel is re-opened as the Keras model it was saved
from (the Trainer saves a Functional model, so Keras rebuilds it from its config even without
saved traces) and a second output is taken at the MobileNetV2 backbone's pooled features. Pixels
come from `hoh.transforms.images.decode_and_resize`, the very function Transform uses, so they
are the pixels `serving_default` sees; a test checks the two paths agree.

A model that is not a Keras model but keeps the serving contract
(`serving_default(image_bytes) -> probabilities`) still works through that signature, only
without embeddings: sampling then ranks by uncertainty alone and drift skips the embedding test.

A batch containing one image TensorFlow cannot decode fails as a whole; it is then re-run image
by image so only the bad ones are dropped, each with its reason.

With an embedding store (hoh/data/embeddings.py) and the images' content ids, an image whose
embedding the store holds for this model's backbone skips decoding and the backbone: only the
head runs on the stored vector. New embeddings are added to the store in parts of
`STORE_PART_ROWS`; callers call `flush_store()` when done so the last part is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from hoh.errors import HohError

STORE_PART_ROWS = 1024

SERVING_DIR_CANDIDATES = (
    "",
    "Format-Serving",
    "model.savedmodel",
)  # SavedModel, Model artifact, Triton
EXTRA_DIR = (
    "assets.extra"  # the Trainer's export contract (hoh.trainer.export), not imported: TF-free
)
LABELS_FILE = "labels.txt"
MODEL_INFO_FILE = "hoh_model.json"
PUSH_INFO_FILE = "hoh_push.json"  # the pusher's, in a Triton version directory
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


@dataclass
class Prediction:
    probabilities: np.ndarray  # float32 [n_ok, C], rows in input order minus the failed ones
    embeddings: Optional[np.ndarray]  # float32 [n_ok, D] or None
    ok: list[int] = field(default_factory=list)  # input positions of the rows above
    failed: dict[int, str] = field(default_factory=dict)  # input position -> reason


def find_serving_dir(path: str | Path) -> Path:
    """The SavedModel inside a model path: the SavedModel itself, a TFX Model artifact
    (`Format-Serving/`), or a Triton version directory (`model.savedmodel/`). A version of the
    ONNX flavour (the default push) holds no SavedModel: the model it was exported from, its
    `hoh_push.json` `source`, stands for it, so `hoh monitor --model REPO/hoh/N` works there."""
    import tensorflow as tf

    for sub in SERVING_DIR_CANDIDATES:
        candidate = Path(path) / sub if sub else Path(path)
        if tf.io.gfile.exists(str(candidate / "saved_model.pb")):
            return candidate
    source = _push_source(path)
    if source and tf.io.gfile.exists(f"{source}/saved_model.pb"):
        return Path(source)
    gone = f"; the model it was pushed from, {source}, is gone" if source else ""
    raise HohError(
        f"model {path}: no saved_model.pb there nor in Format-Serving/ or model.savedmodel/ "
        f"(give a Trainer/pushed model directory){gone}"
    )


def _push_source(version_dir: str | Path) -> Optional[str]:
    """The `source` a Triton version's hoh_push.json names (the pusher's provenance record,
    read here as plain JSON: the trainer does not import the pusher)."""
    import tensorflow as tf

    info_path = str(Path(version_dir) / PUSH_INFO_FILE)
    if not tf.io.gfile.exists(info_path):
        return None
    try:
        info = json.loads(tf.io.gfile.GFile(info_path, "rb").read())
    except ValueError:
        return None
    return info.get("source") if isinstance(info, dict) else None


def _read_extra(serving_dir: Path, name: str) -> str:
    import tensorflow as tf

    path = serving_dir / EXTRA_DIR / name
    try:
        with tf.io.gfile.GFile(str(path), "r") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise HohError(
            f"model {serving_dir}: {EXTRA_DIR}/{name} is missing; "
            "not a model exported by hoh's Trainer"
        ) from None


def read_class_names(model_path: str | Path) -> list[str]:
    """The class names of a hoh model, in id order, without loading it (seconds saved where
    only the names are needed)."""
    return [c for c in _read_extra(find_serving_dir(model_path), LABELS_FILE).splitlines() if c]


def _backbone_output(model: Any) -> Any:
    """The pooled backbone features as the outer model computes them: the output of the nested
    MobileNetV2 (its last node; node 0 is its own graph), else whatever feeds the layer that
    produces the model's output (the classifier head)."""
    for layer in model.layers:
        if layer.name.startswith("mobilenetv2"):
            return layer.get_output_at(-1)
    last = model.output._keras_history.layer
    return last.get_input_at(-1)


class Predictor:
    """Loads a model once; `predict(list_of_bytes)` per batch."""

    def __init__(
        self,
        model_path: str | Path,
        embeddings: bool = True,
        embedding_store: Optional[str] = None,
    ):
        import tensorflow as tf

        self.serving_dir = find_serving_dir(model_path)
        self.class_names = [c for c in _read_extra(self.serving_dir, LABELS_FILE).splitlines() if c]
        self._info = json.loads(_read_extra(self.serving_dir, MODEL_INFO_FILE))
        self.image_size = int(self._info["image_size"])
        self.note = ""
        self._run = None
        self._store = None
        self._head = None
        self._pending: dict[str, np.ndarray] = {}  # computed, not yet in the store, by id
        self.store_counts = {"reused": 0, "computed": 0}
        if embeddings:
            self._run = self._keras_runner(tf, embedding_store)
        if self._run is None:
            self._run = self._signature_runner(tf)
        self.has_embeddings = self._embeds

    @property
    def model_version(self) -> str:
        """A human-readable model identity for reports: the directory the model came from."""
        path = self.serving_dir
        return path.parent.name if path.name in SERVING_DIR_CANDIDATES else path.name

    def _keras_runner(self, tf: Any, embedding_store: Optional[str]) -> Any:
        import tf_keras as keras

        from hoh.autograph import exempt_tf_keras
        from hoh.trainer.export import to_probabilities
        from hoh.transforms.images import decode_and_resize

        try:
            model = keras.models.load_model(str(self.serving_dir), compile=False)
            both = keras.Model(model.inputs, [_backbone_output(model), model.output])
        except Exception as exc:  # any non-Keras or non-Functional model: fall back, say why
            self.note = (
                "no embeddings: the model does not reload as a Keras model "
                f"({type(exc).__name__}: {exc})"
            )
            return None
        size, num_classes = self.image_size, len(self.class_names)
        exempt_tf_keras()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def run(images):
            embeddings, outputs = both(decode_and_resize(images, size), training=False)
            return to_probabilities(outputs, num_classes), embeddings

        self._embeds = True
        if embedding_store:
            self._open_store(tf, model, embedding_store, both.outputs[0].shape[-1])
        return run

    def _open_store(self, tf: Any, model: Any, root: str, dim: int) -> None:
        """The store for this model's backbone, and the head alone to run on stored vectors."""
        from hoh.trainer.export import to_probabilities
        from hoh.trainer.features_cache import open_store
        from hoh.trainer.model import HEAD_NAME, backbone_of

        try:
            head = model.get_layer(HEAD_NAME)
            backbone_of(model)
        except (ValueError, StopIteration):
            self.note = "no embedding store: the model has no separate head and backbone"
            return
        alpha = float(self._info.get("alpha", 1.0))
        self._store = open_store(
            root, model, self.image_size, alpha, lambda why: setattr(self, "note", why)
        )
        if self._store is None:
            return
        num_classes = len(self.class_names)

        @tf.function(input_signature=[tf.TensorSpec([None, int(dim)], tf.float32)])
        def run_head(vectors):
            return to_probabilities(head(vectors, training=False), num_classes)

        self._head = run_head

    def _signature_runner(self, tf: Any) -> Any:
        loaded = tf.saved_model.load(str(self.serving_dir))
        if "serving_default" not in loaded.signatures:
            raise HohError(f"model {self.serving_dir} has no serving_default signature")
        signature = loaded.signatures["serving_default"]
        self._loaded = loaded  # the signature does not keep its SavedModel alive
        self._embeds = False

        def run(images):
            return signature(image_bytes=images)["probabilities"], None

        return run

    def _call(self, images: Sequence[bytes]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        import tensorflow as tf

        probabilities, embeddings = self._run(tf.constant(list(images), dtype=tf.string))
        return (
            np.asarray(probabilities, dtype=np.float32),
            None if embeddings is None else np.asarray(embeddings, dtype=np.float32),
        )

    def predict(self, images: Sequence[bytes], ids: Optional[Sequence[str]] = None) -> Prediction:
        """Probabilities (and embeddings) of `images`; `ids` (their content hashes) let the
        embedding store answer for the images it knows."""
        if self._store is None or ids is None or not images:
            return self._predict(images)
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} ids for {len(images)} images")
        known = self._store.lookup(ids)
        hits = [i for i, image_id in enumerate(ids) if image_id in known]
        misses = [i for i, image_id in enumerate(ids) if image_id not in known]
        computed = self._predict([images[i] for i in misses])
        self._remember([ids[misses[j]] for j in computed.ok], computed.embeddings)
        rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if hits:
            vectors = np.stack([known[ids[i]] for i in hits])
            probabilities = np.asarray(self._head(vectors), dtype=np.float32)
            rows.update({i: (probabilities[k], vectors[k]) for k, i in enumerate(hits)})
        for row, j in enumerate(computed.ok):
            rows[misses[j]] = (computed.probabilities[row], computed.embeddings[row])
        self.store_counts["reused"] += len(hits)
        ok = sorted(rows)
        width = len(self.class_names)
        return Prediction(
            np.stack([rows[i][0] for i in ok]) if ok else np.zeros((0, width), np.float32),
            np.stack([rows[i][1] for i in ok]) if ok else None,
            ok=ok,
            failed={misses[j]: reason for j, reason in computed.failed.items()},
        )

    def _remember(self, ids: list[str], vectors: Optional[np.ndarray]) -> None:
        if not ids or vectors is None:
            return
        for image_id, vector in zip(ids, vectors):
            self._pending.setdefault(image_id, vector)
        if len(self._pending) >= STORE_PART_ROWS:
            self.flush_store()

    def flush_store(self) -> None:
        """Write the embeddings computed since the last flush to the store (one part)."""
        if self._store is None or not self._pending:
            return
        self._store.add(list(self._pending), np.stack(list(self._pending.values())))
        self.store_counts["computed"] += len(self._pending)
        self._pending = {}

    def _predict(self, images: Sequence[bytes]) -> Prediction:
        import tensorflow as tf

        if not images:
            return Prediction(np.zeros((0, len(self.class_names)), np.float32), None)
        errors = (tf.errors.InvalidArgumentError, tf.errors.UnknownError)
        if len(images) > 1:
            try:
                probabilities, embeddings = self._call(images)
                return Prediction(probabilities, embeddings, ok=list(range(len(images))))
            except errors:
                pass  # find the bad image(s) below
        rows, failed = [], {}
        for i, image in enumerate(images):
            try:
                rows.append((i, *self._call([image])))
            except errors as exc:
                message = _TF_NOISE.sub("", exc.message).strip()
                failed[i] = f"TensorFlow cannot decode it: {message}"
        if not rows:
            return Prediction(np.zeros((0, len(self.class_names)), np.float32), None, [], failed)
        return Prediction(
            np.concatenate([r[1] for r in rows]),
            None if rows[0][2] is None else np.concatenate([r[2] for r in rows]),
            ok=[r[0] for r in rows],
            failed=failed,
        )
