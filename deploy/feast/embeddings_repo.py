"""Feast definitions for hoh's backbone embedding store (hoh/data/embeddings.py).

One feature view per backbone: a store partition `STORE/backbone=<KEY>/` holds the embeddings of
one network (weights, input size, width), and vectors of two backbones must never be mixed in
one training set. `hoh embeddings list` prints each KEY and what it stands for. Set
HOH_EMBEDDINGS_PARTITION to the partition folder (local path, or gs:// with Feast's GCS extra)
before `feast apply`. Not run here: Feast is not installable beside the pinned TFX stack.

The column names below are the store's (`ID_COLUMN`, `TIME_COLUMN`, `EMBEDDING_COLUMN`);
tests/test_embeddings.py checks they agree.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Array, Float32

image = Entity(
    name="image",
    join_keys=["image_id"],
    value_type=ValueType.STRING,
    description="An image by content: sha256 hex of its encoded bytes (the `id` feature that "
    "hoh data import and hoh ingest write).",
)

backbone_embeddings = FileSource(
    name="hoh_backbone_embeddings",
    path=os.environ.get("HOH_EMBEDDINGS_PARTITION", "data/embeddings/backbone=KEY"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
)

backbone_embedding = FeatureView(
    name="hoh_backbone_embedding",
    entities=[image],
    # An image's embedding never expires: the same bytes through the same backbone.
    ttl=timedelta(days=36500),
    schema=[Field(name="embedding", dtype=Array(Float32))],
    source=backbone_embeddings,
    online=False,
    tags={"producer": "hoh", "store": "hoh/data/embeddings.py"},
)
