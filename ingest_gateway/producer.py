"""Publishing accepted batches: Kafka first, the durable spool when Kafka cannot take them.

Guarantee: :meth:`Publisher.publish` returns only once every message of the batch was acknowledged by Kafka
(``acks=all``, idempotent producer) or is fsynced in the spool; it raises :class:`SpoolFull` when neither is
possible, and the caller answers 503. Messages are produced without waiting on each other; a background
thread serves librdkafka's delivery reports and resolves one future per batch.

While the spool holds anything, or the last delivery failed, new batches go to the spool too, so a subject's
events keep their order; a drain thread replays the spool in order and returns to direct publishing once it
is empty. Every message has ``message.timeout.ms`` to be acknowledged: librdkafka reports each one exactly
once, so a failed message is spooled only after it is known not to be in flight any more.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any, Callable, Iterable, NamedTuple

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from ingest_gateway.spool import Spool, SpoolFull

log = logging.getLogger("headwater.gateway.producer")

__all__ = ["Message", "Publisher", "SpoolFull"]


class Message(NamedTuple):
    """One Kafka message to produce (a tuple: a request builds fifty of them, and a tuple is built in C).

    ``headers`` is normally a dict of names to bytes. Messages stay alive until Kafka acknowledges them, which
    at full load means tens of thousands at once, and the garbage collector walks every tracked container among
    them at each collection: a dict holding only strings and bytes is never tracked, while the equivalent list
    of pairs is four tracked objects per message. A list of ``(name, value)`` pairs is accepted as well.
    """

    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] | list[tuple[str, bytes]]


def _header_pairs(headers: dict[str, bytes] | list[tuple[str, bytes]]) -> Iterable[tuple[str, bytes]]:
    return headers.items() if isinstance(headers, dict) else headers


def encode_batch(messages: Iterable[Message]) -> bytes:
    """The spool's record for a batch (latin-1 maps bytes to text losslessly)."""
    return orjson.dumps([[m.topic, None if m.key is None else m.key.decode("latin-1"), m.value.decode("latin-1"),
                          [[h, v.decode("latin-1")] for h, v in _header_pairs(m.headers)]] for m in messages])


def decode_batch(payload: bytes) -> list[Message]:
    return [Message(t, None if k is None else k.encode("latin-1"), v.encode("latin-1"),
                    {h: hv.encode("latin-1") for h, hv in hs}) for t, k, v, hs in orjson.loads(payload)]


#: librdkafka's RD_KAFKA_PARTITION_UA: the configured partitioner picks the partition from the key.
_ANY_PARTITION = -1

# Errors that mean this producer's idempotence state (id, epoch, sequence) is no longer usable: only a new
# producer instance, with a new producer id, can deliver again.
_PRODUCER_STATE_ERRORS = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                          KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
                          KafkaError.INVALID_PRODUCER_ID_MAPPING, KafkaError._FENCED}


