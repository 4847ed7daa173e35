"""The embedding store on its own: keys, crash safety, two writers, pruning, wrong folders."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from hoh.data.embeddings import (
    BACKBONE_FILE,
    BackboneId,
    EmbeddingStore,
    EmbeddingStoreError,
    backbones,
    weights_sha256,
)

DIM = 8


def _backbone(weights: str = "a" * 64, dim: int = DIM) -> BackboneId:
    return BackboneId(weights_sha256=weights, image_size=32, alpha=0.35, dim=dim)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def test_vectors_come_back_bitwise_under_their_ids_and_unknown_ids_are_absent(tmp_path):
    store = EmbeddingStore.open(str(tmp_path / "store"), _backbone())
    vectors = _vectors(5)
    store.add([f"id{i}" for i in range(5)], vectors)
    found = store.lookup(["id3", "id0", "nope"])
    assert set(found) == {"id0", "id3"}
    np.testing.assert_array_equal(found["id3"], vectors[3])
    assert found["id0"].dtype == np.float32 and store.count() == 5


def test_the_key_is_the_backbone_identity_so_another_backbone_never_reads_these_entries(tmp_path):
    root = str(tmp_path / "store")
    EmbeddingStore.open(root, _backbone("a" * 64)).add(["x"], _vectors(1))
    other = EmbeddingStore.open(root, _backbone("b" * 64))
    assert (
        other.lookup(["x"]) == {} and other.directory != EmbeddingStore(root, _backbone()).directory
    )
    assert sorted(b["rows"] for b in backbones(root)) == [0, 1]


def test_weights_fingerprint_changes_with_any_weight_and_not_otherwise():
    a = [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]
    b = [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]
    assert weights_sha256(a) == weights_sha256(b)
    b[1][2] = 1e-7
    assert weights_sha256(a) != weights_sha256(b)
    # Same bytes, other shape: another network.
    assert weights_sha256([np.ones((3, 2), np.float32)]) != weights_sha256([a[0]])


def test_a_partition_whose_manifest_names_another_backbone_is_refused(tmp_path):
    root = tmp_path / "store"
    store = EmbeddingStore.open(str(root), _backbone())
    manifest = Path(store.directory) / BACKBONE_FILE
    tampered = json.loads(manifest.read_text())
    tampered["dim"] = 1280
    manifest.write_text(json.dumps(tampered))
    with pytest.raises(EmbeddingStoreError, match="written for another backbone"):
        EmbeddingStore.open(str(root), _backbone())


def test_vectors_of_another_width_are_refused_before_anything_is_written(tmp_path):
    store = EmbeddingStore.open(str(tmp_path / "store"), _backbone())
    with pytest.raises(EmbeddingStoreError, match=r"shape \(2, 3\) do not match the backbone's 8"):
        store.add(["a", "b"], np.zeros((2, 3), np.float32))
    assert store.parts() == []


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    lake = tmp_path / "lake"
    (lake / "span-1").mkdir(parents=True)
    with pytest.raises(EmbeddingStoreError, match=r"holds \['span-1'\], which a store does not"):
        EmbeddingStore.open(str(lake), _backbone())
    (tmp_path / "file").write_text("x")
    with pytest.raises(EmbeddingStoreError, match="is not a folder"):
        EmbeddingStore.open(str(tmp_path / "file"), _backbone())


def test_a_half_written_part_left_by_a_crash_is_never_read(tmp_path):
    store = EmbeddingStore.open(str(tmp_path / "store"), _backbone())
    store.add(["ok"], _vectors(1))
    # What a writer killed mid-write leaves: a hidden temporary name with truncated bytes.
    part = Path(store.parts()[0])
    (part.parent / f".{part.name}.tmp-dead").write_bytes(part.read_bytes()[:40])
    assert set(store.lookup(["ok"])) == {"ok"} and len(store.parts()) == 1


def test_a_corrupt_part_is_an_error_naming_it(tmp_path):
    store = EmbeddingStore.open(str(tmp_path / "store"), _backbone())
    (Path(store.directory) / "part-broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(EmbeddingStoreError, match="part-broken.parquet is unreadable"):
        store.lookup(["x"])


def _writer(root: str, start: int, n: int) -> None:
    store = EmbeddingStore.open(root, _backbone())
    for i in range(start, start + n):
        store.add([f"id{i}", "shared"], np.stack([_vectors(1, i)[0], _vectors(1, 999)[0]]))


def test_two_processes_writing_at_once_lose_nothing_and_share_equal_entries(tmp_path):
    root = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, s, 20)) for s in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = EmbeddingStore.open(root, _backbone())
    ids = [f"id{i}" for i in [*range(20), *range(100, 120)]]
    found = store.lookup(ids + ["shared"])
    assert len(found) == 41 and store.count() == 41
    np.testing.assert_array_equal(found["id105"], _vectors(1, 105)[0])


def test_compaction_merges_parts_drops_duplicates_and_ids_no_longer_kept(tmp_path):
    store = EmbeddingStore.open(str(tmp_path / "store"), _backbone())
    vectors = _vectors(4)
    store.add(["a", "b"], vectors[:2])
    store.add(["b", "c", "d"], vectors[1:])
    assert len(store.parts()) == 2
    kept, dropped = store.compact(keep={"a", "b", "c"})
    assert (kept, dropped) == (3, 2)  # the second "b" and "d"
    assert len(store.parts()) == 1 and store.count() == 3
    np.testing.assert_array_equal(store.lookup(["c"])["c"], vectors[2])


def test_cli_lists_backbones_and_prunes_to_the_data_and_drops_a_backbone(tmp_path, capsys):
    from imagegen import write_classes

    from hoh.cli import main
    from hoh.data.importer import import_images
    from hoh.data.tfrecords import read_ids_labels

    write_classes(tmp_path / "src", {"a": 3, "b": 3})
    import_images(tmp_path / "src", tmp_path / "lake")
    span_ids = read_ids_labels([str(tmp_path / "lake" / "span-1" / "*" / "*.gz")])[0]
    root = str(tmp_path / "store")
    kept = EmbeddingStore.open(root, _backbone("a" * 64))
    kept.add(span_ids + ["gone1", "gone2"], _vectors(len(span_ids) + 2))
    old = EmbeddingStore.open(root, _backbone("b" * 64))
    old.add(["x"], _vectors(1))

    assert main(["embeddings", "list", "--store", root]) == 0
    out = capsys.readouterr().out
    assert f"backbone={kept.backbone.key}  {len(span_ids) + 2} images in 1 part(s)" in out
    assert f"backbone={old.backbone.key}  1 images" in out

    args = ["embeddings", "prune", "--store", root, "--keep-data", str(tmp_path / "lake")]
    assert main([*args, "--drop-backbone", old.backbone.key]) == 0
    out = capsys.readouterr().out
    assert f"backbone={old.backbone.key}: dropped (1 images)" in out
    assert f"{len(span_ids)} images kept in one part, 2 rows dropped" in out
    assert [b["key"] for b in backbones(root)] == [kept.backbone.key]
    assert set(kept.lookup(span_ids + ["gone1"])) == set(span_ids)

    assert main(["embeddings", "prune", "--store", root, "--drop-backbone", "nope"]) == 2
    assert "--drop-backbone ['nope']: no such backbone" in capsys.readouterr().err
    assert main(["embeddings", "list", "--store", str(tmp_path / "lake")]) == 2
    assert "which a store does not" in capsys.readouterr().err


def test_the_shipped_feast_definition_names_the_store_columns():
    """Feast is not installable beside the pinned stack, so the definition is checked by reading
    it: the join key, timestamp field and feature must be the store's real column names."""
    import ast

    from hoh.data import embeddings

    path = Path(__file__).resolve().parents[1] / "deploy" / "feast" / "embeddings_repo.py"
    tree = ast.parse(path.read_text())
    keywords = {
        (call.func.id, kw.arg): kw.value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        for kw in call.keywords
    }
    assert ast.literal_eval(keywords["Entity", "join_keys"]) == [embeddings.ID_COLUMN]
    assert ast.literal_eval(keywords["FileSource", "timestamp_field"]) == embeddings.TIME_COLUMN
    [field] = keywords["FeatureView", "schema"].elts
    assert ast.literal_eval(field.keywords[0].value) == embeddings.EMBEDDING_COLUMN


