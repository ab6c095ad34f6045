"""The lake: rows as zstd Parquet under ``{root}/events/event_date=YYYY-MM-DD/`` on any fsspec URL
(``s3://bucket/prefix`` through s3fs, or a local directory for the demo).

Exactly once without a coordinator
----------------------------------
A batch boundary is not stable: after a crash the flow replays from its last committed epoch and its batches may
start and end at other offsets than before. So a file is not named after a batch. Every row belongs to exactly one
**file key**, computed from the row alone::

    (event_date, kafka_topic, kafka_partition, kafka_offset // rows_per_file, received_at // slice_seconds)

and is stored in the object named after that key. Writing a batch means, for each key the batch touches: read the
object (if any), merge the batch's rows into it (one row per ``event_id``, the newest copy wins), and put the whole
object again. A replayed row therefore lands in the object that already holds it and replaces itself, whatever
the batch it came with; one PUT per object keeps each object consistent (locally: a temporary file and a rename).

The key also bounds each file: at most ``rows_per_file`` Kafka offsets (size) and ``slice_seconds`` of gateway
receive time (time), so a quiet partition starts a new file every slice instead of rewriting one forever. The cost
is write amplification while a window fills (a window is rewritten once per batch that touches it): choose
``rows_per_file`` a few times the flow's batch size.

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
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sinks.base import BatchWriter, RetryPolicy

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


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


class ParquetLakeWriter(BatchWriter):
    """Rows to Parquet files keyed by Kafka offset window (see the module docstring for the naming).

    Unit of parallelism: one writer per sink partition; two writers may run at once as long as no Kafka partition
    is written by both at the same time (the flow routes each Kafka partition to one sink partition). Delivery:
    idempotent, so at-least-once input gives exactly-once files.

    :param root: lake root, ``s3://bucket/prefix`` or a local directory
    :param storage_options: fsspec options (s3fs: ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``)
    :param rows_per_file: Kafka offsets per file window (the size bound)
    :param slice_seconds: gateway-receive-time span per file (the time bound)
    :param compression: Parquet codec
    :param client_retries: attempts s3fs makes per request on timeouts (``None``: its default, 5)
    :param request_timeout: longest one object read or write may take on a remote filesystem, in seconds
    :param retry: retry policy of :meth:`write`
    """

    name = "lake"

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None,
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE, slice_seconds: int = DEFAULT_SLICE_SECONDS,
                 compression: str = "zstd", client_retries: int | None = None, request_timeout: float | None = None,
                 retry: RetryPolicy | None = None):
        super().__init__(retry)
        if rows_per_file < 1 or slice_seconds < 1:
            raise ValueError("rows_per_file and slice_seconds must be positive")
        self.root = str(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.rows_per_file = rows_per_file
        self.slice_seconds = slice_seconds
        self.compression = compression
        self.client_retries = client_retries
        self.request_timeout = request_timeout
        self._fs: Any = None
        self._base = ""
        # The last object written per (topic, partition), as written: the next batch of that partition almost always
        # lands in it, and a Kafka partition is written by one writer at a time, so it need not be read back.
        self._open_files: dict[tuple[str, int], tuple[str, pa.Table]] = {}

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
        self._open_files.clear()
        self._fs, self._base = fsspec.core.url_to_fs(self.root, **options)
        self._base = self._base.rstrip("/")
        if self.client_retries is not None and hasattr(self._fs, "retries"):
            self._fs.retries = self.client_retries  # s3fs has no constructor argument for it
        if self._is_local:
            self._fs.makedirs(f"{self._base}/events", exist_ok=True)

    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        table = self._to_table(rows)
        try:
            for path, owner, group in self._split(table):
                self._merge_into(path, owner, group)
        except BaseException:
            self._open_files.clear()  # an object may or may not have been replaced: read it again next time
            raise

    def retryable(self, exc: BaseException) -> bool:
        # Bad rows (a missing Kafka coordinate, a value of the wrong type) fail the same way every time.
        return not isinstance(exc, (ValueError, TypeError, KeyError, pa.ArrowInvalid, pa.ArrowTypeError))

    def close(self) -> None:
        self._open_files.clear()
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

    def file_name(self, row: dict[str, Any]) -> str:
        """The object name a row belongs to within its date directory (a pure function of the row)."""
        topic, partition, offset = row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]
        if topic is None or partition is None or offset is None:
            raise ValueError(f"row {row.get('event_id')!r} has no Kafka coordinates; the lake keys files by them")
        received = row.get("received_at")
        micros = (received - _EPOCH) // dt.timedelta(microseconds=1) if received is not None else 0
        return self._name(topic, partition, offset // self.rows_per_file, micros // (self.slice_seconds * 10**6))

    def _name(self, topic: str, partition: int, window: int, slot: int) -> str:
        slice_start = _EPOCH + dt.timedelta(seconds=slot * self.slice_seconds)
        return (f"part-{str(topic).replace('/', '_')}-{int(partition):05d}-{window * self.rows_per_file:020d}-"
                f"{slice_start.strftime('%Y%m%dT%H%M%S')}.parquet")

    def _to_table(self, rows: Sequence[dict[str, Any]]) -> pa.Table:
        try:
            return pa.Table.from_pylist(rows, schema=LAKE_SCHEMA)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            if not any(not isinstance(r.get(c), (str, type(None))) for r in rows for c in _JSON_COLUMNS):
                raise
        # Some JSON column arrived as a structure rather than text: encode it, so the file schema stays the same.
        encoded = [{**r, **{c: _json_text(r.get(c)) for c in _JSON_COLUMNS}} for r in rows]
        return pa.Table.from_pylist(encoded, schema=LAKE_SCHEMA)

    def _split(self, table: pa.Table) -> Iterator[tuple[str, tuple[str, int], pa.Table]]:
        """``(object path, (topic, partition), rows without event_date)`` for each object ``table`` touches."""
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
            path = (f"{self._base}/events/event_date={g['day'].isoformat()}/"
                    f"{self._name(g['topic'], g['partition'], g['window'], g['slot'])}")
            yield path, (g["topic"], g["partition"]), files.take(g["row_list"])

    def _read_existing(self, path: str) -> pa.Table | None:
        try:
            if self._is_local:
                with self._fs.open(path, "rb") as fh:
                    return pq.read_table(fh, schema=FILE_SCHEMA)
            data = self._fs.cat_file(path, **self._deadline())
        except FileNotFoundError:
            return None
        return pq.read_table(pa.BufferReader(data), schema=FILE_SCHEMA)

    def _deadline(self) -> dict[str, Any]:
        # Socket timeouts do not cover a request body stuck in a full send buffer (a hung endpoint): bound the whole
        # call instead (fsspec cancels the request when it runs out).
        return {"timeout": self.request_timeout} if self.request_timeout else {}

    def _merge_into(self, path: str, owner: tuple[str, int], fresh: pa.Table) -> None:
        cached = self._open_files.get(owner)
        existing = cached[1] if cached is not None and cached[0] == path else self._read_existing(path)
        if existing is not None and existing.num_rows:
            # Rows already in the object but absent from this batch stay; a row present in both is replaced.
            replaced = pc.is_in(existing.column("event_id"), value_set=pc.unique(fresh.column("event_id")))
            merged = pa.concat_tables([existing.filter(pc.invert(replaced)), fresh])
        else:
            merged = fresh
        merged = _last_per_event_id(merged).sort_by([("kafka_offset", "ascending")])
        self._put(path, merged)
        self._open_files[owner] = (path, merged)

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
