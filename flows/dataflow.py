"""The Headwater dataflow: Kafka ``analytics.events.raw`` → enforce schema → PII → geo → plan tier → context → sinks,
with everything that fails on the way branched to ``analytics.events.invalid``.

::

    raw (KafkaSource, partitions = parallelism, offsets in Bytewax recovery)
     └─ admit: decode → validate → clock → PII → geo          (per record; raw IPs never leave this step)
         ├─ dead letters ─────────────────────────────────────► invalid (KafkaSink)
         └─ key by Kafka partition → collect (size/time bounds)
             └─ finish: plan tiers (one query per batch) → user agent → row
                 ├─ rows ──► every sink in ``sinks`` (each gets all rows)
                 └─ dead letters ─► invalid

Keying batches by Kafka partition keeps a partition's events in order and, since the gateway keys records by
user, sends the same users to the same worker, which keeps the plan-tier cache warm.

Delivery is at-least-once: after a restart from recovery the resumed epoch is processed again, so sinks see
some rows twice and must be idempotent on ``event_id`` (they are).
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink
from confluent_kafka import OFFSET_BEGINNING

from enrichers.pii import check_salts_cover
from flows.metrics import STAGES
from flows.outputs import track_lag
from flows.stages import DeadLetter, Stages

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
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


def dead_letter_sink(settings: Any, topic: str | None = None) -> KafkaSink:
    """``analytics.events.invalid`` as a Bytewax sink (workers are the unit of parallelism; at-least-once)."""
    return KafkaSink(settings.kafka_brokers.split(","), topic or settings.kafka_topic_invalid,
                     add_config=settings.kafka_config(**{"acks": "all", "linger.ms": 5}))


def _dead_letter_message(letter: DeadLetter) -> KafkaSinkMessage:
    STAGES.inc("dead_letter", "out")
    headers = [("hw-dead-letter-stage", letter.stage.encode())]
    if letter.event:
        headers.append(("hw-event", letter.event.encode()))
    return KafkaSinkMessage(key=letter.key, value=letter.encode(), headers=headers)


def _consumed(item: Any) -> Any | None:
    """Kafka errors are not events: count and log them, and let librdkafka carry on."""
    if isinstance(item, KafkaError):
        STAGES.inc("source", "kafka_error")
        log.warning("Kafka consumer error: %s", item.err)
        return None
    return item


def build_flow(settings: Any, *, source: Source | None = None, sinks: Mapping[str, Sink] | None = None,
               dead_letters: Sink | None = None, stages: Stages | None = None, registry: Any = None,
               batch_size: int = DEFAULT_BATCH_SIZE, batch_timeout: dt.timedelta = DEFAULT_BATCH_TIMEOUT,
               today: dt.date | None = None, flow_id: str = "headwater") -> Dataflow:
    """Wire the dataflow.

    :param settings: :class:`headwater.settings.Settings`
    :param source: input; default the raw Kafka topic (items are ``KafkaSourceMessage`` or ``KafkaError``)
    :param sinks: name → sink; every sink receives every row. Dynamic sinks are wrapped to report
        ``analytics_pipeline_lag_seconds{sink=name}``. Default: rows printed to stdout
    :param dead_letters: sink for :class:`~flows.stages.DeadLetter` messages; default ``analytics.events.invalid``
    :param stages: the processing steps; default built from ``settings`` and ``registry``
    :param registry: a ``SchemaRegistry``; default the shipped catalogue
    :param batch_size: most events per plan-tier batch
    :param batch_timeout: longest an event waits for its batch to fill
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
    consumed = op.filter_map("consumed", op.input("raw", flow, source or kafka_source(settings)), _consumed)
    admitted = op.map("admit", consumed, stages.admit)
    split = op.branch("admitted_or_dead", admitted, lambda item: not isinstance(item, DeadLetter))

    keyed = op.key_on("by_partition", split.trues, lambda partial: str(partial["kafka_partition"]))
    batches = op.collect("batch", keyed, timeout=batch_timeout, max_size=batch_size)
    finished = op.flat_map("finish", batches, lambda key_batch: stages.finish(key_batch[1]))
    done = op.branch("rows_or_dead", finished, lambda item: not isinstance(item, DeadLetter))

    letters = op.merge("dead_letters", split.falses, done.falses)
    op.output("invalid", op.map("dead_letter_message", letters, _dead_letter_message),
              dead_letters if dead_letters is not None else dead_letter_sink(settings))
    for name, sink in sinks.items():
        op.output(f"sink_{name}", done.trues, track_lag(name, sink))
    return flow
