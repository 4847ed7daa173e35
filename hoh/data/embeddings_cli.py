"""`hoh embeddings list` and `hoh embeddings prune`: the embedding store's housekeeping.

The store itself is hoh/data/embeddings.py; the pipeline fills it (docs/MULTICLASS.md).
"""

from __future__ import annotations

import argparse

from hoh.errors import UsageError


def _store_root(args: argparse.Namespace) -> str:
    """--store, else the config's embeddings.store resolved against its data root."""
    if args.store:
        return args.store
    from hoh.config import load_config

    cfg = load_config(args.config, args.set)
    store = cfg.embeddings.resolve(cfg.data.root or cfg.demo_data_dir)
    if not store:
        raise UsageError("embeddings.store is null (off) in this config; give --store DIR")
    return store


def _run_list(args: argparse.Namespace) -> int:
    from hoh.data.embeddings import backbones

    root = _store_root(args)
    found = backbones(root)
    if not found:
        print(f"{root}: empty (no backbone has stored embeddings yet)")
        return 0
    print(f"{root}:")
    for b in found:
        what = b["backbone"].describe() if b["backbone"] else "unreadable backbone.json"
        print(f"  backbone={b['key']}  {b['rows']} images in {b['parts']} part(s)  ({what})")
    return 0


def _data_ids(data_root: str) -> set[str]:
    from hoh import features
    from hoh.data.tfrecords import read_ids_labels

    spans = features.list_spans(data_root)
    if not spans:
        raise UsageError(f"--keep-data {data_root}: holds no spans (span-N/) to keep ids of")
    pattern = f"{data_root.rstrip('/')}/{features.SPAN_PREFIX}*/*/*.gz"
    return set(read_ids_labels([pattern])[0])


def _run_prune(args: argparse.Namespace) -> int:
    from hoh.data.embeddings import EmbeddingStore, backbones, drop_backbone

    root = _store_root(args)
    keep = _data_ids(args.keep_data) if args.keep_data else None
    found = {b["key"]: b for b in backbones(root)}
    unknown = sorted(set(args.drop_backbone) - set(found))
    if unknown:
        raise UsageError(f"--drop-backbone {unknown}: no such backbone in {root} ({sorted(found)})")
    for key in args.drop_backbone:
        drop_backbone(root, key)
        print(f"backbone={key}: dropped ({found.pop(key)['rows']} images)")
    for key, b in sorted(found.items()):
        if b["backbone"] is None:
            print(f"backbone={key}: skipped, its backbone.json is unreadable")
            continue
        kept, dropped = EmbeddingStore(root, b["backbone"]).compact(keep)
        print(f"backbone={key}: {kept} images kept in one part, {dropped} rows dropped")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embeddings",
        help="list or prune the backbone embedding store",
        description="The embedding store keeps each image's backbone embedding, keyed by the "
        "image's content hash and the backbone, so the Trainer (frozen backbone), the drift "
        "check and the sampler compute each image once (docs/MULTICLASS.md).",
    )
    commands = parser.add_subparsers(dest="embeddings_command", metavar="COMMAND")
    commands.required = True
    listing = commands.add_parser("list", help="backbones in the store and their image counts")
    prune = commands.add_parser(
        "prune",
        help="merge parts, drop duplicates, ids no longer in the data, or whole backbones",
        description="Compaction writes the merged part before deleting the parts it read: a "
        "crash leaves duplicates, never a gap. Safe while a run writes (its new parts are "
        "left alone).",
    )
    prune.add_argument(
        "--keep-data",
        metavar="DATA_ROOT",
        help="keep only images present in some span of this data root",
    )
    prune.add_argument(
        "--drop-backbone",
        action="append",
        default=[],
        metavar="KEY",
        help="delete every embedding of this backbone (e.g. after a fine-tuned model is gone)",
    )
    for sub, handler in ((listing, _run_list), (prune, _run_prune)):
        sub.add_argument("--store", metavar="DIR", help="the store (default: embeddings.store)")
        sub.add_argument("--config", help="YAML config (for embeddings.store and data.root)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        sub.set_defaults(handler=handler)
