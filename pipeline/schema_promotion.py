"""Finding the schema SchemaGen inferred, so a person can review it and commit it to schemas/."""
from __future__ import annotations

import os

from hoh.errors import HohError

SCHEMA_FILE = "schema.pbtxt"


def latest_inferred_schema(metadata_path: str) -> str:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(metadata_path):
        raise HohError(f"no pipeline metadata at {metadata_path}: run `hoh run` first")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    schemas = [
        a for a in store.get_artifacts_by_type("Schema")
        if os.path.exists(os.path.join(a.uri, SCHEMA_FILE))
        and "ImportSchemaGen" not in a.uri  # only inferred ones are worth promoting
    ]
    if not schemas:
        raise HohError(
            "no inferred schema in this output directory: run once with --set schema.path=infer"
        )
    latest = max(schemas, key=lambda a: (a.create_time_since_epoch, a.id))
    return os.path.join(latest.uri, SCHEMA_FILE)
