"""The raw topic as the source of truth: which valid events the gateway accepted, by gateway receive date.

Valid = on ``analytics.events.raw`` and not dead-lettered. Dead letters are matched by their source coordinates
``(topic, partition, offset)``, not by event_id: a letter that was later replayed (``headwater replay``) produces a
new raw record with the same event_id, which is valid, and must count.

Both topics are read from ``OFFSET_BEGINNING`` to the end of every partition, ending on librdkafka's partition-EOF
event, because the broker used in development (Tansu) answers ``ListOffsets LATEST`` wrongly after multi-record
batches (DESIGN.md §5). Reading the whole retention window is acceptable for a nightly check; memory grows with the
number of event_ids received in the window asked for (about 100 bytes each).
"""
from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson


class KafkaReadError(RuntimeError):
    """A topic cannot be read to its end (absent, unreachable, or too slow)."""


@dataclass
class RawTopicView:
    """Valid event_ids of the raw topic per receive date, plus what was skipped and why.

    :param by_date: receive date → event_ids (distinct)
    :param records: raw records read (every date)
    :param dead_lettered: raw records skipped because a dead letter names their coordinates
    :param undecodable: raw records that are not a wire record (they are dead letters too, normally)
    :param repeated: valid records whose event_id was already seen (at-least-once delivery)
    :param covered_from: first receive date the topic holds completely (``None``: every date; partitions start at 0)
    """

    by_date: dict[dt.date, set[str]] = field(default_factory=dict)
    records: int = 0
    dead_lettered: int = 0
    undecodable: int = 0
    repeated: int = 0
    covered_from: dt.date | None = None


def _read_to_end(settings: Any, topic: str, timeout_s: float) -> Iterator[tuple[int, int, bytes | None]]:
    """``(partition, offset, value)`` of every record of ``topic``, from the beginning to the end of each partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer(settings.kafka_config(**{
        "group.id": f"headwater-quality-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
        "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}))
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=min(timeout_s, 15.0))
        except KafkaException as exc:
            raise KafkaReadError(f"cannot reach the brokers ({settings.kafka_brokers}): {exc}") from None
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            reason = described.error.str() if described is not None and described.error else "no partitions"
            raise KafkaReadError(f"topic {topic!r} cannot be read: {reason}")
        partitions = sorted(described.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise KafkaReadError(f"topic {topic!r}: partitions {sorted(pending)} not read to their end within "
                                     f"{timeout_s:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                if error.fatal() or not error.retriable():
                    raise KafkaReadError(f"topic {topic!r}: {error.str()}")
                continue
            yield msg.partition(), msg.offset(), msg.value()
    finally:
        consumer.close()


def dead_letter_coordinates(settings: Any, raw_topic: str, invalid_topic: str,
                            timeout_s: float) -> set[tuple[int, int]]:
    """``(partition, offset)`` on ``raw_topic`` of every dead letter on ``invalid_topic``."""
    found: set[tuple[int, int]] = set()
    for _, _, value in _read_to_end(settings, invalid_topic, timeout_s):
        try:
            letter = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            continue  # not a dead letter of this flow
        if isinstance(letter, dict) and letter.get("source_topic") == raw_topic \
                and isinstance(letter.get("source_partition"), int) and isinstance(letter.get("source_offset"), int):
            found.add((letter["source_partition"], letter["source_offset"]))
    return found


def _receive_date(record: dict[str, Any]) -> dt.date | None:
    text = record.get("received_at")
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.date()


def read_raw_topic(settings: Any, start: dt.date, end: dt.date, timeout_s: float = 600.0,
                   raw_topic: str | None = None, invalid_topic: str | None = None,
                   progress: Callable[[str], None] | None = None) -> RawTopicView:
    """Valid events received between ``start`` and ``end`` (inclusive, UTC dates) by event_id.

    :param timeout_s: longest time for reading each topic to its end
    :raises KafkaReadError: when a topic cannot be read to its end
    """
    from schemas.wire import WireError, decode_raw

    raw_topic = raw_topic or settings.kafka_topic_raw
    invalid_topic = invalid_topic or settings.kafka_topic_invalid
    dead = dead_letter_coordinates(settings, raw_topic, invalid_topic, timeout_s)
    if progress:
        progress(f"{invalid_topic}: {len(dead)} dead letter(s) of {raw_topic}")
    view = RawTopicView()
    seen: set[str] = set()
    first_offsets: dict[int, tuple[int, dt.date | None]] = {}
    for partition, offset, value in _read_to_end(settings, raw_topic, timeout_s):
        view.records += 1
        if (partition, offset) in dead:
            view.dead_lettered += 1
            continue
        try:
            record = decode_raw(value)
        except WireError:
            view.undecodable += 1
            continue
        received = _receive_date({"received_at": record.received_at})
        if partition not in first_offsets:
            first_offsets[partition] = (offset, received)
        event_id = record.event_id
        if received is None or not isinstance(event_id, str):
            view.undecodable += 1
            continue
        if event_id in seen:
            view.repeated += 1
            continue
        seen.add(event_id)
        if start <= received <= end:
            view.by_date.setdefault(received, set()).add(event_id)
    # A partition whose first offset is not 0 lost its oldest records to retention: the receive date of its first
    # record is only partly on the topic, so only the days after it are complete.
    trimmed = [day for offset, day in first_offsets.values() if offset > 0 and day is not None]
    if trimmed:
        view.covered_from = max(trimmed) + dt.timedelta(days=1)
    if progress:
        progress(f"{raw_topic}: {view.records} record(s), {view.dead_lettered} dead-lettered, "
                 f"{view.undecodable} undecodable, {view.repeated} repeated event_id(s)")
    return view
