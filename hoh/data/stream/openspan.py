"""The open span: durable micro-batches that become one sealed span, complete or absent.

Layout under the data root DATA (all hidden, so `hoh.features.list_spans` and ImportExampleGen
never see any of it):

    DATA/.ingest.lock                      flock: batch commits and sealing take turns
    DATA/.open-span/shards/B.SPLIT.tfrecord.gz   one gzip shard per micro-batch and split
    DATA/.open-span/journal/B.json         what batch B holds: images, rejections, broker keys
    DATA/.open-span/.tmp/WRITER/           shards being written (never read); WRITER.lock is
                                           flocked while its writer lives
    DATA/.open-span/.sealing.json          present only while a seal is being published
    DATA/.open-span/positions.json         per Kafka partition, the offset below which every
                                           message is in the data (kept across seals)

A batch is committed by renaming its journal into `journal/` after its shards were fsynced and
renamed into `shards/` (file, then directory): a journal names only data that is on disk, and a
shard without a journal is the leftover of a crash whose messages were never acknowledged, so
recovery deletes it and the broker redelivers them. The consumer acknowledges a batch only
after `commit` returns.

Sealing builds the span as `hoh data import` does: a private `.tmp-span-N-*` directory holding
hard links to the shards (rewritten only where the seal moves or drops records), renamed to
`span-N` by the importer's own `publish_span`, with `import_report.json` written and fsynced
first. The span number is the importer's `next_span`, chosen under the lock. Splits are decided
per image from its content hash when it is written and settled by the importer's `plan_labeled`
at seal time (which moves an image only for tiny classes), so a sealed span has exactly the
examples and splits an import of the same images has. Duplicates across batches (parallel
consumers, redelivery) are resolved at seal too: the first committed copy is kept.

A marker written before the rename lists the batches the span took; recovery after a crash
finishes the seal (deletes those batches) if the span was published, else forgets it, so no
image is sealed twice and none is lost.

Positions are for brokers that redeliver by position (Kafka): a consumer killed between a
durable batch and its offset commit makes the partition's next owner re-read from the older
commit, and it may come to that partition only after several seals, when neither the broker keys
nor the `dedup_spans` content window remember the batch. Each journal records the commit point
its batch makes, and a seal folds them into `positions.json` before the journals go, so a
message below a recorded position is known to be stored however late it comes again.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from hoh import features
from hoh.config import IngestConfig
from hoh.data.importer import (
    DEFAULT_EVAL_RATIO,
    REPORT_NAME,
    check_creatable,
    describe_os_error,
    next_span,
    plan_labeled,
    publish_span,
)
from hoh.data.report import Duplicate, ImportReport, Rejected
from hoh.data.split import EVAL, POOL, TRAIN, eval_fraction
from hoh.data.tfrecords import ShardedWriter, serialize_example, shard_name
from hoh.durable import sync_path, sync_tree, write_hidden_temp
from hoh.errors import HohError, RunFailed

OPEN_DIR = ".open-span"
LOCK_NAME = ".ingest.lock"
SEALING = ".sealing.json"
POSITIONS = "positions.json"
_SHARD_SUFFIX = features.TFRECORD_SUFFIX
_ONE_SHARD = 1 << 62  # a micro-batch is one shard per split


@dataclass
class Accepted:
    """One image that passed every check, with the bytes to write."""

    id: str
    label: Optional[str]
    source: str
    capture_time: str
    width: int
    height: int
    data: bytes = field(repr=False, default=b"")

    def entry(self, split: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "source": self.source,
            "split": split,
            "capture_time": self.capture_time,
        }


@dataclass
class Batch:
    """What one micro-batch did with each message it took from the broker."""

    images: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # every message of the batch, by broker key
    # partition -> offset below which all is stored once this batch is (Kafka's commit points)
    positions: dict[str, int] = field(default_factory=dict)
    redelivered: int = 0  # messages already in the open span (not counted as seen)


def write_split(image_id: str, unlabeled: bool, eval_ratio: float) -> str:
    """The split an image is written to: the content-hash rule of hoh.data.split."""
    if unlabeled:
        return POOL
    return EVAL if eval_fraction(image_id) < eval_ratio else TRAIN


def _device(source: str) -> str:
    """What a report counts images by: the camera or folder, i.e. the source's first part."""
    return source.split("/", 1)[0]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _mkdirs(*paths: Path) -> None:
    """Create and make durable: a shard renamed into a directory that was lost is lost too."""
    for path in paths:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            sync_path(path.parent)


