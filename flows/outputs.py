"""Bytewax outputs of the flow until the real sinks land: a JSON-lines file sink and a Kafka sink that waits for
acknowledgements once per epoch rather than per batch, plus the wrapper that sets ``analytics_pipeline_lag_seconds``
after each batch a sink commits.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from bytewax.outputs import (DynamicSink, FixedPartitionedSink, Sink, StatefulSinkPartition,
                             StatelessSinkPartition)

from flows.metrics import PIPELINE_LAG, STAGES


def encode_row(row: dict[str, Any]) -> bytes:
    """A row as one JSON document (datetimes as RFC 3339, dates as ``YYYY-MM-DD``)."""
    return orjson.dumps(row, option=orjson.OPT_UTC_Z)


class _JsonLinesPartition(StatelessSinkPartition[dict]):
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def write_batch(self, items: list[dict]) -> None:
        data = b"".join(encode_row(row) + b"\n" for row in items)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        os.close(self._fd)


class JsonLinesSink(DynamicSink[dict]):
    """Appends rows as JSON lines to ``{directory}/rows-{worker}.jsonl``; one file per worker.

    Workers are the unit of parallelism. At-least-once: after a restart from recovery, the rows of the
    resumed epoch are written again (readers dedupe on ``event_id``). A crash can leave a torn last line,
    which readers skip: its rows are written again after the restart.

    :param directory: where the files go
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonLinesPartition:
        return _JsonLinesPartition(self.directory / f"rows-{worker_index}.jsonl")


