"""MLMD access shared by the local runner, the notebook context and the read-back helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from hoh.config import HohConfig


def local_pipeline_args(cfg: HohConfig) -> Dict[str, Any]:
    """Where a local run (LocalDagRunner or InteractiveContext) keeps its artifacts and MLMD.

    Both must agree, or a notebook would not see the blessed models `hoh run` produced."""
    from tfx.orchestration import metadata

    return dict(
        pipeline_name=cfg.pipeline_name,
        pipeline_root=str(Path(cfg.pipeline_root).resolve()),
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            str(Path(cfg.metadata_path).resolve())
        ),
        beam_pipeline_args=list(cfg.beam.args),
    )


def open_readonly(metadata_path: str):
    """A read-only MLMD store: read-back must never create or migrate the database it inspects."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)
