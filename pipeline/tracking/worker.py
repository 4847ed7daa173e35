"""MLflow's side of the post-run step, in a process of its own started when the DAG starts.

Importing MLflow and its SQLAlchemy store (~3 s of CPU) and creating an embedded store's schema
(~1.5 s) need nothing from the run. Done in a thread of the pipeline's process they still cost
the run their full time, since the import is Python holding the GIL the pipeline's own Python
needs; in a second process they run on the other core while the DAG runs. The pipeline's process
then only reads the facts (it has TFDV and TFMA loaded anyway) and hands them over as JSON.

Protocol, one JSON line each way: the parent writes the resolved config as soon as it starts
the worker, which opens the store at once; after the DAG, one request (`run` with the facts, or
`failure` with the error) or end of input to stop; the worker answers with the TrackingResult
fields on the descriptor it was started with as stdout (everything MLflow prints goes to stderr).
"""

from __future__ import annotations

import json
import os
import sys


def serve(request_lines, answer) -> None:
    """Open the store, then answer the one request (a tracking problem becomes the answer)."""
    from hoh.config import HohConfig
    from hoh.pipeline.tracking import log, store

    first = request_lines.readline()
    if not first.strip():
        return
    cfg = HohConfig.model_validate(json.loads(first))
    ready = log.Opened(cfg)
    _warm_up()
    line = request_lines.readline()
    if not line.strip():
        return  # the parent stopped before it had anything to log
    request = json.loads(line)
    try:
        if request["kind"] == "failure":
            result = log.log_failure(cfg, request["error"], request.get("started"), ready)
        else:
            result = log.log_facts(
                cfg,
                log.RunFacts(**request["facts"]),
                request.get("config_path"),
                request.get("started"),
                ready,
            )
        reply = log.result_json(result)
    except Exception as exc:
        reply = {"ok": False, "error": store.short(exc)}
    answer(json.dumps(reply))


def _warm_up() -> None:
    """Import now what logging a run needs, while the DAG still runs."""
    import ml_metadata.metadata_store.metadata_store  # noqa: F401  (the MLMD link)
    import mlflow.entities  # noqa: F401

    from hoh.components.triton_pusher import repository, rollback  # noqa: F401  (model cards)
    from hoh.pipeline.tracking import registry  # noqa: F401


def main() -> int:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # MLflow's and alembic's prints must not mix into the answer
    sys.stdout = sys.stderr

    def answer(text: str) -> None:
        protocol.write(text + "\n")
        protocol.flush()

    serve(sys.stdin, answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
