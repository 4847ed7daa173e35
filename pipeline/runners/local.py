"""Run the DAG on this machine with LocalDagRunner (MLMD in SQLite under the output directory)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from hoh import features
from hoh.config import HohConfig
from hoh.errors import ExitCode, HohError, RunFailed
from hoh.pipeline import factory
from hoh.pipeline.telemetry.mlmd import local_pipeline_args
from hoh.pipeline.telemetry.progress import ProgressHandler
from hoh.pipeline.telemetry.summary import RunSummary, summarize

DEMO_PER_CLASS = 500


class PipelineFailed(RunFailed):
    """A component failed; the message names it and points at the full log. The exit code is
    the cause's (data anomalies stay distinguishable from a crash)."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def ensure_demo_data(cfg: HohConfig, echo: Callable[[str], None] = print) -> str:
    """The built-in demo set as a span directory, generated and imported once per output dir."""
    data_root = Path(cfg.demo_data_dir)
    if features.list_spans(data_root):
        return str(data_root)
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    images = Path(cfg.output_dir) / "demo-images"
    echo(f"no --data given: generating the built-in demo images in {images}")
    make_demo_dataset(images, per_class=DEMO_PER_CLASS)
    report = import_images(images, data_root)
    echo(f"imported demo images into {data_root}: " + "; ".join(report.summary_lines()[:1]))
    return str(data_root)


def local_pusher_factory(cfg: HohConfig) -> Optional[Callable[..., Any]]:
    """The pusher of local and notebook runs: the repository is a path on this machine."""
    return factory.triton_pusher_factory(cfg, str(Path(cfg.model_repository).resolve()))


def build_local_pipeline(cfg: HohConfig, data_root: str, echo: Callable[[str], None] = print):
    span = factory.resolve_span(data_root, cfg.data.span)
    from hoh.components.latest_pushed_model.locate import served_class_names

    served = served_class_names(cfg.model_repository, cfg.push.model_name)
    report = factory.read_import_report(data_root, span)
    classes = factory.resolve_classes(cfg, list(report["classes"]), served)
    factory.check_eval_images(report, classes, echo)
    compare, why_not = factory.compare_with_baseline(cfg, classes, served)
    if why_not:
        echo(f"evaluation: {why_not}")
    from hoh.pipeline.pipeline import create_pipeline

    return create_pipeline(
        **local_pipeline_args(cfg),
        **factory.component_options(
            cfg, data_root, classes, local_pusher_factory(cfg), compare=compare
        ),
    )


@contextlib.contextmanager
def _console_to_log(path: Path) -> Iterator[Callable[[str], None]]:
    """Send everything the libraries print to `path`; yield an `echo` that reaches the terminal.

    TensorFlow's C++ runtime, Beam and the Python warnings of a dozen Google packages write
    straight to file descriptors 1 and 2, so redirecting Python logging alone leaves hundreds
    of lines of noise around the progress lines; the descriptors themselves are redirected.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1, encoding="utf-8")
    log_file = open(path, "a", buffering=1, encoding="utf-8")
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    file_handler = logging.StreamHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [file_handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield lambda line: print(line, file=terminal, flush=True)
    finally:
        logging.captureWarnings(False)
        root.handlers, root.level = saved_handlers, saved_level
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        terminal.close()
        log_file.close()


def _quiet_tensorflow_logger() -> None:
    """TF's logger has its own stderr handler and does not propagate; make it use the log file."""
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.handlers = []
    tf_logger.propagate = True


def run_local(cfg: HohConfig, echo: Optional[Callable[[str], None]] = None) -> RunSummary:
    """Run the DAG; progress lines go to `echo` (default: the terminal, whatever libraries print
    to stdout/stderr meanwhile goes to the run's log file)."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    started = time.time()
    log_path = Path(cfg.output_dir) / "logs" / time.strftime("run-%Y%m%d-%H%M%S.log")
    (echo or print)(f"full log: {log_path}")
    # absl's own logger, not the root: libraries that reset the root handlers cannot detach it.
    absl_logger = logging.getLogger("absl")
    with _console_to_log(log_path) as terminal_echo:
        terminal = echo or terminal_echo
        data_root = cfg.data.root or ensure_demo_data(cfg, terminal)
        if not Path(data_root).is_dir():
            raise HohError(f"data.root={data_root!r} is not a directory")
        terminal(f"pipeline {cfg.pipeline_name}: data {data_root}, output {cfg.output_dir}")
        progress = ProgressHandler(terminal)
        terminal("loading TFX ...")
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner

        _quiet_tensorflow_logger()
        pipeline = build_local_pipeline(cfg, str(Path(data_root).resolve()), terminal)
        from hoh.pipeline.tracking.log import prepare_tracking, track_failure, track_run

        tracking = prepare_tracking(cfg)  # MLflow's import and store, while the DAG runs
        absl_logger.addHandler(progress)
        absl_logger.setLevel(logging.INFO)
        # Something inside the Transform executor lowers absl's verbosity to WARNING, which would
        # drop the INFO records progress is made of; pin the level until the run ends.
        absl_logger.setLevel = lambda level: None  # type: ignore[method-assign]
        try:
            with progress.memory:
                LocalDagRunner().run(pipeline)
        except Exception as exc:
            logging.exception("pipeline failed")
            failed = progress.running.component_id if progress.running else "the pipeline"
            cause = _root_cause(exc)
            track_failure(cfg, f"{failed} failed: {cause}", terminal, started, tracking)
            raise PipelineFailed(
                f"{failed} failed: {cause}\n(full log: {log_path})",
                exit_code=getattr(cause, "exit_code", ExitCode.FAILED),
            ) from None
        finally:
            del absl_logger.setLevel  # back to logging.Logger.setLevel
            absl_logger.removeHandler(progress)
            absl_logger.setLevel(logging.NOTSET)
        summary = summarize(str(Path(cfg.metadata_path).resolve()), progress.runs)
        track_run(cfg, summary, terminal, started=started, prepared=tracking)
        return summary


def _root_cause(exc: BaseException) -> BaseException:
    """The first HohError in the chain (a message written for people), else the innermost cause."""
    while not isinstance(exc, HohError) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc
