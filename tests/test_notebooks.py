"""The notebooks: committed clean, and executed top to bottom so they never rot.

Execution (e2e) uses nbclient in a kernel of this very interpreter (the venv), with a time limit
per cell. Parameters are injected papermill-style: a cell after the one tagged `parameters`.
01 runs first, then 02 on the same output directory, so 02 serves what 01 pushed and the whole
run trains one model; 02's own fallback (training one when the repository is empty) is covered
below with the pipeline run stubbed out. Executed copies are kept in pytest's tmp dir
(`*.executed.ipynb`) for reading after a failure. Cells tagged `finally` run even after an
earlier cell failed (02 stops its Triton server that way).
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT = int(os.environ.get("HOH_NOTEBOOK_CELL_TIMEOUT", "900"))
FINALLY_TAG = "finally"


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


# --------------------------------------------------------------------------- committed state


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_pipeline_interactive.ipynb", "02_serving.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    dirty = [
        i
        for i, cell in enumerate(_code_cells(path))
        if cell.outputs or cell.execution_count is not None
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} carry outputs or execution counts; strip them with "
        "`make strip-notebooks` (nbstripout) before committing"
    )


def test_nbstripout_finds_nothing_to_strip():
    """The same check by the tool that strips them (metadata, cell ids, ...), so a notebook
    saved from JupyterLab is caught even when its outputs happen to be empty."""
    result = subprocess.run(
        [sys.executable, "-m", "nbstripout", "--verify", *map(str, NOTEBOOKS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"run `make strip-notebooks`:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_come_first_and_hoh_is_imported_before_tensorflow(path):
    cells = _code_cells(path)
    assert "parameters" in _tags(cells[0]), "the first code cell must be the tagged parameter cell"
    for statement in ast.parse(cells[0].source).body:  # values only, so they can be replaced
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        ast.literal_eval(statement.value)
    assert cells[1].source.startswith("import hoh"), "hoh selects Keras 2 before TensorFlow loads"


def test_pipeline_notebook_uses_create_components():
    source = "\n".join(
        c.source for c in _code_cells(NOTEBOOKS_DIR / "01_pipeline_interactive.ipynb")
    )
    assert "create_components(" in source
    assert "tfx.components." not in source, "components come from create_components, not redefined"


# --------------------------------------------------------------------------- execution


def _inject(nb, parameters: dict) -> None:
    """Papermill's convention: the injected values follow the `parameters` cell."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in _tags(c))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


def _kernel_manager(tmp_path: Path):
    """A kernel of this interpreter, whatever `python3` kernelspec the user has installed."""
    from ipykernel.kernelspec import write_kernel_spec  # argv[0] = sys.executable
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "kernels"
    if not (kernels / "hoh-test").is_dir():
        write_kernel_spec(str(kernels / "hoh-test"))
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    return KernelManager(kernel_name="hoh-test", kernel_spec_manager=specs)


def execute(path: Path, parameters: dict, tmp_path: Path):
    """Run every cell in order (cells tagged `finally` also after a failure); returns the
    executed notebook, or raises the first cell error after saving the executed copy."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    _inject(nb, parameters)
    km = _kernel_manager(tmp_path)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    failure = None
    started = time.monotonic()
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if failure is not None and FINALLY_TAG not in _tags(cell):
                    continue
                try:
                    client.execute_cell(cell, index)
                except Exception as exc:  # noqa: BLE001 - a cell error or its timeout
                    failure = failure or exc
    finally:
        # nbclient leaves a kernel it was handed running (1-2 GB for the rest of the session)
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        executed = tmp_path / f"{path.stem}.executed.ipynb"
        nbformat.write(nb, executed)
        print(f"{path.name}: {time.monotonic() - started:.0f} s, executed copy {executed}")
    if failure is not None:
        raise AssertionError(
            f"{path.name} failed (executed copy: {executed}):\n{failure}"
        ) from None
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif "text/plain" in o.get("data", {}):
                out.append(o["data"]["text/plain"])
    return "\n".join(out)


def _count(nb, mime: str) -> int:
    return sum(mime in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """01 then 02 on one output dir, with the notebooks' own small defaults."""
    tmp = tmp_path_factory.mktemp("notebooks")
    parameters = {"OUTPUT_DIR": str(tmp / "output")}
    first = execute(NOTEBOOKS_DIR / "01_pipeline_interactive.ipynb", parameters, tmp)
    second = execute(NOTEBOOKS_DIR / "02_serving.ipynb", parameters, tmp)
    return tmp / "output", first, second


def _drift_reference_span(output: Path) -> int:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from hoh.components.drift.component import REFERENCE_SPAN, DriftReport

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(output / "metadata.sqlite")
    [report] = metadata_store.MetadataStore(config).get_artifacts_by_type(DriftReport.TYPE_NAME)
    return report.custom_properties[REFERENCE_SPAN].int_value


@pytest.mark.e2e
def test_pipeline_notebook_runs_every_step_under_the_output_dir(executed):
    output, nb, _ = executed
    text = _text(nb)
    assert "blessed: True" in text
    assert "pushed (blessed)" in text
    assert "8 images picked" in text
    assert "drift:" in text
    assert re.search(r"tracked: MLflow run \w+ in experiment 'hoh'", text), "step 11"
    assert "registered hoh version 1 as champion" in text
    assert _drift_reference_span(output) == 1, "the demo's span 2 is compared with span 1"
    # statistics/schema/anomalies/drift render as HTML; transformed images, curves, picks as PNG
    assert _count(nb, "text/html") >= 5
    assert _count(nb, "image/png") >= 3
    assert (output / "metadata.sqlite").is_file(), (
        "MLMD under OUTPUT_DIR, not InteractiveContext's /tmp default"
    )
    assert (output / "pipeline_root" / "Trainer").is_dir()
    assert (output / "model_repository" / "hoh" / "1").is_dir()


@pytest.mark.e2e
def test_serving_notebook_predicts_and_stops_the_server(executed):
    _, _, nb = executed
    text = _text(nb)
    assert "versions [1]" in text, "02 serves what 01 pushed (no second pipeline run)"
    assert " correct" in text and "nv_inference_request_success" in text
    assert "server running: False" in text
    assert _count(nb, "image/png") >= 1


def test_finally_cells_run_after_a_failure(tmp_path):
    """What 02 relies on to stop its server: the executor runs `finally` cells after an error."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("MARK = ''", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("raise RuntimeError('boom')"),
            nbformat.v4.new_code_cell("open(MARK + '.skipped', 'w').close()"),
            nbformat.v4.new_code_cell(
                "open(MARK + '.finally', 'w').close()", metadata={"tags": [FINALLY_TAG]}
            ),
        ]
    )
    path = tmp_path / "failing.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="boom"):
        execute(path, {"MARK": str(tmp_path / "mark")}, tmp_path)
    assert (tmp_path / "mark.finally").exists() and not (tmp_path / "mark.skipped").exists()


# --------------------------------------------------------------------------- helpers, no kernel


def test_push_decision_is_the_pipelines_gate_made_explicit():
    from hoh.pipeline.notebook.interactive import push_decision

    assert push_decision(True, None, False)[0]
    assert push_decision(True, True, False)[0]  # drift alone does not hold the push by default
    assert not push_decision(True, True, True)[0]
    assert push_decision(True, False, True)[0]
    assert push_decision(False, False, False) == (False, "the Evaluator did not bless the model")


def test_notebook_config_applies_parameters_over_the_profile(tmp_path):
    from hoh.pipeline.notebook.interactive import notebook_config

    cfg = notebook_config(
        profile="tiny",
        output_dir=str(tmp_path / "out"),
        data_root="data",
        image_size=48,
        alpha=None,
        epochs=2,
        overrides=["sampling.k=3"],
    )
    assert cfg.transform.image_size == 48 and cfg.training.epochs == 2 and cfg.sampling.k == 3
    assert cfg.model.alpha == 0.35  # None keeps the profile's value
    assert Path(cfg.data.root).is_absolute() and cfg.output_dir == str(tmp_path / "out")


def test_demo_data_makes_spans_and_a_pool_once(tmp_path):
    from hoh import features
    from hoh.pipeline.notebook.interactive import demo_data

    data_root, pool_root = demo_data(str(tmp_path), per_class=3, size=32)
    assert features.list_spans(data_root) == [1, 2]
    assert list((Path(pool_root) / "span-1" / "pool").glob("*.tfrecord.gz"))
    stamp = (Path(data_root) / "span-2").stat().st_mtime_ns
    assert demo_data(str(tmp_path), per_class=3, size=32) == (data_root, pool_root)
    assert (Path(data_root) / "span-2").stat().st_mtime_ns == stamp


def test_ensure_pushed_model_runs_the_pipeline_only_when_the_repository_is_empty(
    tmp_path, monkeypatch
):
    from hoh.pipeline.notebook import interactive
    from hoh.pipeline.notebook.interactive import ensure_pushed_model, notebook_config
    from hoh.pipeline.runners import local

    cfg = notebook_config(profile="tiny", output_dir=str(tmp_path))
    runs = []

    def fake_run(config, echo):
        runs.append(config)
        (Path(config.model_repository) / config.push.model_name / "1").mkdir(parents=True)

    monkeypatch.setattr(local, "run_local", fake_run)
    repository = ensure_pushed_model(cfg, echo=lambda line: None)
    assert repository == cfg.model_repository and len(runs) == 1
    assert interactive.pushed_versions(cfg) == [1]
    ensure_pushed_model(cfg, echo=lambda line: None)
    assert len(runs) == 1, "an existing version is served as is"


def test_metrics_rows_flatten_tfma_slices():
    from hoh.pipeline.notebook.interactive import metrics_rows

    rows = metrics_rows(
        [
            (
                (),
                {
                    "": {
                        "": {
                            "auc": {"doubleValue": 0.75},
                            "example_count": {"doubleValue": 16.0},
                            "confusion_matrix_at_thresholds": {"matrices": []},
                        }
                    }
                },
            ),
            ((("label", "horses"),), {"": {"": {"example_count": {"doubleValue": 8.0}}}}),
        ]
    )
    assert rows == [
        {"slice": "Overall", "auc": 0.75, "example_count": 16.0},
        {"slice": "label=horses", "example_count": 8.0},
    ]


def test_views_render_png():
    import numpy as np
    from PIL import Image

    from hoh.pipeline.notebook import views

    png = b"\x89PNG\r\n\x1a\n"
    buffer = io.BytesIO()
    Image.new("RGBA", (20, 10), (255, 0, 0, 128)).save(buffer, format="PNG")
    grid = views.image_grid(
        [
            np.random.rand(8, 8, 3).astype("float32"),
            buffer.getvalue(),
            np.zeros((8, 8, 1), "uint8"),
        ],
        ["a", "b", "c"],
        columns=2,
    )
    assert grid.data.startswith(png)
    assert views.history_figure(
        {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "auc": [0.5, 0.6]}
    ).data.startswith(png)
    frame = views.html_frame('<p class="x">a & b</p>').data
    assert (
        "srcdoc=" in frame
        and "&quot;x&quot;" in frame
        and "<p" not in frame.split("srcdoc=")[1][:5]
    )


def test_triton_metrics_are_summed_per_model():
    from hoh.serving import metrics

    text = """# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="hoh",version="1"} 8
nv_inference_count{model="hoh",version="2"} 4
nv_inference_count{model="other",version="1"} 100
nv_inference_exec_count{model="hoh",version="1"} 2
nv_cache_num_hits_per_model{model="hoh",version="1"} 3
nv_gpu_utilization{gpu_uuid="x"} 0.5
nv_cpu_memory_used_bytes 1.2e+09
"""
    samples = metrics.parse(text)
    assert samples[0] == metrics.Sample("nv_inference_count", {"model": "hoh", "version": "1"}, 8.0)
    assert metrics.model_totals(samples, "hoh") == {
        "nv_cache_num_hits_per_model": 3.0,
        "nv_inference_count": 12.0,
        "nv_inference_exec_count": 2.0,
    }
    # A page that is not an exposition (e.g. an HTML error page from a proxy) is named, not
    # silently read as "no traffic".
    from hoh.errors import HohError

    with pytest.raises(HohError, match="not a Prometheus text exposition"):
        metrics.parse('nv_inference_count{model="hoh" 8\n')
