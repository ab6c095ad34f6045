"""One delivery-report object per batch: ``done`` fires once, after the last report, and the messages Kafka
did not take are our own (with their headers), ready for the spool."""
from __future__ import annotations

import threading

from confluent_kafka import KafkaError
from confluent_kafka import Message as KafkaMessage

from confluent_kafka import Producer

from ingest_gateway.producer import Message, Publisher, _Delivery
from ingest_gateway.spool import Spool


def _batch(n: int) -> list[Message]:
    return [Message("raw", f"k{i}".encode(), f"v{i}".encode(), [("hw-event-id", f"e{i}".encode())]) for i in range(n)]


def _report(m: Message) -> KafkaMessage:
    return KafkaMessage(topic=m.topic, key=m.key, value=m.value)  # as librdkafka reports it: no headers


def test_done_once_after_every_report_and_nothing_failed():
    messages, finished = _batch(5), []
    delivery = _Delivery(messages, finished.append)
    for m in messages[:4]:
        delivery(None, _report(m))
    assert finished == []
    delivery(None, _report(messages[4]))
    assert finished == [delivery] and delivery.failed == [] and not delivery.producer_broken


def test_failed_reports_map_back_to_our_messages_with_headers():
    messages, finished = _batch(4), []
    delivery = _Delivery(messages, finished.append)
    delivery(None, _report(messages[0]))
    delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _report(messages[2]))
    delivery(None, _report(messages[1]))
    delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _report(messages[3]))
    assert len(finished) == 1
    assert sorted(delivery.failed) == sorted([messages[2], messages[3]])
    assert all(m.headers for m in delivery.failed) and delivery.errors and not delivery.producer_broken


def test_identical_messages_each_count_once():
    m = _batch(1)[0]
    delivery = _Delivery([m, m, m], lambda _d: None)
    for err in (KafkaError(KafkaError._MSG_TIMED_OUT), None, KafkaError(KafkaError._MSG_TIMED_OUT)):
        delivery(err, _report(m))
    assert delivery.failed == [m, m]


def test_messages_never_handed_over_fail_locally_and_fencing_is_noticed():
    messages, finished = _batch(4), []
    delivery = _Delivery(messages, finished.append)
    delivery(KafkaError(KafkaError.INVALID_PRODUCER_EPOCH), _report(messages[0]))
    delivery.fail_from(1, "local producer queue full")
    assert len(finished) == 1 and delivery.failed == messages and delivery.producer_broken
    assert "local producer queue full" in delivery.errors


def test_reports_from_several_threads_finish_exactly_once():
    messages, finished = _batch(2000), []
    delivery = _Delivery(messages, finished.append)
    halves = [messages[::2], messages[1::2]]
    threads = [threading.Thread(target=lambda part=part: [delivery(None, None) for _ in part]) for part in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert finished == [delivery] and delivery.failed == []


def test_producer_positional_arguments(tmp_path):
    """``Publisher._produce`` hands confluent-kafka its arguments by position (cheaper than keywords): the topic,
    key, value and delivery callback must land where the keyword names would have put them. Nothing listens
    on port 1, so every message times out and is reported back, to our callback, as our own message."""
    publisher = Publisher({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300}, Spool(tmp_path, 1 << 20))
    publisher._producer = Producer(publisher._config)
    messages = [Message("raw", f"k{i}".encode(), f"v{i}".encode(), {"hw-event-id": f"e{i}".encode()}) for i in range(3)]
    finished = threading.Event()
    delivery = _Delivery(messages, lambda _d: finished.set())
    publisher._produce(messages, delivery)
    assert publisher._producer.flush(10) == 0
    assert finished.is_set()
    assert sorted(delivery.failed) == sorted(messages) and delivery.errors