def read_json_lines(directory: str | Path) -> list[dict]:
    """Every complete row written by :class:`JsonLinesSink` under ``directory`` (torn lines skipped)."""
    rows = []
    for path in sorted(Path(directory).glob("rows-*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return rows


_RECEIVED_AT = itemgetter("received_at")


def report_written(lag: Any, rows: list[dict]) -> None:
    """After a sink has committed ``rows``: count them and set its lag gauge child ``lag`` (now minus the newest
    gateway receive time among them)."""
    STAGES.inc("sink", "written", len(rows))
    try:  # the flow's rows all carry an aware datetime: one C-level pass
        newest = max(map(_RECEIVED_AT, rows), default=None)
    except (KeyError, TypeError):  # rows from elsewhere, with gaps or other types: only the datetimes count
        newest = max((r["received_at"] for r in rows if isinstance(r.get("received_at"), dt.datetime)), default=None)
    if not isinstance(newest, dt.datetime):
        newest = None
    if newest is not None:
        lag.set((dt.datetime.now(dt.timezone.utc) - newest).total_seconds())


class _RowSinkPartition(StatelessSinkPartition[dict]):
    def __init__(self, inner: Any, name: str, encode: Callable[[dict], Any] | None):
        self._inner = inner
        self._encode = encode
        self._lag = PIPELINE_LAG.labels(sink=name)

    def write_batch(self, items: list[dict]) -> None:
        self._inner.write_batch([self._encode(r) for r in items] if self._encode else items)
        report_written(self._lag, items)

    def close(self) -> None:
        self._inner.close()


class RowSink(DynamicSink[dict]):
    """Wraps a dynamic sink: encodes rows for it if asked, and sets ``analytics_pipeline_lag_seconds{sink=name}``
    once each batch is written. Parallelism and delivery guarantee are those of the wrapped sink.

    :param inner: a Bytewax ``DynamicSink``
    :param name: the ``sink`` label
    :param encode: row → the item type ``inner`` takes (``None``: rows as they are)
    """

    def __init__(self, inner: DynamicSink, name: str, encode: Callable[[dict], Any] | None = None):
        self.inner = inner
        self.name = name
        self.encode = encode

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RowSinkPartition:
        return _RowSinkPartition(self.inner.build(step_id, worker_index, worker_count), self.name, self.encode)


def track_lag(name: str, sink: Sink) -> Sink:
    """``sink`` wrapped in :class:`RowSink` when it is dynamic; other sinks are used as they are."""
    if isinstance(sink, RowSink) or not isinstance(sink, DynamicSink):
        return sink
    return RowSink(sink, name)


#: Output partitions of :class:`KafkaRowSink`: rows are spread over them by key, and each is owned by one worker.
DEFAULT_SINK_PARTS = 8


class SinkDeliveryError(RuntimeError):
    """Kafka did not take some records; raised at the epoch boundary so the epoch is never committed."""


class _SharedProducer:
    """One librdkafka producer for all partitions of a sink in this process (it is thread-safe, and one producer
    batches better than several); delivery failures are collected until a flush looks at them."""

    def __init__(self, config: dict[str, Any]):
        from confluent_kafka import Producer

        self._failed: list[str] = []
        self._lock = threading.Lock()
        self.producer = Producer({**config, "delivery.report.only.error": True, "on_delivery": self._delivered})

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failed.append(str(err))

    def take_failures(self) -> list[str]:
        with self._lock:
            failed, self._failed = self._failed, []
        return failed


class _BufferedKafkaPartition(StatefulSinkPartition[Any, None]):
    def __init__(self, producer: _SharedProducer, topic: str, encode: Callable[[Any], tuple],
                 lag_name: str | None, item_batches: bool = False,
                 encode_batch: Callable[[list], Iterable[tuple]] | None = None):
        self._shared = producer
        self._producer = producer.producer
        self._topic = topic
        self._encode = encode
        self._encode_batch = encode_batch
        self._lag = PIPELINE_LAG.labels(sink=lag_name) if lag_name else None
        self._item_batches = item_batches

    def write_batch(self, values: list[Any]) -> None:
        if self._item_batches:
            values = [value for batch in values for value in batch]
        produce, topic = self._producer.produce, self._topic
        records = self._encode_batch(values) if self._encode_batch is not None else map(self._encode, values)
        for key, payload, headers in records:
            try:
                if headers:
                    produce(topic, payload, key, headers=headers)
                else:  # an empty headers list still costs librdkafka a conversion, about a third of the call
                    produce(topic, payload, key)
            except BufferError:  # the local queue is full: let librdkafka drain it, then retry once
                self._producer.flush(30)
                produce(topic, payload, key, headers=headers)
        self._producer.poll(0)
        if self._lag is not None:
            report_written(self._lag, values)

    def snapshot(self) -> None:
        # Bytewax snapshots every stateful step at the end of an epoch and commits the epoch (and with it the
        # source offsets) only once every snapshot is stored. Waiting here for every record of the epoch to be
        # acknowledged therefore keeps at-least-once: a crash before this returns replays the whole epoch.
        self._flush()

    def _flush(self) -> None:
        remaining = self._producer.flush(60)
        if remaining:
            raise SinkDeliveryError(f"{remaining} record(s) to {self._topic} still unacknowledged after 60 s")
        failed = self._shared.take_failures()
        if failed:
            raise SinkDeliveryError(f"{len(failed)} record(s) to {self._topic} were refused, e.g. {failed[0]}")

    def close(self) -> None:
        self._flush()


class KafkaRowSink(FixedPartitionedSink[Any, None]):
    """Items of a keyed stream ``(key, item)`` to one Kafka topic, without waiting for acknowledgements per batch.

    Bytewax's own ``KafkaSink`` flushes the producer after every batch, which at a few hundred events per batch
    costs more than the rest of the flow. This sink only waits at the end of each epoch (in ``snapshot``), which
    is where the guarantee is decided, so delivery stays at-least-once: records of the resumed epoch are written
    again after a restart. The output partitions (``parts``) are the unit of parallelism; the stream's key picks
    the partition, so keying by the source partition keeps the source's order.

    :param config: librdkafka producer configuration (brokers, security)
    :param topic: where the records go
    :param encode: item → ``(key bytes, value bytes, headers)``
    :param lag_name: when set, items are output rows and ``analytics_pipeline_lag_seconds{sink=lag_name}`` and
        the written-rows counter follow them
    :param parts: number of output partitions
    :param item_batches: each item of the stream is a list of items (the flow then hands over one list per source
        batch instead of one item per row: Bytewax routes each stream item through Python, about a microsecond)
    :param encode_batch: items → their ``encode`` results, the same as mapping ``encode`` but for a whole batch at
        once (it saves a Python call or two per item)
    """

    def __init__(self, config: dict[str, Any], topic: str, encode: Callable[[Any], tuple],
                 lag_name: str | None = None, parts: int = DEFAULT_SINK_PARTS, item_batches: bool = False,
                 encode_batch: Callable[[list], Iterable[tuple]] | None = None):
        self.config = dict(config)
        self.topic = topic
        self.encode = encode
        self.encode_batch = encode_batch
        self.lag_name = lag_name
        self.parts = parts
        self.item_batches = item_batches
        self._producer: _SharedProducer | None = None
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _BufferedKafkaPartition:
        with self._lock:  # partitions are built on worker threads; they share the process's producer
            if self._producer is None:
                self._producer = _SharedProducer(self.config)
        return _BufferedKafkaPartition(self._producer, self.topic, self.encode, self.lag_name, self.item_batches,
                                       self.encode_batch)


def row_records(rows: list[dict[str, Any]]) -> list[tuple[bytes, bytes, list]]:
    """Output rows as Kafka records: keyed by ``event_id``, each row as :func:`encode_row` writes it (spelled out
    in one comprehension: no Python call per row)."""
    dumps, option, no_headers = orjson.dumps, orjson.OPT_UTC_Z, []
    return [(str(row["event_id"]).encode(), dumps(row, option=option), no_headers) for row in rows]


def row_record(row: dict[str, Any]) -> tuple[bytes, bytes, list]:
    """One output row as a Kafka record (see :func:`row_records`)."""
    return row_records([row])[0]


def kafka_rows(settings: Any, topic: str, name: str | None = None) -> KafkaRowSink:
    """Rows to a Kafka topic through :class:`KafkaRowSink`, reporting pipeline lag as ``name``."""
    return KafkaRowSink(settings.kafka_config(**{"linger.ms": 5, "acks": "all"}), topic, row_record,
                        lag_name=name or f"kafka_{topic}", item_batches=True, encode_batch=row_records)
