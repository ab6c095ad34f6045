"""The Headwater dataflow: Kafka ``analytics.events.raw`` → enforce schema → PII → geo → plan tier → context → sinks,
with everything that fails on the way branched to ``analytics.events.invalid``.

::

    raw (KafkaSource, partitions = parallelism, offsets in Bytewax recovery)
     └─ process, once per batch the source hands over:
        decode → validate → clock → PII → geo (per record; raw IPs never leave this step)
        → user agent → row; plan tiers (one query per batch)
        → one SourceBatch per source partition: its rows and its dead letters
         ├─ rows ──► every sink in ``sinks`` (each gets all rows)
         └─ dead letters ─► invalid

Everything per event happens in one Python call per source batch: each Bytewax operator an event passes costs a
round trip between Rust and Python, which at tens of thousands of events a second is a large share of the work.
For the same reason the processing step hands on whole batches, not events: splitting them into rows and dead
letters, and keying rows by source partition for the partitioned sinks, is one Python call per batch instead of
two per event. The source's batches (a Kafka partition's records, up to the source's batch size) are also the
plan-tier batches, so nothing waits for a batch to fill and no partial row is ever held in Bytewax state (or
snapshotted).

Delivery is at-least-once: after a restart from recovery the resumed epoch is processed again, so sinks see
some rows twice and must be idempotent on ``event_id`` (they are). Sinks that buffer (``KafkaRowSink``) wait for
their writes at each epoch's snapshot, before the epoch is committed.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Callable, Iterable, Mapping

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSource
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import FixedPartitionedSink, Sink
from confluent_kafka import OFFSET_BEGINNING

from enrichers.pii import check_salts_cover
from flows.metrics import STAGES
from flows.outputs import KafkaRowSink, track_lag
from flows.stages import DeadLetter, Stages

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT = dt.timedelta(milliseconds=500)

#: librdkafka settings every consumer needs on the devstack's Tansu broker and that are harmless on Kafka.
#: (The source assigns partitions itself, so the group settings Tansu needs do not apply here.)
CONSUMER_DEFAULTS = {"fetch.wait.max.ms": "10"}


def kafka_source(settings: Any, topic: str | None = None) -> KafkaSource:
    """The raw topic as a Bytewax source: one input partition per Kafka partition, starting at the beginning
    (the devstack broker cannot answer "latest" correctly); resume offsets come from Bytewax recovery."""
    return KafkaSource(
        settings.kafka_brokers.split(","), [topic or settings.kafka_topic_raw],
        tail=True, starting_offset=OFFSET_BEGINNING,
        add_config={**CONSUMER_DEFAULTS, **settings.kafka_config()},
        raise_on_errors=False,
    )


def dead_letter_sink(settings: Any, topic: str | None = None) -> KafkaRowSink:
    """``analytics.events.invalid`` as a Bytewax sink (output partitions are the unit of parallelism;
    at-least-once, acknowledgements awaited per epoch)."""
    return KafkaRowSink(settings.kafka_config(**{"acks": "all", "linger.ms": 5}),
                        topic or settings.kafka_topic_invalid, _dead_letter_record)


def _dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers = [("hw-dead-letter-stage", letter.stage.encode())]
    if letter.event:
        headers.append(("hw-event", letter.event.encode()))
    return headers


def _dead_letter_record(letter: DeadLetter) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    STAGES.inc("dead_letter", "out")
    return letter.key, letter.encode(), _dead_letter_headers(letter)


def _dead_letter_message(letter: DeadLetter) -> KafkaSinkMessage:
    STAGES.inc("dead_letter", "out")
    return KafkaSinkMessage(key=letter.key, value=letter.encode(), headers=_dead_letter_headers(letter))


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """What one source batch became, for one source partition: rows and dead letters, in source order.

    :param key: the source partition as text; partitioned sinks are keyed on it, so that one source partition's
        output always goes to the same output partition, in order
    """

    key: str
    rows: list[dict[str, Any]]
    letters: list[DeadLetter]

    def keyed_rows(self) -> Iterable[tuple[str, dict[str, Any]]]:
        return zip(repeat(self.key, len(self.rows)), self.rows)

    def keyed_row_list(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return [(self.key, self.rows)] if self.rows else []

    def keyed_letters(self) -> Iterable[tuple[str, DeadLetter]]:
        return zip(repeat(self.key, len(self.letters)), self.letters)

    def letter_messages(self) -> list[KafkaSinkMessage]:
        return [_dead_letter_message(letter) for letter in self.letters]


def _rows(batch: SourceBatch) -> list[dict[str, Any]]:
    return batch.rows


def make_processor(stages: Stages, batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[[list[Any]], list[SourceBatch]]:
    """The flow's processing step: the items of one source batch → one :class:`SourceBatch` per source partition
    among them (normally one). Kafka errors are counted and logged, not passed on.

    :param stages: the processing steps
    :param batch_size: most rows per plan-tier look-up (a larger source batch is split)
    """
    admit, finish = stages.admit, stages.finish

    def process(items: list[Any]) -> list[SourceBatch]:
        STAGES.inc("source", "in", len(items))  # per batch: a labelled counter costs microseconds
        partials: list[dict[str, Any]] = []
        letters: list[DeadLetter] = []
        for item in items:
            if isinstance(item, KafkaError):
                STAGES.inc("source", "kafka_error")
                log.warning("Kafka consumer error: %s", item.err)
                continue
            admitted = admit(item)
            if type(admitted) is dict:
                partials.append(admitted)
            else:
                letters.append(admitted)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(partials), batch_size):
            rows.extend(finish(partials[start:start + batch_size]))
        return _by_partition(rows, letters)

    return process


def _by_partition(rows: list[Any], letters: list[DeadLetter]) -> list[SourceBatch]:
    """Rows and letters grouped by source partition, each group in source order."""
    parts: dict[Any, tuple[list, list]] = {}
    for row in rows:
        if type(row) is dict:
            part = row["kafka_partition"]
        else:  # a dead letter from finish()
            part = row.partition
        group = parts.get(part)
        if group is None:
            group = parts[part] = ([], [])
        group[type(row) is not dict].append(row)
    for letter in letters:
        group = parts.get(letter.partition)
        if group is None:
            group = parts[letter.partition] = ([], [])
        group[1].append(letter)
    return [SourceBatch(str(part), part_rows, part_letters) for part, (part_rows, part_letters) in parts.items()]


def build_flow(settings: Any, *, source: Source | None = None, sinks: Mapping[str, Sink] | None = None,
               dead_letters: Sink | None = None, stages: Stages | None = None, registry: Any = None,
               batch_size: int = DEFAULT_BATCH_SIZE, batch_timeout: dt.timedelta = DEFAULT_BATCH_TIMEOUT,
               today: dt.date | None = None, flow_id: str = "headwater") -> Dataflow:
    """Wire the dataflow.

    :param settings: :class:`headwater.settings.Settings`
    :param source: input; default the raw Kafka topic (items are ``KafkaSourceMessage`` or ``KafkaError``)
    :param sinks: name → sink; every sink receives every row. Dynamic sinks are wrapped to report
        ``analytics_pipeline_lag_seconds{sink=name}``; a partitioned sink with a true ``item_batches`` attribute
        receives one list of rows per source batch and partition instead of single rows. Default: rows printed to
        stdout
    :param dead_letters: sink for :class:`~flows.stages.DeadLetter` messages; default ``analytics.events.invalid``
    :param stages: the processing steps; default built from ``settings`` and ``registry``
    :param registry: a ``SchemaRegistry``; default the shipped catalogue
    :param batch_size: most events per plan-tier look-up (a source batch larger than this is split)
    :param batch_timeout: kept for callers of the earlier, collecting flow; nothing waits for a batch any more
        (a batch is what the source hands over at once), so it has no effect
    :param today: for the salt start-up check (default: today, UTC)
    :raises MissingSaltError: when no PII salt covers today's quarter
    """
    for warning in check_salts_cover(settings, today or dt.datetime.now(dt.timezone.utc).date()):
        log.warning("%s", warning)
    if stages is None:
        if registry is None:
            from schemas.registry import SchemaRegistry

            registry = SchemaRegistry.load()
        stages = Stages.from_settings(settings, registry)
    sinks = dict(sinks) if sinks is not None else {"stdout": StdOutSink()}

    flow = Dataflow(flow_id)
    batches = op.flat_map_batch("process", op.input("raw", flow, source or kafka_source(settings)),
                                make_processor(stages, batch_size))

    letters_sink = dead_letters if dead_letters is not None else dead_letter_sink(settings)
    if isinstance(letters_sink, FixedPartitionedSink):
        op.output("invalid", op.flat_map("letters_by_partition", batches, SourceBatch.keyed_letters), letters_sink)
    else:
        op.output("invalid", op.flat_map("dead_letter_messages", batches, SourceBatch.letter_messages), letters_sink)
    keyed_rows = keyed_row_lists = plain_rows = None
    for name, sink in sinks.items():
        if isinstance(sink, FixedPartitionedSink) and getattr(sink, "item_batches", False):
            # a sink that takes a list of rows per item (KafkaRowSink(item_batches=True)): one item per batch
            if keyed_row_lists is None:
                keyed_row_lists = op.flat_map("row_lists_by_partition", batches, SourceBatch.keyed_row_list)
            op.output(f"sink_{name}", keyed_row_lists, sink)
        elif isinstance(sink, FixedPartitionedSink):
            if keyed_rows is None:
                keyed_rows = op.flat_map("rows_by_partition", batches, SourceBatch.keyed_rows)
            op.output(f"sink_{name}", keyed_rows, sink)
        else:
            if plain_rows is None:
                plain_rows = op.flat_map("rows", batches, _rows)
            op.output(f"sink_{name}", plain_rows, track_lag(name, sink))
    return flow