def read_ids(paths: list[Path]) -> list[tuple[str, Optional[str]]]:
    """(id, label) of every record in these gzip TFRecord shards, in order."""
    import tensorflow as tf

    out = []
    for raw in tf.data.TFRecordDataset([str(p) for p in paths], compression_type="GZIP"):
        feature = tf.train.Example.FromString(raw.numpy()).features.feature
        labels = (
            feature[features.LABEL_KEY].bytes_list.value if features.LABEL_KEY in feature else []
        )
        out.append(
            (
                feature[features.ID_KEY].bytes_list.value[0].decode("ascii"),
                labels[0].decode("utf-8") if labels else None,
            )
        )
    return out


class OpenSpan:
    """The open span of one data root, as seen by one writer (a consumer or `hoh ingest seal`)."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        unlabeled: bool = False,
        eval_ratio: float = DEFAULT_EVAL_RATIO,
        dedup_spans: int = 0,
        source: str = "stream",
        gzip_level: Optional[int] = None,
    ):
        self.gzip_level = IngestConfig().gzip_level if gzip_level is None else gzip_level
        self.out_dir = Path(out_dir).absolute()
        self.unlabeled, self.eval_ratio, self.dedup_spans = unlabeled, eval_ratio, dedup_spans
        self.source = source  # the broker and stream, for reports and errors
        self.dir = self.out_dir / OPEN_DIR
        self.shards, self.journal = self.dir / "shards", self.dir / "journal"
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._tmp = self.dir / ".tmp" / self.writer
        self._tmp_lock = None  # held while this object lives (see _claim_tmp)
        self._seq = 0
        self._journals: dict[str, dict[str, Any]] = {}
        self._ids: dict[str, tuple[str, Optional[str]]] = {}  # id -> (source, label) kept
        self._keys: set[str] = set()
        self._positions: dict[str, int] = {}
        self._sealed_ids: dict[str, tuple[str, Optional[str]]] = {}
        self._sealed_spans: tuple[int, ...] = ()

    # ------------------------------------------------------------------ state

    @property
    def images(self) -> int:
        return len(self._ids)

    def age_seconds(self, now: Optional[float] = None) -> float:
        """Seconds since the open span's first committed batch (0 when it is empty)."""
        if not self._journals:
            return 0.0
        # list(): a copy taken at once, as a commit on another thread may add a journal.
        first = min(j["committed_unix"] for j in list(self._journals.values()))
        return max(0.0, (now or time.time()) - first)

    def known(self, key: str, position: Optional[tuple[str, int]] = None) -> bool:
        """Whether the message with this broker key (and partition position) is already stored."""
        if key in self._keys:
            return True
        return position is not None and position[1] < self._positions.get(position[0], -1)

    @property
    def positions(self) -> dict[str, int]:
        return dict(self._positions)

    def kept_copy(self, image_id: str) -> Optional[tuple[str, Optional[str]]]:
        """(source, label) of the copy already stored, in the open span or a recent sealed span."""
        return self._ids.get(image_id) or self._sealed_ids.get(image_id)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.out_dir / LOCK_NAME, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _error(self, what: str, exc: Exception) -> HohError:
        return RunFailed(
            f"cannot write to {self.out_dir} ({what}): {describe_os_error(exc)}. Nothing of this "
            "batch was acknowledged: the broker delivers it again once the output is fixed."
        )

    def open(self, adopt: bool = False) -> None:
        """Check the output, recover from a crash, load the open span; before any message.

        `adopt` takes the open span's settings (labelled or not, eval ratio) instead of
        checking that they match this writer's.
        """
        check_creatable("output", self.out_dir, want_dir=True)
        try:
            created = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if created:
                sync_path(self.out_dir.parent)
            with self._locked():
                _mkdirs(self.dir, self.shards, self.journal)
                self._recover()
                self._refresh()
        except OSError as exc:
            raise self._error("opening the open span", exc) from None
        if adopt and self._journals:  # `hoh ingest seal`: the span's own settings
            first = self._journals[min(self._journals)]
            self.unlabeled, self.eval_ratio = first["unlabeled"], first["eval_ratio"]
            self.source = first["source"]
        for journal in self._journals.values():
            if (journal["unlabeled"], journal["eval_ratio"]) != (self.unlabeled, self.eval_ratio):
                raise HohError(
                    f"the open span in {self.dir} was started with unlabeled="
                    f"{journal['unlabeled']} and eval ratio {journal['eval_ratio']}; seal it "
                    "first (`hoh ingest seal`) or use the same settings"
                )

    def _recover(self) -> None:
        """Under the lock: finish or forget an interrupted seal, drop what no journal names."""
        self._finish_interrupted_seal()
        named = set()
        for path in self.journal.glob("*.json"):
            named.update(json.loads(path.read_text(encoding="utf-8"))["shards"].values())
        for path in self.shards.iterdir():
            if path.name not in named:  # written by a crashed batch that was never acknowledged
                path.unlink()
        for path in self.journal.iterdir():
            if path.name.startswith("."):
                path.unlink()
        tmp_root = self.dir / ".tmp"
        if tmp_root.is_dir():
            for path in tmp_root.glob("*.lock"):
                self._remove_if_abandoned(path)

    @staticmethod
    def _remove_if_abandoned(lock: Path) -> None:
        """Delete a writer's scratch space once no process holds its lock (it died)."""
        with open(lock, "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # its writer is alive, on this host or another sharing the folder
            shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
            lock.unlink()

    def _claim_tmp(self) -> None:
        """Lock this writer's scratch space before creating it, for `_remove_if_abandoned`.

        A flock, unlike a pid, is released by the kernel however the process ends and cannot
        be mistaken for a later process that reuses the pid.
        """
        if self._tmp_lock is None:
            _mkdirs(self._tmp.parent)
            fh = open(self._tmp.with_name(self._tmp.name + ".lock"), "a+b")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._tmp_lock = fh

    def _finish_interrupted_seal(self) -> None:
        marker = self.dir / SEALING
        if not marker.exists():
            return
        seal = json.loads(marker.read_text(encoding="utf-8"))
        report = features.span_dir(self.out_dir, seal["span"]) / REPORT_NAME
        published = False
        if report.exists():
            stream = json.loads(report.read_text(encoding="utf-8")).get("stream") or {}
            published = stream.get("seal_id") == seal["seal_id"]
        if published:
            self._drop_batches(seal["batches"])
        else:
            shutil.rmtree(seal["tmp"], ignore_errors=True)
        marker.unlink()
        sync_path(self.dir)

    def _drop_batches(self, names: list[str]) -> None:
        for name in names:
            journal = self.journal / f"{name}.json"
            if journal.exists():
                for shard in json.loads(journal.read_text(encoding="utf-8"))["shards"].values():
                    (self.shards / shard).unlink(missing_ok=True)
                journal.unlink()
        sync_path(self.journal)
        sync_path(self.shards)

    def _refresh(self) -> None:
        """Under the lock: follow batches committed or sealed by other writers."""
        names = {p.stem for p in self.journal.glob("*.json")}
        gone = set(self._journals) - names
        for name in gone:
            del self._journals[name]
        for name in sorted(names - set(self._journals)):
            text = (self.journal / f"{name}.json").read_text(encoding="utf-8")
            self._journals[name] = json.loads(text)
            if not gone:
                self._index(self._journals[name])
        if gone:
            self._rebuild()  # reads the saved positions too
        else:  # another writer may have committed and sealed batches this one never saw
            self._merge_positions(self._saved_positions())
        self._load_sealed_ids()

    def _rebuild(self) -> None:
        self._ids, self._keys, self._positions = {}, set(), self._saved_positions()
        for name in sorted(self._journals):
            self._index(self._journals[name])

    def _index(self, journal: dict[str, Any]) -> None:
        for image in journal["images"]:
            self._ids.setdefault(image["id"], (image["source"], image["label"]))
        self._keys.update(journal["keys"])
        self._merge_positions(journal.get("positions", {}))  # journals from before positions

    def _merge_positions(self, positions: dict[str, int]) -> None:
        for part, offset in positions.items():  # a position only ever grows
            self._positions[part] = max(offset, self._positions.get(part, -1))

    def _saved_positions(self) -> dict[str, int]:
        path = self.dir / POSITIONS
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:  # written by rename, so only a hand edit gets here
            saved = exc
        if not isinstance(saved, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in saved.values()
        ):
            raise RunFailed(
                f"{path} is not a JSON object of partition: offset ({saved}); it records which "
                "Kafka messages are already stored. Restore it, or delete it to let the broker's "
                "committed offsets decide."
            )
        return saved

    def _save_positions(self) -> None:
        """Before a seal drops the journals: their commit points must outlive them."""
        staged = write_hidden_temp(self.dir, POSITIONS, json.dumps(self._positions, sort_keys=True))
        os.replace(staged, self.dir / POSITIONS)

    def _load_sealed_ids(self) -> None:
        """Ids of the last `dedup_spans` sealed spans, re-read only when the spans change."""
        spans = tuple(
            features.list_spans(self.out_dir)[-self.dedup_spans :] if self.dedup_spans else ()
        )
        if spans == self._sealed_spans:
            return
        self._sealed_ids = {}
        for span in spans:
            root = features.span_dir(self.out_dir, span)
            for image_id, label in read_ids(sorted(root.glob(f"*/*{_SHARD_SUFFIX}"))):
                self._sealed_ids.setdefault(image_id, (root.name, label))
        self._sealed_spans = spans

    # ------------------------------------------------------------------ commit

    def commit(self, batch: Batch) -> None:
        """Write `batch` durably; when this returns its messages may be acknowledged."""
        import tensorflow as tf

        self._seq += 1
        name = f"{time.time_ns():020d}-{self.writer}-{self._seq:06d}"
        work = self._tmp / name
        entries, shards = [], {}
        try:
            self._claim_tmp()
            _mkdirs(self._tmp)
            work.mkdir(parents=True)
            writers: dict[str, ShardedWriter] = {}
            for image in sorted(batch.images, key=lambda i: i.id):  # mixes classes a little
                split = write_split(image.id, self.unlabeled, self.eval_ratio)
                if split not in writers:
                    writers[split] = ShardedWriter(tf, work / split, _ONE_SHARD, self.gzip_level)
                writers[split].write(
                    serialize_example(
                        tf,
                        image.data,
                        image.id,
                        image.source,
                        image.label,
                        image.width,
                        image.height,
                    )
                )
                entries.append(image.entry(split))
            for split, writer in writers.items():
                (path,) = writer.close()
                sync_path(path)
                shards[split] = path
            journal = {
                "version": 1,
                "batch": name,
                "writer": self.writer,
                "source": self.source,
                "committed_at": _now(),
                "committed_unix": time.time(),
                "unlabeled": self.unlabeled,
                "eval_ratio": self.eval_ratio,
                "images": entries,
                "shards": {s: f"{name}.{s}{_SHARD_SUFFIX}" for s in shards},
                "rejected": [asdict(r) for r in batch.rejected],
                "duplicates": [asdict(d) for d in batch.duplicates],
                "keys": batch.keys,
                "positions": batch.positions,
                "redelivered": batch.redelivered,
            }
            staged = write_hidden_temp(work, "journal", json.dumps(journal))
            with self._locked():
                if not self.dir.is_dir():
                    raise FileNotFoundError(2, "open span directory vanished", str(self.dir))
                self._refresh()
                for split, path in shards.items():
                    os.rename(path, self.shards / journal["shards"][split])
                sync_path(self.shards)
                os.rename(staged, self.journal / f"{name}.json")  # the commit point
                sync_path(self.journal)
                self._journals[name] = journal
                self._index(journal)
        except (OSError, tf.errors.OpError) as exc:
            raise self._error(f"batch {name}", exc) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ seal

    def seal(self) -> Optional[ImportReport]:
        """Publish the open span as the next span-N; None when it holds no batch.

        Raises HohError (and keeps the open span as it is) when the images would not make a
        usable span, for the same reasons an import refuses (fewer than 2 classes, ...).
        """
        try:
            with self._locked():
                self._refresh()
                if not self._journals:
                    return None
                return self._seal_locked()
        except OSError as exc:
            raise RunFailed(
                f"cannot seal the open span in {self.dir}: "
                f"{describe_os_error(exc)}; nothing was published"
            ) from None

    def _plan(self, names: list[str], report: ImportReport):
        """Which copy of each image the span keeps, and the report's per-message lists."""
        kept: dict[str, dict[str, Any]] = {}
        rejected, duplicates = [], []
        for name in names:
            journal = self._journals[name]
            rejected += [Rejected(**r) for r in journal["rejected"]]
            duplicates += [Duplicate(**d) for d in journal["duplicates"]]
            for image in journal["images"]:
                first = kept.get(image["id"])
                sealed = self._sealed_ids.get(image["id"])
                if first is not None or sealed is not None:
                    of = first["source"] if first else sealed[0]
                    kept_label = first["label"] if first else sealed[1]
                    duplicates.append(
                        Duplicate(image["source"], of, image["id"], image["label"], kept_label)
                    )
                else:
                    kept[image["id"]] = image
        report.rejected = sorted(rejected, key=lambda r: r.path)
        report.duplicates = duplicates
        return kept

    def _seal_locked(self) -> ImportReport:
        names = sorted(self._journals)
        # The batches' own settings decide (their splits were chosen with them), whoever seals.
        settings = {(j["unlabeled"], j["eval_ratio"]) for j in self._journals.values()}
        if len(settings) > 1:
            raise HohError(
                f"the open span in {self.dir} holds batches written with different "
                f"settings (unlabeled, eval ratio): {sorted(settings)}; not sealed"
            )
        ((unlabeled, eval_ratio),) = settings
        span = next_span(self.out_dir)
        report = ImportReport(
            src=self._journals[names[0]]["source"],
            out_dir=str(self.out_dir),
            span=span,
            span_dir=str(features.span_dir(self.out_dir, span)),
            eval_ratio=eval_ratio,
            unlabeled=unlabeled,
        )
        kept = self._plan(names, report)
        good = [(i, image["label"]) for i, image in kept.items()]
        try:
            if unlabeled:
                if not good:
                    raise HohError("no usable image")
                splits = {i: POOL for i, _ in good}
            else:
                splits = plan_labeled(report, good, sorted({label for _, label in good}))
        except HohError as exc:
            raise HohError(
                f"the open span in {self.dir} was not sealed: {exc} It is kept; "
                "more images will make it sealable."
            ) from None
        seal_id = secrets.token_hex(8)
        tmp = self.out_dir / f".tmp-span-{span}-{seal_id}"
        try:
            parts = self._stage(names, kept, splits, tmp)
            report.split_counts = {s: n for s, n in Counter(splits.values()).items()}
            report.split_counts = {
                s: report.split_counts[s] for s in (TRAIN, EVAL, POOL) if s in report.split_counts
            }
            report.shards = parts
            report.written = len(kept)
            report.seen = report.written + len(report.rejected) + len(report.duplicates)
            times = sorted(image["capture_time"] for image in kept.values())
            report.stream = {
                "seal_id": seal_id,
                "sealed_at": _now(),
                "batches": len(names),
                "sources": dict(
                    sorted(Counter(_device(i["source"]) for i in kept.values()).items())
                ),
                "capture_time": {
                    "first": times[0] if times else None,
                    "last": times[-1] if times else None,
                },
                "dead_lettered": len(report.rejected),
                "redelivered": sum(self._journals[n]["redelivered"] for n in names),
            }
            assert report.adds_up
            (tmp / REPORT_NAME).write_text(report.to_json(), encoding="utf-8")
            sync_tree(tmp)
            if self._positions:
                self._save_positions()
            marker = {"seal_id": seal_id, "span": span, "tmp": str(tmp), "batches": names}
            staged = write_hidden_temp(self.dir, SEALING, json.dumps(marker))
            os.replace(staged, self.dir / SEALING)
            sync_path(self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            publish_span(report, tmp, None, None, created_out=False)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            (self.dir / SEALING).unlink(missing_ok=True)
            raise
        self._drop_batches(names)
        (self.dir / SEALING).unlink()
        sync_path(self.dir)
        self._journals.clear()
        self._rebuild()
        self._load_sealed_ids()
        return report

    def _stage(
        self, names: list[str], kept: dict[str, dict[str, Any]], splits: dict[str, str], tmp: Path
    ) -> dict[str, int]:
        """Hard-link every shard into the span-to-be, rewriting the few the seal changes."""
        import tensorflow as tf

        parts: dict[str, list[Path]] = {}
        rewrite: dict[str, ShardedWriter] = {}

        def place(split: str, path: Path) -> None:
            target = tmp / split / f"part-{len(parts.setdefault(split, [])):06d}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
            parts[split].append(target)

        tmp.mkdir()
        for name in names:
            journal = self._journals[name]
            for split, shard in sorted(journal["shards"].items()):
                path = self.shards / shard
                images = [i for i in journal["images"] if i["split"] == split]
                unchanged = all(kept.get(i["id"]) is i and splits[i["id"]] == split for i in images)
                if unchanged:
                    place(split, path)
                    continue
                wanted = {i["id"] for i in images if kept.get(i["id"]) is i}
                for raw in tf.data.TFRecordDataset([str(path)], compression_type="GZIP"):
                    record = raw.numpy()
                    image_id = (
                        tf.train.Example.FromString(record)
                        .features.feature[features.ID_KEY]
                        .bytes_list.value[0]
                        .decode("ascii")
                    )
                    if image_id in wanted:
                        wanted.discard(image_id)  # one copy even if a batch held it twice
                        final = splits[image_id]
                        if final not in rewrite:
                            rewrite[final] = ShardedWriter(
                                tf, tmp / f".rewrite-{final}", _ONE_SHARD, self.gzip_level
                            )
                        rewrite[final].write(record)
        for split, writer in rewrite.items():
            for path in writer.close():
                place(split, path)
                path.unlink()
            shutil.rmtree(tmp / f".rewrite-{split}")
        counts = {}
        for split, paths in parts.items():
            for index, path in enumerate(paths):
                path.rename(path.with_name(shard_name(index, len(paths))))
            counts[split] = len(paths)
        return {s: counts[s] for s in (TRAIN, EVAL, POOL) if s in counts}
