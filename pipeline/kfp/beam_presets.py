"""Beam pipeline args for the Kubeflow pipeline: one preset per runner, filled from the config.

Why presets: the right flags per runner are few but easy to get subtly wrong, and every preset
carries `--sdk_container_image` on purpose. Without one of Beam's dependency flags TFX builds an
ephemeral sdist of itself for every Beam step (tfx.utils.dependency_utils) - 5-7 s each on the
DirectRunner, and on a remote runner workers that run TFX's sdist instead of the hoh image,
where `hoh.*` cannot be imported. With it, remote workers start from the very image the step's
pod runs, and the DirectRunner ignores it.

Placeholders like `{project}` are filled from `kubeflow.beam_options`; `{image}` is the image the
pipeline is compiled with. Locally (`hoh run`) no preset applies: `beam.args` stays empty.
"""

from __future__ import annotations

import string
from typing import Mapping, Sequence

from hoh.errors import HohError

# name -> (args with {placeholders}, defaults for some placeholders)
PRESETS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    # Several processes inside the step's own pod. `workers` should match the pod's CPU limit:
    # 0 would mean "every core of the node", which a pod limited to a few cores cannot use.
    "direct": (
        (
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers={workers}",
            "--sdk_container_image={image}",
        ),
        {"workers": "4"},
    ),
    "dataflow": (
        (
            "--runner=DataflowRunner",
            "--project={project}",
            "--region={region}",
            "--temp_location={temp_location}",
            "--sdk_container_image={image}",
            "--sdk_location=container",
            "--experiments=use_runner_v2",
            "--machine_type={machine_type}",
            "--max_num_workers={max_workers}",
            "--disk_size_gb={disk_size_gb}",
        ),
        {"machine_type": "n1-standard-4", "max_workers": "50", "disk_size_gb": "50"},
    ),
    # Portable runners: a Beam job server in the cluster and, next to each task manager /
    # executor, a worker pool started from the hoh image
    # (`python -m apache_beam.runners.worker.worker_pool_main --service_port=50000`).
    "flink": (
        (
            "--runner=PortableRunner",
            "--job_endpoint={job_endpoint}",
            "--environment_type=EXTERNAL",
            "--environment_config={worker_pool}",
            "--parallelism={parallelism}",
            "--sdk_container_image={image}",
        ),
        {"worker_pool": "localhost:50000", "parallelism": "8"},
    ),
    "spark": (
        (
            "--runner=PortableRunner",
            "--job_endpoint={job_endpoint}",
            "--environment_type=EXTERNAL",
            "--environment_config={worker_pool}",
            "--sdk_container_image={image}",
        ),
        {"worker_pool": "localhost:50000"},
    ),
}


def placeholders(preset: str) -> list[str]:
    """The option names a preset needs (those without a default must be in beam_options)."""
    args, _ = PRESETS[preset]
    return sorted({f for arg in args for _, f, _, _ in string.Formatter().parse(arg) if f})


def beam_args(
    preset: str, options: Mapping[str, str], extra: Sequence[str], image: str
) -> list[str]:
    """The preset's args with its placeholders filled, then `extra` (later flags win in Beam)."""
    if preset not in PRESETS:
        raise HohError(f"kubeflow.beam_preset={preset!r} is unknown; known: {', '.join(PRESETS)}")
    args, defaults = PRESETS[preset]
    values = {**defaults, **options, "image": image}
    missing = [name for name in placeholders(preset) if not values.get(name)]
    if missing:
        raise HohError(
            f"kubeflow.beam_preset={preset!r} needs kubeflow.beam_options "
            + ", ".join(missing)
            + " (e.g. --set kubeflow.beam_options."
            + f"{missing[0]}=...)"
        )
    unused = sorted(set(options) - set(placeholders(preset)))
    if unused:
        raise HohError(
            f"kubeflow.beam_options {', '.join(unused)} mean nothing to the {preset!r} preset "
            f"(it takes {', '.join(n for n in placeholders(preset) if n != 'image')}); "
            "put other flags in kubeflow.beam_args"
        )
    return [arg.format(**values) for arg in args] + list(extra)
