"""Finding the schema SchemaGen inferred, so a person can review it and commit it to schemas/."""
from __future__ import annotations

import os

from hoh.errors import HohError
from hoh.pipeline.mlmd import open_readonly

SCHEMA_FILE = "schema.pbtxt"


def latest_inferred_schema(metadata_path: str) -> str:
    if not os.path.exists(metadata_path):
        raise HohError(f"no pipeline metadata at {metadata_path}: run `hoh run` first")
    store = open_readonly(metadata_path)
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
