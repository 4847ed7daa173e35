"""Finding the schema SchemaGen inferred, so a person can review it and commit it to schemas/."""

from __future__ import annotations

import os
from typing import List, Tuple

from hoh import features
from hoh.errors import HohError
from hoh.pipeline.telemetry.mlmd import open_readonly

SCHEMA_FILE = "schema.pbtxt"


def latest_inferred_schema(metadata_path: str) -> str:
    if not os.path.exists(metadata_path):
        raise HohError(f"no pipeline metadata at {metadata_path}: run `hoh run` first")
    store = open_readonly(metadata_path)
    schemas = [
        a
        for a in store.get_artifacts_by_type("Schema")
        if os.path.exists(os.path.join(a.uri, SCHEMA_FILE))
        and "ImportSchemaGen" not in a.uri  # only inferred ones are worth promoting
    ]
    if not schemas:
        raise HohError(
            "no inferred schema in this output directory: run once with --set schema.path=infer"
        )
    latest = max(schemas, key=lambda a: (a.create_time_since_epoch, a.id))
    return os.path.join(latest.uri, SCHEMA_FILE)


def promotable_schema(schema_text: str) -> Tuple[str, List[str]]:
    """The inferred schema as it should be committed, and what was changed in it.

    SchemaGen cannot know that `image_raw` holds images; without `image_domain` TFDV keeps
    sketches of the image bytes and StatisticsGen's memory grows with the span (docs/SCHEMA.md),
    so promotion adds the domain rather than relying on the reviewer to remember it.
    """
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse(schema_text, schema_pb2.Schema())
    changes = []
    for feature in schema.feature:
        if feature.name == features.IMAGE_KEY and feature.WhichOneof("domain_info") is None:
            feature.image_domain.SetInParent()
            changes.append(
                f"added image_domain to {features.IMAGE_KEY!r} "
                "(TFDV then keeps byte sizes, not the bytes)"
            )
    return text_format.MessageToString(schema), changes
