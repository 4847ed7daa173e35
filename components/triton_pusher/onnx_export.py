"""The network of a hoh SavedModel as `model.onnx`: what both ONNX classifiers serve.

The pusher receives the Trainer's serving SavedModel, saved without Keras traces (trainer/
export.py), so the Keras model cannot be rebuilt from it; but its `serving_default` graph holds
the whole network. That graph decodes and resizes every image inside a `tf.map_fn`, whose
stacked output is exactly "float32 [N, S, S, 3] in [0, 1]" (`decode_and_resize`); everything
after it is the network plus the class-name lookup. So the frozen signature is cut there: the
map's stack becomes a placeholder `image`, and tf2onnx converts what lies between it and the
signature's `probabilities` and `label` outputs. The label lookup stays in the graph (ONNX
Gather on a string constant), so each version's class names travel inside its own model.onnx
and a stock onnxruntime backend answers `label` without any Python.

Decoding and resizing move to the preprocessing model (serving/onnx_preprocess_model.py), which
reproduces TensorFlow's pixels; tests/test_onnx_flavor.py checks the two halves against the
whole signature.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from hoh.components.triton_pusher.settings import PushError

OPSET = 17
IMAGE_NAME = "image"
PROBABILITIES_NAME = "probabilities"
LABEL_NAME = "label"
SIGNATURE = "serving_default"


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    model: bytes  # serialized ModelProto: input `image`, outputs `probabilities` and `label`
    image_size: int
    num_classes: int


def _image_stack(graph, image_size: Optional[int]):
    """The `tf.map_fn` output holding the decoded, resized images (the cut point)."""
    candidates = []
    for op in graph.get_operations():
        if op.type != "TensorListStack" or op.outputs[0].dtype.name != "float32":
            continue
        shape = op.outputs[0].shape
        if shape.rank == 4 and shape[3] == 3 and shape[1] is not None and shape[1] == shape[2]:
            if image_size is None or shape[1] == image_size:
                candidates.append(op)
    if len(candidates) != 1:
        raise PushError(
            f"cannot find the decoded image batch in {SIGNATURE} (found {len(candidates)} "
            "float32 [N, S, S, 3] map outputs); is this a hoh Trainer export?"
        )
    return candidates[0]


def _cut_graph(graph_def, cut: str, image_size: int, outputs: dict[str, str]):
    """A GraphDef where `cut` is a placeholder and only what `outputs` needs remains.

    `outputs` maps ONNX output names to tensor names; `label` gets a trailing dimension of 1
    (Triton's TYPE_STRING dims [1]) from a Reshape added here.
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2, types_pb2

    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name == cut:
            placeholder = out.node.add(name=IMAGE_NAME, op="Placeholder")
            placeholder.attr["dtype"].type = types_pb2.DT_FLOAT
            placeholder.attr["shape"].shape.CopyFrom(
                tf.TensorShape([None, image_size, image_size, 3]).as_proto()
            )
            continue
        copy = out.node.add()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            if name == cut or name.startswith(cut + ":"):
                copy.input[i] = IMAGE_NAME + name[len(cut) :]
    shape = out.node.add(name="hoh_label_shape", op="Const")
    shape.attr["dtype"].type = types_pb2.DT_INT32
    shape.attr["value"].tensor.CopyFrom(tf.make_tensor_proto([-1, 1], dtype=tf.int32))
    reshape = out.node.add(name="hoh_label", op="Reshape", input=[outputs[LABEL_NAME], shape.name])
    reshape.attr["T"].type = types_pb2.DT_STRING
    reshape.attr["Tshape"].type = types_pb2.DT_INT32
    targets = [outputs[PROBABILITIES_NAME].split(":")[0], reshape.name]
    return tf.compat.v1.graph_util.extract_sub_graph(out, targets), {
        PROBABILITIES_NAME: outputs[PROBABILITIES_NAME],
        LABEL_NAME: reshape.name + ":0",
    }


def _rename(model, renames: dict[str, str]) -> None:
    """tf2onnx keeps TF tensor names (`image:0`); Triton configs name `image`, `probabilities`."""
    for value in list(model.graph.input) + list(model.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def export_onnx(saved_model_dir: str, image_size: Optional[int] = None) -> OnnxExport:
    """Convert the network inside `serving_default` of `saved_model_dir` (opset 17)."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        loaded = tf.saved_model.load(saved_model_dir)
    except Exception as exc:  # noqa: BLE001 - TF raises OSError, ValueError, ...: name the model
        raise PushError(f"cannot load the SavedModel {saved_model_dir}: {exc}") from exc
    if SIGNATURE not in loaded.signatures:
        raise PushError(f"{saved_model_dir} has no {SIGNATURE} signature")
    signature = loaded.signatures[SIGNATURE]
    keys = sorted(signature.structured_outputs)  # frozen outputs follow the flattened dict
    if not {PROBABILITIES_NAME, LABEL_NAME} <= set(keys):
        raise PushError(
            f"{saved_model_dir} {SIGNATURE} outputs {keys}, expected probabilities+label"
        )
    frozen = convert_variables_to_constants_v2(
        signature, lower_control_flow=False, aggressive_inlining=True
    )
    stack = _image_stack(frozen.graph, image_size)
    size = int(stack.outputs[0].shape[1])
    tensors = {k: frozen.outputs[keys.index(k)].name for k in (PROBABILITIES_NAME, LABEL_NAME)}
    graph_def, outputs = _cut_graph(frozen.graph.as_graph_def(), stack.name, size, tensors)
    try:
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=[IMAGE_NAME + ":0"],
            output_names=list(outputs.values()),
            opset=OPSET,
        )
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything; the push must say why
        raise PushError(f"tf2onnx could not convert {saved_model_dir}: {exc}") from exc
    _rename(model, {IMAGE_NAME + ":0": IMAGE_NAME, **{v: k for k, v in outputs.items()}})
    num_classes = frozen.outputs[keys.index(PROBABILITIES_NAME)].shape[-1]
    return OnnxExport(model.SerializeToString(), size, int(num_classes))
