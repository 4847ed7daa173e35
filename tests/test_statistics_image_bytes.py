"""TFDV must treat image_raw as image bytes (sizes only), never sketch the image values.

Sketching them is what made StatisticsGen's memory grow with the span (docs/SCHEMA.md); both
ways the pipeline gives TFDV the hint are checked against what TFDV does without it.
"""

from __future__ import annotations

import pytest

from hoh import features


def _image_stats(tiny_span, stats_options):
    import tensorflow_data_validation as tfdv

    files = str(features.span_dir(tiny_span, 1) / "train" / "*")
    stats = tfdv.generate_statistics_from_tfrecord(files, stats_options=stats_options)
    (feature,) = [f for f in stats.datasets[0].features if f.path.step == [features.IMAGE_KEY]]
    return feature


@pytest.mark.e2e
def test_both_hints_give_byte_statistics_instead_of_value_sketches(tiny_span):
    import tensorflow_data_validation as tfdv

    from hoh.pipeline.factory import resolve_schema_path
    from hoh.pipeline.pipeline import image_bytes_stats_options

    unhinted = _image_stats(tiny_span, tfdv.StatsOptions())
    assert unhinted.HasField("string_stats") and len(unhinted.string_stats.top_values) > 0

    curated = tfdv.load_schema_text(resolve_schema_path("auto"))
    for options in (image_bytes_stats_options(), tfdv.StatsOptions(schema=curated)):
        hinted = _image_stats(tiny_span, options)
        assert hinted.HasField("bytes_stats") and not hinted.HasField("string_stats")
        assert hinted.bytes_stats.max_num_bytes > 1000  # real PNG sizes, not a placeholder