class _Delivery:
    """Collects the delivery reports of one batch; calls ``done`` once every message is reported.

    The instance itself is the ``on_delivery`` callback of all the batch's messages: one object per batch
    instead of one closure per message, and a success costs one C-level ``next()`` on a shared counter.
    That counter is the only shared state: reports may come from the poll thread, from ``flush()`` in
    another thread, or (for local failures) from the event loop, and ``next()`` on ``itertools.count`` and
    ``list.append`` are each atomic under the GIL, so no lock is needed. A failure is recorded before it is
    counted, so whoever counts the last report sees every failure.

    librdkafka's report carries no headers, so a failed message is matched back to our own
    :class:`Message` (the spool needs its headers) by topic, key and value, once all reports are in.
    """

    __slots__ = ("_messages", "_expected", "_reported", "_failures", "_done", "_failed", "errors", "producer_broken")

    def __init__(self, messages: list[Message], done: Callable[["_Delivery"], None]) -> None:
        self._messages = messages
        self._expected = len(messages)
        self._reported = itertools.count(1)
        self._failures: list[tuple[Any, str]] = []  # (librdkafka message or our index, reason)
        self._done = done
        self._failed: list[Message] | None = None
        self.errors: list[str] = []
        self.producer_broken = False

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        """librdkafka's delivery report for one message of the batch."""
        if err is not None:
            if err.fatal() or err.code() in _PRODUCER_STATE_ERRORS:
                self.producer_broken = True
            self._failures.append((msg, str(err)))
        if next(self._reported) == self._expected:
            self._done(self)

    def fail_from(self, start: int, reason: str) -> None:
        """Messages ``start:`` were never handed to librdkafka: count them as failed reports."""
        for index in range(start, self._expected):
            self._failures.append((index, reason))
            if next(self._reported) == self._expected:
                self._done(self)

    def with_failed(self, messages: list[Message]) -> "_Delivery":
        self._failed = list(messages)
        self.errors = ["delivery reports overdue"]
        return self

    @property
    def failed(self) -> list[Message]:
        """The batch's messages that Kafka did not acknowledge (read it once ``done`` was called)."""
        if self._failed is None:
            self._failed = self._match_failures()
        return self._failed

    def _match_failures(self) -> list[Message]:
        if not self._failures:
            return []
        self.errors = list(dict.fromkeys(reason for _, reason in self._failures))[:3]
        by_content: dict[tuple[str, bytes | None, bytes], list[Message]] = {}
        for m in self._messages:
            by_content.setdefault((m.topic, m.key, m.value), []).append(m)
        failed: list[Message] = []
        for what, _reason in self._failures:
            if isinstance(what, int):
                message = self._messages[what]
                by_content[(message.topic, message.key, message.value)].remove(message)
            else:
                # Identical messages are interchangeable: spooling any one of them for each failure is right.
                message = by_content[(what.topic(), what.key(), what.value())].pop()
            failed.append(message)
        return failed


