"""The lake: rows as zstd Parquet under ``{root}/events/event_date=YYYY-MM-DD/`` on any fsspec URL
(``s3://bucket/prefix`` through s3fs, or a local directory for the demo).

Exactly once without a coordinator
----------------------------------
A batch boundary is not stable: after a crash the flow replays from its last committed epoch and its batches may
start and end at other offsets than before. Rows are therefore grouped by a **window**, computed from the row
alone::

    (event_date, kafka_topic, kafka_partition, kafka_offset // rows_per_file, received_at // slice_seconds)

and a window is stored as one or more **segments**: objects named after the window and the first Kafka offset they
hold (``part-<topic>-<partition>-<window start>-<slice start>-<first offset>.parquet``), each covering the offset
range from its first to its last row. Writing the rows a batch has for one window:

- the common case, rows after everything the window holds: a plain PUT of a new segment (nothing is read back);
- a small segment this writer has just written, directly followed by the new rows (a quiet partition: a batch
  per epoch of a few rows): that segment is put again under its own name with the rows appended, so that a
  quiet partition does not leave a file per epoch; one PUT replaces it whole;
- rows whose offsets fall within a segment's range (a replay after a crash, with other batch edges): every
  segment whose range meets theirs (transitively) is read, merged with them (one row per ``event_id``, the
  newest copy wins) and put back as one segment; the segments it replaces are deleted after that PUT. A crash
  between the PUT and the deletes leaves rows twice, in ranges that overlap, and the replay that follows (those
  rows were not committed) merges them again.

A writer knows the segments of the windows it has written (names, ranges); the first time it touches a window it
lists the window's objects and reads them for their ranges. Only one writer writes a
Kafka partition at a time (the flow routes each Kafka partition to one sink partition), so what it knows stays
true.

The window bounds each file: at most ``rows_per_file`` Kafka offsets and ``slice_seconds`` of gateway receive time.

``pyarrow.dataset.write_dataset(existing_data_behavior="delete_matching")`` is deliberately not used: it deletes
every file in a partition directory it writes to, including other Kafka partitions' and other windows' files.

Schema: fixed (:data:`LAKE_SCHEMA`); ``properties``, ``context`` and ``consent`` are JSON text, so new event
properties never change the file schema. ``event_date`` is the hive partition column: it lives in the path, not in
the files, and readers get it back through :data:`PARTITIONING`.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sinks.base import BatchWriter, RetryPolicy, column_lists

log = logging.getLogger(__name__)

_UTC_US = pa.timestamp("us", tz="UTC")

#: Every column of a lake row, in ROW_COLUMNS order, ``event_date`` included (it comes from the path on read).
LAKE_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("event", pa.string()), ("event_date", pa.date32()),
    ("timestamp", _UTC_US), ("received_at", _UTC_US),
    ("user_id", pa.string()), ("anonymous_id", pa.string()), ("device_id", pa.string()),
    ("pii_salt_id", pa.string()), ("pii_salt_id_prev", pa.string()),
    ("country", pa.string()), ("region", pa.string()), ("city", pa.string()),
    ("latitude", pa.float64()), ("longitude", pa.float64()), ("time_zone", pa.string()),
    ("ip_truncated", pa.string()), ("plan_tier", pa.string()),
    ("browser", pa.string()), ("os", pa.string()), ("device_class", pa.string()),
    ("properties", pa.string()), ("context", pa.string()), ("consent", pa.string()),
    ("source", pa.string()), ("schema_version", pa.int32()), ("clock_skew_seconds", pa.float64()),
    ("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
])
PARTITION_SCHEMA = pa.schema([("event_date", pa.date32())])
PARTITIONING = ds.partitioning(PARTITION_SCHEMA, flavor="hive")
#: What a file holds: the lake schema without the partition column.
FILE_SCHEMA = pa.schema([f for f in LAKE_SCHEMA if f.name != "event_date"])
_JSON_COLUMNS = ("properties", "context", "consent")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

DEFAULT_ROWS_PER_FILE = 20_000
DEFAULT_SLICE_SECONDS = 3600
#: Windows whose segments a writer remembers (least recently written ones are forgotten, and listed again if ever
#: written again).
_KNOWN_WINDOWS = 512
#: Segments whose rows a writer keeps after writing them (the most recent ones): the next rows of their Kafka
#: partition may extend them, and a replay merges into them without reading them back.
_KEPT_SEGMENTS = 8


@dataclass
class _Segment:
    """One stored object of a window and the range of Kafka offsets it holds."""

    first: int
    last: int
    path: str

    def meets(self, low: int, high: int) -> bool:
        return self.first <= high and self.last >= low


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class ParquetLakeWriter(BatchWriter):
    """Rows to Parquet segments of Kafka offset windows (see the module docstring for the naming).

    Unit of parallelism: one writer per sink partition; two writers may run at once as long as no Kafka partition
    is written by both at the same time (the flow routes each Kafka partition to one sink partition). Delivery:
    idempotent, so at-least-once input gives exactly-once files.

    :param root: lake root, ``s3://bucket/prefix`` or a local directory
    :param storage_options: fsspec options (s3fs: ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``)
    :param rows_per_file: Kafka offsets per window (the size bound of a file)
    :param slice_seconds: gateway-receive-time span per window (the time bound of a file)
    :param append_below: a segment of fewer rows than this is extended by the next rows of its window instead of
        followed by a new one (default: a tenth of ``rows_per_file``; 0 never appends)
    :param compression: Parquet codec
    :param client_retries: attempts s3fs makes per request on timeouts (``None``: its default, 5)
    :param request_timeout: longest one object read or write may take on a remote filesystem, in seconds
    :param retry: retry policy of :meth:`write`
    """

    name = "lake"

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None,
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE, slice_seconds: int = DEFAULT_SLICE_SECONDS,
                 compression: str = "zstd", client_retries: int | None = None, request_timeout: float | None = None,
                 retry: RetryPolicy | None = None, append_below: int | None = None):
        super().__init__(retry)
        if rows_per_file < 1 or slice_seconds < 1:
            raise ValueError("rows_per_file and slice_seconds must be positive")
        self.append_below = rows_per_file // 10 if append_below is None else append_below
        self.root = str(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.rows_per_file = rows_per_file
        self.slice_seconds = slice_seconds
        self.compression = compression
        self.client_retries = client_retries
        self.request_timeout = request_timeout
        self._fs: Any = None
        self._base = ""
        # Window (its object-name prefix, directory included) -> its segments by first offset, as this writer knows
        # them.
        self._windows: OrderedDict[str, list[_Segment]] = OrderedDict()
        # Object path -> its rows as written, for the few segments written last (see _KEPT_SEGMENTS).
        self._kept: OrderedDict[str, pa.Table] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Any, timeout_seconds: float = 10.0, **options: Any) -> ParquetLakeWriter:
        """The lake at ``settings.s3_url`` with the endpoint, region and credentials of ``settings``.

        :param timeout_seconds: connect and read timeout of one S3 request. A hung endpoint then fails a write
            within a few timeouts (two client-side attempts per request), and the writer's own retry policy and
            the flow's pending buffer take over, instead of botocore's and s3fs's retries stalling the flow; a whole
            object read or write is bounded by six times this (``request_timeout``)
        :param options: further constructor arguments (``rows_per_file``, ``retry``, ...)
        """
        storage: dict[str, Any] = {}
        if settings.s3_url.startswith(("s3://", "s3a://")):
            options.setdefault("client_retries", 2)
            options.setdefault("request_timeout", 6 * timeout_seconds)
            storage = {"client_kwargs": {"region_name": settings.s3_region},
                       "config_kwargs": {"connect_timeout": timeout_seconds, "read_timeout": timeout_seconds,
                                         "retries": {"total_max_attempts": 1}}}
            if settings.s3_endpoint_url:
                storage["endpoint_url"] = settings.s3_endpoint_url
            if settings.s3_access_key_id:
                storage["key"] = settings.s3_access_key_id
            if settings.s3_secret_access_key is not None:
                storage["secret"] = settings.s3_secret_access_key.reveal()
        return cls(settings.s3_url, storage, **options)

    # --- BatchWriter ---------------------------------------------------------------------
    def setup(self) -> None:
        import fsspec

        options = dict(self.storage_options)
        if self.root.startswith(("s3://", "s3a://")):
            # A fresh client after every failure (setup runs again), and no stale listings between rewrites.
            options.setdefault("skip_instance_cache", True)
            options.setdefault("use_listings_cache", False)
        self._windows.clear()
        self._kept.clear()
        self._fs, self._base = fsspec.core.url_to_fs(self.root, **options)
        self._base = self._base.rstrip("/")
        if self.client_retries is not None and hasattr(self._fs, "retries"):
            self._fs.retries = self.client_retries  # s3fs has no constructor argument for it
        if self._is_local:
            self._fs.makedirs(f"{self._base}/events", exist_ok=True)

    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        table = self._to_table(rows)
        try:
            for window, group in self._split(table):
                self._write_window(window, group)
        except BaseException:
            self._windows.clear()  # an object may or may not have been written: list the windows again
            self._kept.clear()
            raise

    def retryable(self, exc: BaseException) -> bool:
        # Bad rows (a missing Kafka coordinate, a value of the wrong type) fail the same way every time.
        return not isinstance(exc, (ValueError, TypeError, KeyError, pa.ArrowInvalid, pa.ArrowTypeError))

    def close(self) -> None:
        self._windows.clear()
        self._kept.clear()
        self._fs = None
        self._ready = False

    # --- reading -----------------------------------------------------------------------
    @property
    def filesystem(self) -> Any:
        if self._fs is None:
            self.setup()
        return self._fs

    def dataset(self) -> ds.Dataset:
        """The whole lake as a dataset read with the writer's own filesystem (``event_date`` from the path)."""
        fs = self.filesystem
        return ds.dataset(f"{self._base}/events", filesystem=fs, format="parquet", schema=LAKE_SCHEMA,
                          partitioning=PARTITIONING)

    def read_table(self, columns: list[str] | None = None, attempts: int = 5) -> pa.Table:
        """The lake's rows. Objects are replaced in place while their window fills, so a read that races a
        rewrite can see an object change under it (S3 answers PreconditionFailed): such a read is repeated."""
        for attempt in range(1, attempts + 1):
            try:
                return self.dataset().to_table(columns=columns)
            except FileNotFoundError:
                raise
            except OSError:
                if attempt == attempts:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    # --- internals ---------------------------------------------------------------------
    @property
    def _is_local(self) -> bool:
        protocol = self._fs.protocol
        return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))

    def window_name(self, row: dict[str, Any]) -> str:
        """The name prefix of the window a row belongs to within its date directory (a pure function of the row);
        the row is stored in one segment ``<window name>-<first offset>.parquet`` of it."""
        topic, partition, offset = row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]
        if topic is None or partition is None or offset is None:
            raise ValueError(f"row {row.get('event_id')!r} has no Kafka coordinates; the lake keys files by them")
        received = row.get("received_at")
        micros = (received - _EPOCH) // dt.timedelta(microseconds=1) if received is not None else 0
        return self._name(topic, partition, offset // self.rows_per_file, micros // (self.slice_seconds * 10**6))

    def _name(self, topic: str, partition: int, window: int, slot: int) -> str:
        slice_start = _EPOCH + dt.timedelta(seconds=slot * self.slice_seconds)
        return (f"part-{str(topic).replace('/', '_')}-{int(partition):05d}-{window * self.rows_per_file:020d}-"
                f"{slice_start.strftime('%Y%m%dT%H%M%S')}")

    def _to_table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        """The batch as Arrow, built column by column (one C-level conversion per column, not one per row)."""
        values = column_lists(rows, LAKE_SCHEMA.names)
        try:
            return pa.Table.from_arrays([pa.array(values[f.name], type=f.type) for f in LAKE_SCHEMA],
                                        schema=LAKE_SCHEMA)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            if all(isinstance(v, (str, type(None))) for c in _JSON_COLUMNS for v in values[c]):
                raise
        # Some JSON column arrived as a structure rather than text: encode it, so the file schema stays the same.
        for column in _JSON_COLUMNS:
            values[column] = [_json_text(v) for v in values[column]]
        return pa.Table.from_arrays([pa.array(values[f.name], type=f.type) for f in LAKE_SCHEMA], schema=LAKE_SCHEMA)

    def _split(self, table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        """``(window path prefix, its rows without event_date)`` for each window ``table`` touches; the rows are
        one per ``event_id`` (the last one) and in offset order."""
        for column in ("kafka_topic", "kafka_partition", "kafka_offset"):
            if table.column(column).null_count:
                raise ValueError(f"{table.column(column).null_count} row(s) without {column}; the lake keys files "
                                 f"by the Kafka coordinates")
        if table.column("event_date").null_count:
            raise ValueError("rows without event_date")
        micros = pc.fill_null(table.column("received_at").cast(pa.int64()), 0)
        keys = pa.table({
            "day": table.column("event_date"), "topic": table.column("kafka_topic"),
            "partition": table.column("kafka_partition"),
            "window": pc.divide(table.column("kafka_offset"), self.rows_per_file),
            "slot": pc.divide(micros, self.slice_seconds * 10**6),
            "row": pa.array(range(table.num_rows), type=pa.int64()),
        })
        groups = keys.group_by(["day", "topic", "partition", "window", "slot"], use_threads=False).aggregate(
            [("row", "list")])
        files = table.drop_columns(["event_date"])
        for g in groups.to_pylist():
            prefix = (f"{self._base}/events/event_date={g['day'].isoformat()}/"
                      f"{self._name(g['topic'], g['partition'], g['window'], g['slot'])}")
            group = files if len(g["row_list"]) == files.num_rows else files.take(g["row_list"])
            yield prefix, _in_offset_order(_last_per_event_id(group))

    # --- segments ----------------------------------------------------------------------
    def _segment_path(self, window: str, first: int) -> str:
        return f"{window}-{first:020d}.parquet"

    def _write_window(self, window: str, fresh: pa.Table) -> None:
        offsets = fresh.column("kafka_offset")
        low, high = offsets[0].as_py(), offsets[-1].as_py()
        segments = self._segments(window)
        met = [s for s in segments if s.meets(low, high)]
        if not met:
            tail = segments[-1] if segments else None
            kept = self._kept.get(tail.path) if tail is not None else None
            if tail is not None and kept is not None and kept.num_rows < self.append_below and tail.last < low:
                # A small segment written by this writer, followed by these rows: rewrite it with them appended.
                self._store(window, segments, tail, pa.concat_tables([kept, fresh]), tail.first, high)
                return
            self._store(window, segments, None, fresh, low, high)
            return
        # A replay: merge with every segment whose range meets the rows' range, widened until nothing more meets it
        # (a crash during an earlier merge may have left overlapping segments behind).
        while True:
            low, high = min([low] + [s.first for s in met]), max([high] + [s.last for s in met])
            more = [s for s in segments if s.meets(low, high) and s not in met]
            if not more:
                break
            met += more
        stored = [self._kept[s.path] if s.path in self._kept else self._read_segment(s.path) for s in met]
        old = pa.concat_tables(stored)
        # Rows already stored but absent from this batch stay; a row present in both is replaced by the fresh copy.
        replaced_ids = pc.is_in(old.column("event_id"), value_set=pc.unique(fresh.column("event_id")))
        remaining = old.filter(pc.invert(replaced_ids))
        merged = _in_offset_order(_last_per_event_id(pa.concat_tables([remaining, fresh])))
        target = self._segment_path(window, low)
        replaced = next((s for s in met if s.path == target), None)
        self._store(window, segments, replaced, merged, low, high)
        for s in met:
            if s is not replaced:
                self._delete(s.path)
                self._kept.pop(s.path, None)
                segments.remove(s)

    def _store(self, window: str, segments: list[_Segment], replaced: _Segment | None, table: pa.Table,
               first: int, last: int) -> None:
        """Put ``table`` as the segment starting at ``first`` (in place of ``replaced``, when given) and record it
        among the window's ``segments``."""
        path = replaced.path if replaced is not None else self._segment_path(window, first)
        self._put(path, table)
        if replaced is not None:
            replaced.first, replaced.last = first, last
        else:
            segments.append(_Segment(first, last, path))
            segments.sort(key=lambda s: s.first)
        self._keep(path, table)

    def _segments(self, window: str) -> list[_Segment]:
        """The window's segments, listed (and read, for their offset ranges) the first time this writer meets the
        window; a fresh writer meets the windows it resumes in, where a replay is about to merge into them."""
        known = self._windows.get(window)
        if known is not None:
            self._windows.move_to_end(window)
            return known
        directory, prefix = window.rsplit("/", 1)
        segments = []
        for path in self._list(directory, prefix + "-"):
            first_text = path.rsplit("-", 1)[1].removesuffix(".parquet")
            if first_text.isdigit():
                rows = self._read_segment(path)  # one GET: the merge that usually follows needs the rows anyway
                last = pc.max(rows.column("kafka_offset")).as_py()
                segments.append(_Segment(int(first_text), int(first_text) if last is None else last, path))
                self._keep(path, rows)
        segments.sort(key=lambda s: s.first)
        self._windows[window] = segments
        while len(self._windows) > _KNOWN_WINDOWS:
            self._windows.popitem(last=False)
        return segments

    def _keep(self, path: str, rows: pa.Table) -> None:
        self._kept[path] = rows
        self._kept.move_to_end(path)
        while len(self._kept) > _KEPT_SEGMENTS:
            self._kept.popitem(last=False)

    def _list(self, directory: str, prefix: str) -> list[str]:
        if self._is_local:
            try:
                names = self._fs.ls(directory, detail=False)
            except FileNotFoundError:
                return []
            return [n for n in names if n.rsplit("/", 1)[-1].startswith(prefix) and n.endswith(".parquet")]
        return [n for n in self._fs.find(directory, prefix=prefix) if n.endswith(".parquet")]

    def _read_segment(self, path: str) -> pa.Table:
        if self._is_local:
            with self._fs.open(path, "rb") as fh:
                return pq.read_table(fh, schema=FILE_SCHEMA)
        data = self._fs.cat_file(path, **self._deadline())
        return pq.read_table(pa.BufferReader(data), schema=FILE_SCHEMA)

    def _delete(self, path: str) -> None:
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _deadline(self) -> dict[str, Any]:
        # Socket timeouts do not cover a request body stuck in a full send buffer (a hung endpoint): bound the whole
        # call instead (fsspec cancels the request when it runs out).
        return {"timeout": self.request_timeout} if self.request_timeout else {}

    def _put(self, path: str, table: pa.Table) -> None:
        if not self._is_local:
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer, compression=self.compression)
            # One PUT (a multipart upload only for huge objects, completed at once): the old or the new object.
            self._fs.pipe_file(path, buffer.getvalue().to_pybytes(), **self._deadline())
            return
        directory = path.rsplit("/", 1)[0]
        self._fs.makedirs(directory, exist_ok=True)
        temporary = f"{directory}/.tmp-{uuid.uuid4().hex}"  # readers skip dot files
        with self._fs.open(temporary, "wb") as fh:
            pq.write_table(table, fh, compression=self.compression)
        self._fs.mv(temporary, path)  # a rename: readers see the old or the new file, never half of one


def _last_per_event_id(table: pa.Table) -> pa.Table:
    """One row per ``event_id`` (the last one), for a batch that carries the same event twice."""
    if pc.count_distinct(table.column("event_id")).as_py() == table.num_rows:
        return table
    ids = table.column("event_id").to_pylist()
    last = {event_id: i for i, event_id in enumerate(ids)}
    return table.take(sorted(last.values()))


def _in_offset_order(table: pa.Table) -> pa.Table:
    offsets = table.column("kafka_offset").combine_chunks()
    if table.num_rows < 2 or pc.all(pc.greater_equal(offsets[1:], offsets[:-1])).as_py():
        return table
    return table.sort_by([("kafka_offset", "ascending")])
