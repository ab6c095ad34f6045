"""Bytewax outputs of the flow until the real sinks land: a JSON-lines file sink and a Kafka row sink, plus the
wrapper that sets ``analytics_pipeline_lag_seconds`` after each batch a sink commits.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable

import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

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


def kafka_row_sink(settings: Any, topic: str) -> KafkaSink:
    """Rows to a Kafka topic, keyed by ``event_id`` (used with :class:`RowSink` and ``encode=to_kafka``)."""
    brokers = settings.kafka_brokers.split(",")
    return KafkaSink(brokers, topic, add_config=settings.kafka_config(**{"linger.ms": 5, "acks": "all"}))


def to_kafka(row: dict[str, Any]) -> KafkaSinkMessage:
    return KafkaSinkMessage(key=str(row["event_id"]).encode(), value=encode_row(row))


class _RowSinkPartition(StatelessSinkPartition[dict]):
    def __init__(self, inner: Any, name: str, encode: Callable[[dict], Any] | None):
        self._inner = inner
        self._encode = encode
        self._lag = PIPELINE_LAG.labels(sink=name)

    def write_batch(self, items: list[dict]) -> None:
        self._inner.write_batch([self._encode(r) for r in items] if self._encode else items)
        STAGES.inc("sink", "written", len(items))
        newest = max((r["received_at"] for r in items if isinstance(r.get("received_at"), dt.datetime)),
                     default=None)
        if newest is not None:
            self._lag.set((dt.datetime.now(dt.timezone.utc) - newest).total_seconds())

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
