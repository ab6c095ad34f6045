"""Re-drive dead letters from ``analytics.events.invalid`` back to ``analytics.events.raw``, e.g. once a schema
that rejected them has been fixed and deployed.

The original record bytes and key are produced again unchanged (the gateway's ``received_at`` stays, so the
pipeline lag of a replayed event shows its real age). By default only letters whose original now decodes and
validates are re-driven; the rest are counted and left where they are. Replaying twice produces twice: sinks
dedupe on ``event_id``. Dead letters without an original (failures after PII was applied) cannot be replayed
from here; their source coordinates point at the raw record.

Originals are sealed (:mod:`flows.sealing`) under keys derived from the PII salts, so replay needs the same salts
as the flow; a letter whose salt has since been removed from the configuration is counted as unreadable and left.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING

from flows.sealing import LetterSeal, SealError
from flows.stages import decode_dead_letter
from schemas.wire import WireError, decode_raw


@dataclass
class ReplayReport:
    read: int = 0
    replayed: int = 0
    still_invalid: int = 0
    skipped: int = 0
    no_original: int = 0
    unreadable: int = 0
    by_stage: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"read {self.read} dead letter(s): replayed {self.replayed}, still invalid {self.still_invalid}, "
                f"filtered out {self.skipped}, without original {self.no_original}, "
                f"sealed under a salt no longer configured {self.unreadable}")


def replay_dead_letters(settings: Any, registry: Any, *, from_topic: str | None = None,
                        to_topic: str | None = None, stage: str | None = None, event: str | None = None,
                        include_invalid: bool = False, dry_run: bool = False, limit: int | None = None,
                        idle_seconds: float = 3.0) -> ReplayReport:
    """Read the whole dead-letter topic (until ``idle_seconds`` pass without a message) and re-drive.

    :param settings: :class:`headwater.settings.Settings`
    :param registry: a ``SchemaRegistry`` (the current schemas)
    :param stage: only letters of this stage (decode, validate, time, pii)
    :param event: only letters of this event name
    :param include_invalid: re-drive even letters that would still fail validation
    :param dry_run: count, produce nothing
    :param limit: stop after this many re-driven
    """
    from_topic = from_topic or settings.kafka_topic_invalid
    to_topic = to_topic or settings.kafka_topic_raw
    report = ReplayReport()
    seal = LetterSeal.from_settings(settings)
    consumer = Consumer(settings.kafka_config(**{
        "group.id": f"headwater-replay-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "fetch.wait.max.ms": 10, "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}))
    producer = None if dry_run else Producer(settings.kafka_config(acks="all", **{"linger.ms": 5}))
    try:
        meta = consumer.list_topics(from_topic, timeout=10)
        if from_topic not in meta.topics or meta.topics[from_topic].error is not None:
            raise KafkaException(f"topic {from_topic!r} is not available")
        # The devstack broker cannot answer "latest" reliably: read from the beginning until idle.
        consumer.assign([TopicPartition(from_topic, p, OFFSET_BEGINNING) for p in meta.topics[from_topic].partitions])
        last = time.monotonic()
        while time.monotonic() - last < idle_seconds and (limit is None or report.replayed < limit):
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            last = time.monotonic()
            report.read += 1
            _consider(msg.value(), seal, registry, stage, event, include_invalid, report, producer, to_topic)
        if producer is not None and producer.flush(30) != 0:
            raise KafkaException("not every replayed record was acknowledged")
    finally:
        consumer.close()
    return report


def _consider(value: bytes, seal: LetterSeal, registry: Any, stage: str | None, event: str | None,
              include_invalid: bool, report: ReplayReport, producer: Producer | None, to_topic: str) -> None:
    try:
        letter = decode_dead_letter(value, seal)
    except SealError:
        report.unreadable += 1
        return
    except Exception:
        report.skipped += 1
        return
    report.by_stage[letter.get("stage", "?")] = report.by_stage.get(letter.get("stage", "?"), 0) + 1
    if (stage and letter.get("stage") != stage) or (event and letter.get("event") != event):
        report.skipped += 1
        return
    original = letter["original"]
    if original is None:
        report.no_original += 1
        return
    if not include_invalid:
        try:
            valid = not registry.validate(decode_raw(original).event)
        except WireError:
            valid = False
        if not valid:
            report.still_invalid += 1
            return
    report.replayed += 1
    if producer is not None:
        producer.produce(to_topic, original, key=letter["original_key"])
        producer.poll(0)