def test_batch_by_batch_lookups_read_each_part_once_and_survive_a_compaction_elsewhere(
    tmp_path, monkeypatch
):
    from hoh.data import embeddings

    root = str(tmp_path / "store")
    reader = EmbeddingStore.open(root, _backbone())
    vectors = _vectors(60)
    for start in range(0, 60, 10):  # six parts, as six runs would leave them
        reader.add([f"id{i}" for i in range(start, start + 10)], vectors[start : start + 10])
    reader = EmbeddingStore.open(root, _backbone())  # a new process: nothing indexed yet
    reads = []
    real_read = embeddings._read_table
    monkeypatch.setattr(
        embeddings,
        "_read_table",
        lambda path, columns=None: reads.append(columns) or real_read(path, columns),
    )
    for start in range(0, 60, 4):  # the drift check's batches
        batch = [f"id{i}" for i in range(start, start + 4)]
        assert list(reader.lookup(batch)) and len(reader.lookup(batch)) == 4
    full_reads = [c for c in reads if c is None]
    assert len(full_reads) == 6  # each part's vectors read once, not once per batch

    # Another process compacts: the parts this reader indexed are gone (and id7's part is no
    # longer among the ones it keeps in memory), so it finds the merged part.
    EmbeddingStore.open(root, _backbone()).compact()
    before = len(reads)
    np.testing.assert_array_equal(reader.lookup(["id7"])["id7"], vectors[7])
    # The vanished part, then the merged part's ids (re-indexing), then its vectors.
    assert reads[before:] == [None, [embeddings.ID_COLUMN], None]
