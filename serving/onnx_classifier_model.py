"""Triton python-backend stand-in for the native onnxruntime backend: `<name>_classifier` locally.

The tritonserver bundled with nvidia-pytriton has only the python backend, so the repository's
default config.pbtxt serves the version's `model.onnx` through onnxruntime inside this model;
`configs/stock.pbtxt` and `configs/gpu.pbtxt` serve the very same file with
`platform: "onnxruntime_onnx"` on a stock Triton. The pusher copies this file into every
version directory as `model.py`. Both read the same inputs and give the same outputs
(tests/test_onnx_flavor.py compares this model with a plain onnxruntime session).

Dynamic batching hands `execute` several requests: they run as one `session.run`, then the
rows are split back. Threads: `intra_op_threads` 0 = cores / CPU instances of the whole
ensemble (this model's plus `cpu_instances_beside`, the preprocessing model's), at least 1, so
the processes do not oversubscribe a small machine (2 cores, 2 preprocessing instances: 1
thread; docs/BENCHMARKS.md has the runs that chose it).
"""

from __future__ import annotations

import json
import os

import numpy as np

try:  # Only importable inside Triton's stub.
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only outside Triton
    pb_utils = None

MODEL_FILE = "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "label")


def session_options(model_config: dict, cpu_count: int):
    import onnxruntime as ort

    parameters = model_config.get("parameters", {})
    configured = int(parameters.get("intra_op_threads", {}).get("string_value", "") or 0)
    instances = sum(int(g.get("count", 1)) for g in model_config.get("instance_group", [])) or 1
    # The preprocessing instances of the same ensemble decode on the same cores.
    instances += int(parameters.get("cpu_instances_beside", {}).get("string_value", "") or 0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = configured if configured > 0 else max(1, cpu_count // instances)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads otherwise spin for a while after every run, taking the cores the
    # preprocessing instances (other processes) need: measured in docs/BENCHMARKS.md.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def as_triton_strings(labels: np.ndarray) -> np.ndarray:
    """onnxruntime returns str objects; Triton's TYPE_STRING tensors hold bytes."""
    flat = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in labels.reshape(-1)]
    return np.array(flat, dtype=object).reshape(labels.shape)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), MODEL_FILE)
        self._session = ort.InferenceSession(
            path,
            sess_options=session_options(config, len(os.sched_getaffinity(0))),
            providers=["CPUExecutionProvider"],
        )

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        try:
            probabilities, labels = self._session.run(
                list(OUTPUT_NAMES), {INPUT_NAME: np.concatenate(inputs)}
            )
        except Exception as exc:  # noqa: BLE001 - inputs were checked upstream: server's fault
            error = pb_utils.TritonError(
                f"inference failed: {str(exc)[:300]}", pb_utils.TritonError.INTERNAL
            )
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        labels = as_triton_strings(labels)
        responses, start = [], 0
        for batch in inputs:
            end = start + len(batch)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(
                            OUTPUT_NAMES[0], probabilities[start:end].astype(np.float32)
                        ),
                        pb_utils.Tensor(OUTPUT_NAMES[1], labels[start:end]),
                    ]
                )
            )
            start = end
        return responses

    def finalize(self) -> None:
        self._session = None