class Publisher:
    """Owns the Kafka producer, its poll thread, the spool and the drain thread.

    :param kafka_config: librdkafka settings (brokers, security, user options); defaults below fill the rest
    :param spool: the durable spool this process owns
    :param delivery_timeout_ms: how long a message may wait for its ack before it goes to the spool
    """

    def __init__(self, kafka_config: dict[str, Any], spool: Spool, delivery_timeout_ms: int = 5000) -> None:
        # lz4 rather than zstd: librdkafka compresses each partition's message set on its own, and zstd at its
        # default level clears several hundred KB of match tables before every one of them, which cost the
        # gateway about 9% of its instructions (callgrind). lz4 sets of raw records come out ~1.6x the size
        # of zstd's (about 10% of the raw bytes instead of 6%); HEADWATER_KAFKA_OPTIONS=
        # "compression.type=zstd,compression.level=1" gets zstd's size for about two thirds of the saving.
        self._config = {
            "acks": "all", "enable.idempotence": True, "compression.type": "lz4", "linger.ms": 5,
            "batch.num.messages": 10000, "message.timeout.ms": delivery_timeout_ms,
            "socket.keepalive.enable": True, **kafka_config,
            "error_cb": self._on_error, "logger": logging.getLogger("headwater.gateway.kafka"),
        }
        self._delivery_timeout = int(self._config["message.timeout.ms"]) / 1000
        self.spool = spool
        self._producer: Producer | None = None
        self._stop = threading.Event()  # stops the drain thread
        self._stop_polling = threading.Event()
        self._wake = threading.Event()
        self._down = len(spool) > 0
        self._fatal = False
        self._threads: list[threading.Thread] = []
        self.delivered_from_spool = 0

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._producer = Producer(self._config)
        for name, target in (("hw-kafka-poll", self._poll_loop), ("hw-spool-drain", self._drain_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 10.0) -> None:
        """Stop draining, wait for outstanding acks (the poll thread keeps serving them), then stop."""
        self._stop.set()
        self._wake.set()
        drain = self._threads[1] if len(self._threads) > 1 else None
        if drain is not None:
            drain.join(timeout)
        if self._producer is not None:
            left = self._producer.flush(timeout)
            if left:
                log.warning("producer closed with %d message(s) unacknowledged", left)
        self._stop_polling.set()
        for thread in self._threads:
            thread.join(timeout)
        self.spool.close()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal Kafka producer error, recreating the producer: %s", err)
            self._fatal = True
            self._down = True
            self._wake.set()
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("all Kafka brokers are down: %s", err)

    def _poll_loop(self) -> None:
        while not self._stop_polling.is_set():
            producer = self._producer
            if producer is not None:
                producer.poll(0.05)

    # --- state ----------------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        """True while batches go to the spool instead of Kafka."""
        return self._down or len(self.spool) > 0

    def kafka_reachable(self, topic: str, timeout: float = 2.0) -> bool:
        """Whether the brokers answer a metadata request for ``topic`` (blocking: call from a thread)."""
        try:
            meta = self._producer.list_topics(topic=topic, timeout=timeout)
        except KafkaException:
            return False
        info = meta.topics.get(topic)
        return info is not None and info.error is None and bool(meta.brokers)

    # --- publishing -----------------------------------------------------------------------
    def _produce(self, messages: list[Message], delivery: _Delivery) -> None:
        produce = self._producer.produce
        for i, m in enumerate(messages):
            try:
                # Positional: (topic, value, key, partition, callback, on_delivery, timestamp, headers). Keyword
                # arguments cost confluent-kafka's argument parser a third of the call; the order is pinned
                # by a unit test (test_producer_positional_arguments).
                produce(m.topic, m.value, m.key, _ANY_PARTITION, delivery, None, 0, m.headers)
            except BufferError:
                # The local queue is full: Kafka is not keeping up. Hand this and the rest to the spool.
                delivery.fail_from(i, "local producer queue full")
                return
            except KafkaException as exc:
                delivery.fail_from(i, str(exc))
                return

    async def publish(self, messages: list[Message]) -> str:
        """Deliver ``messages`` durably. :returns: ``"kafka"`` or ``"spool"``. :raises SpoolFull:"""
        if not messages:
            return "kafka"
        if self.degraded:
            await self._to_spool(messages)
            return "spool"
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(delivery: _Delivery) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(delivery))

        self._produce(messages, _Delivery(messages, done))
        delivery = await future
        if not delivery.failed:
            return "kafka"
        self._down = True
        if delivery.producer_broken:
            self._fatal = True
        log.warning("%d of %d message(s) not acknowledged by Kafka, spooling them: %s",
                    len(delivery.failed), len(messages), "; ".join(delivery.errors))
        await self._to_spool(delivery.failed)
        return "spool"

    async def _to_spool(self, messages: list[Message]) -> None:
        await asyncio.to_thread(self.spool.append, encode_batch(messages))
        self._wake.set()

    # --- draining -------------------------------------------------------------------------
    def _deliver_blocking(self, messages: list[Message]) -> _Delivery:
        finished = threading.Event()
        delivery = _Delivery(messages, lambda _d: finished.set())
        self._produce(messages, delivery)
        # Every message gets its report within message.timeout.ms; the margin covers the poll interval.
        if not finished.wait(self._delivery_timeout + 5.0):
            log.error("delivery reports overdue; treating %d message(s) as undelivered", len(messages))
            return _Delivery([], lambda _d: None).with_failed(messages)
        return delivery

    def _recreate_producer(self) -> None:
        log.warning("recreating the Kafka producer (its idempotence state was fenced or fatally broken)")
        old = self._producer
        self._fatal = False
        self._producer = Producer(self._config)
        if old is not None:
            # Serve the old producer's outstanding reports: a request may still be waiting on one.
            old.flush(self._delivery_timeout + 1.0)

    def _drain_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            if self._fatal:
                self._recreate_producer()
            item = self.spool.peek()
            if item is None:
                self._down = False
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            position, payload = item
            remaining = decode_batch(payload)
            while remaining and not self._stop.is_set():
                delivery = self._deliver_blocking(remaining)
                # Only what failed is sent again, so a partly delivered batch is not duplicated.
                remaining = delivery.failed
                if delivery.producer_broken:
                    self._fatal = True
                if remaining:
                    log.info("spool drain: Kafka still unavailable (%s); retrying in %.1f s",
                             "; ".join(delivery.errors), backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    if self._fatal:
                        self._recreate_producer()
            if remaining:
                break  # stopping: the record stays in the spool and is replayed at the next start
            self.spool.commit(position)
            self.delivered_from_spool += 1
            backoff = 0.1
