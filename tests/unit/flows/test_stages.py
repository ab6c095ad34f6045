"""Stages and the flow's processing step without Bytewax: rows, dead letters, the memos and the batching."""
from __future__ import annotations

import datetime as dt
import sqlite3

import confluent_kafka
import orjson
import pytest
from bytewax.connectors.kafka import KafkaError
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.testing import TestingSink, TestingSource, run_main

from enrichers.context import event_time
from enrichers.geo import GeoEnricher
from flows.dataflow import build_flow, make_processor
from flows.outputs import KafkaRowSink, encode_row, row_record, row_records
from flows.stages import ROW_COLUMNS, DeadLetter, Stages, decode_dead_letter
from schemas.wire import WireError, decode_raw, decode_raw_object
from tests.flowkit import IPHONE_UA, identify_event, make_settings, message, page_event, utc, wire


@pytest.fixture()
def settings(tmp_path, geo_db):
    with sqlite3.connect(tmp_path / "accounts.sqlite3") as conn:
        conn.execute("CREATE TABLE accounts (user_id TEXT PRIMARY KEY, plan_tier TEXT, updated_at TEXT)")
        conn.execute("INSERT INTO accounts VALUES ('user-1', 'pro', NULL)")
    return make_settings(tmp_path, geo_db)


@pytest.fixture()
def stages(settings, registry):
    return Stages.from_settings(settings, registry)


def rows_of(stages, values):
    admitted = [stages.admit(message(v, offset=i)) for i, v in enumerate(values)]
    assert not [a for a in admitted if isinstance(a, DeadLetter)]
    return stages.finish(admitted)


# (event timestamp, event sent_at, batch sent_at, received_at): every branch of the clock correction
CLOCKS = [
    ("2026-12-03T11:59:58Z", None, "2026-12-03T11:59:59Z", "2026-12-03T12:00:00.500Z"),
    ("2026-12-03T11:59:58Z", None, None, "2026-12-03T12:00:00Z"),
    ("2026-12-03T12:10:00Z", None, None, "2026-12-03T12:00:00Z"),                 # from the future: receipt
    ("2026-12-03T11:59:58+01:00", "2026-12-03T11:59:59+01:00", "2026-12-03T09:00:00Z", "2026-12-03T12:00:00Z"),
    ("2026-12-01T10:00:00Z", None, "2026-11-01T10:00:00Z", "2026-12-03T12:00:00Z"),  # skew clamped to 2 days
    ("2026-12-03T11:00:00Z", None, "2026-12-20T10:00:00Z", "2026-12-03T12:00:00Z"),  # clamped the other way
    ("2026-12-03T11:59:58.123456789-05:00", None, "not a time at all, no", "2026-12-03T17:00:00.000001Z"),
]


@pytest.mark.parametrize("timestamp, event_sent, batch_sent, received", CLOCKS)
def test_clock_correction_matches_event_time(stages, timestamp, event_sent, batch_sent, received):
    event = page_event("user-1", when=timestamp)
    if event_sent is not None:
        event["sent_at"] = event_sent
    # twice, so the second row comes from the memoised times
    rows = rows_of(stages, [wire(event, received_at=received, sent_at=batch_sent)] * 2)
    expected = event_time(event, received, batch_sent)
    for row in rows:
        assert row["timestamp"] == expected.timestamp and row["timestamp"].tzinfo is dt.timezone.utc
        assert row["clock_skew_seconds"] == expected.skew_seconds
        assert row["event_date"] == expected.event_date and row["received_at"] == utc(received)


def test_events_of_one_gateway_batch_share_times_but_not_rows(stages):
    first, second = page_event("user-1", when="2026-12-03T11:59:50Z"), identify_event("user-2")
    rows = rows_of(stages, [wire(first), wire(second)])
    assert [r["event_id"] for r in rows] == [first["event_id"], second["event_id"]]
    assert rows[0]["timestamp"] == utc("2026-12-03T11:59:51.500Z")
    assert rows[1]["timestamp"] == utc("2026-12-03T11:59:59.500Z")
    assert rows[0]["received_at"] == rows[1]["received_at"]
    assert [r["plan_tier"] for r in rows] == ["pro", "unknown"]
    assert all(list(r) == list(ROW_COLUMNS) for r in rows)


def test_truncated_addresses_and_drop(settings, registry):
    stages = Stages.from_settings(settings, registry)
    values = [wire(page_event("user-1"), client_ip=ip) for ip in ("81.2.69.142", "2a02:ec0:1:2:3:4:5:6",
                                                                   "81.2.69.142", "bogus", None)]
    assert [r["ip_truncated"] for r in rows_of(stages, values)] == ["81.2.69.0", "2a02:ec0:1::", "81.2.69.0", None,
                                                                    None]
    dropping = Stages.from_settings(make_settings(settings.data_dir, settings.geoip_db,
                                                  HEADWATER_IP_HANDLING="drop"), registry)
    rows = rows_of(dropping, values)
    assert {r["ip_truncated"] for r in rows} == {None} and rows[0]["country"] == "GB"


@pytest.mark.parametrize("value, reason", [
    (b"", "empty record"), (b"[1]", "record is not a JSON object"), (b'{"v": 2}', "unsupported wire version 2"),
    (b'{"v": 1, "event": [], "received_at": "x"}', "record has no event object"),
    (b'{"v": 1, "event": {}, "received_at": 5}', "record has no received_at"),
    (b'{"v": 1, "event": {}, "received_at": "x", "source": "other"}', "unknown source 'other'"),
])
def test_undecodable_records_are_dead_letters_with_their_reason(stages, value, reason):
    letter = stages.admit(message(value, offset=7))
    assert isinstance(letter, DeadLetter) and letter.stage == "decode" and letter.original == value
    assert letter.reasons == [{"path": "", "message": reason}] and letter.offset == 7
    with pytest.raises(WireError, match=reason):
        decode_raw_object(value)


def test_decode_raw_object_and_decode_raw_agree():
    value = wire(page_event())
    doc, record = decode_raw_object(value), decode_raw(value)
    assert (doc["event"], doc["received_at"], doc["source"], doc["client_ip"]) == (
        record.event, record.received_at, record.source, record.client_ip)
    assert decode_raw_object(orjson.dumps({"v": 1, "event": {}, "received_at": "x"}))["source"] == "native"


def test_an_unusable_receive_time_is_a_time_dead_letter(stages):
    letter = stages.admit(message(wire(page_event(), received_at="yesterday-ish, roughly"), offset=0))
    assert isinstance(letter, DeadLetter) and letter.stage == "time" and letter.event == "page_viewed"


def test_a_row_that_cannot_be_built_is_an_enrich_dead_letter_without_the_original(settings, registry, caplog):
    class FailingGeo(GeoEnricher):  # a fault injected where a bug would surface
        def values(self, ips):
            raise RuntimeError("boom")

    stages = Stages.from_settings(settings, registry)
    stages.geo = FailingGeo(None)
    event = identify_event("user-1")
    letter = stages.admit(message(wire(event), offset=3))
    assert isinstance(letter, DeadLetter) and letter.stage == "enrich" and letter.original is None
    assert letter.event_id == event["event_id"] and letter.offset == 3
    assert "RuntimeError" in letter.reasons[0]["message"] and "Planted" not in caplog.text


def test_the_processing_step_hands_on_one_batch_per_source_partition(stages):
    bad = page_event()
    del bad["properties"]["url"]
    items = [message(wire(page_event("user-1")), offset=0, partition=1),
             message(wire(bad), offset=1, partition=0),
             KafkaError(confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT), message(b"", 0)),
             message(wire(identify_event("user-2")), offset=2, partition=1),
             message(wire(page_event("user-3")), offset=3, partition=0)]
    batches = make_processor(stages, batch_size=1)(items)
    assert [b.key for b in batches] == ["1", "0"]
    one, zero = batches
    assert [r["kafka_offset"] for r in one.rows] == [0, 2] and one.letters == []
    assert [r["kafka_offset"] for r in zero.rows] == [3] and [l.offset for l in zero.letters] == [1]
    assert [k for k, _ in one.keyed_rows()] == ["1", "1"] and list(zero.keyed_letters()) == [("0", zero.letters[0])]
    (sent,) = [decode_dead_letter(m.value, stages.seal) for m in zero.letter_messages()]  # sealed: a fresh nonce each
    assert (sent["source_offset"], sent["original"]) == (1, zero.letters[0].original) and sent["sealed"]
    assert make_processor(stages)([]) == []


class _ListsSink(FixedPartitionedSink):
    """Records what a partitioned sink that takes lists of rows is handed (no service behind it)."""

    item_batches = True

    def __init__(self, received: list):
        self.received = received

    def list_parts(self):
        return ["0", "1"]

    def build_part(self, step_id, for_part, resume_state):
        received = self.received

        class Part(StatefulSinkPartition):
            def write_batch(self, items):
                received.extend(items)

            def snapshot(self):
                return None

        return Part()


def test_a_sink_that_takes_lists_gets_one_list_per_source_batch_and_partition(settings, registry):
    values = [wire(page_event(f"user-{i}")) for i in range(6)]
    items = [message(v, offset=i, partition=i % 2) for i, v in enumerate(values)]
    lists, rows, letters = [], [], []
    flow = build_flow(settings, source=TestingSource(items, batch_size=6),
                      sinks={"lists": _ListsSink(lists), "rows": TestingSink(rows)}, dead_letters=TestingSink(letters),
                      registry=registry, today=dt.date(2026, 12, 3))
    run_main(flow)
    assert sorted(len(batch) for batch in lists) == [3, 3]
    assert all(len({r["kafka_partition"] for r in batch}) == 1 for batch in lists)
    assert sorted(encode_row(r) for batch in lists for r in batch) == sorted(encode_row(r) for r in rows)


def test_the_kafka_row_sink_flattens_lists_of_rows(stages):
    rows = rows_of(stages, [wire(page_event("user-1")), wire(page_event("user-2"))])
    config = {"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 1000, "log_level": 0}  # nothing listens
    assert row_records(rows) == [(row["event_id"].encode(), encode_row(row), []) for row in rows]
    assert row_record(rows[0]) == row_records(rows[:1])[0]
    for encode_batch in (None, row_records):
        sink = KafkaRowSink(config, "t", row_record, item_batches=True, encode_batch=encode_batch)
        part = sink.build_part("step", "0", None)
        part.write_batch([rows[:1], rows[1:], []])
        assert len(sink._producer.producer) == 2  # queued in librdkafka, one record per row
        sink._producer.producer.purge()


def test_processing_a_batch_leaves_no_cyclic_garbage(stages):
    """The flow collects the youngest generation only every 20,000 net allocations (flows.runtime): that is safe
    because processing makes no reference cycles. Every kind of outcome is here: rows (identify with hashed PII,
    page views), schema, time and decode dead letters. With the collector off, the batch, its messages and the
    caller's frame must all be freed by reference counting alone as soon as the caller is done. (Weak references
    rather than ``gc.collect()``'s count: other tests' threads may make garbage of their own meanwhile.)"""
    import gc
    import weakref

    from flows.dataflow import make_processor

    class Items(list):  # a list that takes weak references
        pass

    class Sentinel:  # stands for what the caller has in its locals
        pass

    bad = page_event("user-1")
    del bad["properties"]["url"]
    values = [wire(identify_event("user-1")), wire(page_event("user-2")), wire(bad),
              wire(page_event(), received_at="not a time"), b"{not json", wire(page_event("user-3"), client_ip=None)]
    process = make_processor(stages)
    process([message(v, offset=i) for i, v in enumerate(values)])  # warm: caches and plans are built once

    def caller() -> list[weakref.ref]:
        sentinel, items = Sentinel(), Items(message(v, offset=i) for i, v in enumerate(values * 5))
        batches = process(items)
        assert sum(len(b.rows) for b in batches) == 15 and sum(len(b.letters) for b in batches) == 15
        return [weakref.ref(sentinel), weakref.ref(items)] + [weakref.ref(m) for m in items]

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        refs = caller()
        alive = [ref() for ref in refs if ref() is not None]
        assert not alive, f"{len(alive)} object(s) outlived the call: a reference cycle holds them, e.g. {alive[0]!r}"
    finally:
        if was_enabled:
            gc.enable()


def test_settle_heap_freezes_start_up_objects_and_raises_the_young_threshold():
    import subprocess
    import sys

    code = ("import gc; from flows.runtime import settle_heap, YOUNG_THRESHOLD; settle_heap(); "
            "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); "
            "assert gc.get_threshold()[0] == YOUNG_THRESHOLD == 20000, gc.get_threshold(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _outcome(item):
    if isinstance(item, DeadLetter):
        return ("letter", item.stage, item.reasons, item.original, item.event_id, item.event, item.key)
    return ("row", item)


def test_remembered_contexts_give_exactly_the_rows_and_letters_of_the_ordinary_path(settings, registry):
    remembering = Stages.from_settings(settings, registry)
    ordinary = Stages.from_settings(settings, registry)
    ordinary.contexts = None
    assert remembering.contexts is not None and "identify" in remembering.contexts.names
    assert "page_viewed" in remembering.contexts.unmarked and "identify" not in remembering.contexts.unmarked
    shared = {"locale": "de-DE", "ip": "81.2.69.142", "user_agent": IPHONE_UA, "app": {"name": 'A "b" {', "version": "1"}}
    identify = identify_event()
    bad_context = page_event()
    bad_context["context"] = {"locale": 5}
    no_context = page_event()
    del no_context["context"]
    records = [wire({**page_event(), "context": shared}) for _ in range(3)]
    records += [
        wire(identify), wire(identify_event(user_id=None)),  # PII in the properties, an IP in the context
        wire(bad_context), wire(bad_context),  # an invalid context: explained, both times
        wire(no_context), wire({**page_event(), "context": "not an object"}),
        wire({**page_event(), "context": shared}, client_ip=None),
        wire({**page_event(), "context": shared, "properties": {}}),  # valid context, invalid rest
        wire({**page_event(), "context": shared, "timestamp": "2031-01-01T00:00:00Z"},
             received_at="2031-01-01T00:00:01Z"),  # no salt for 2031: a pii letter
        wire({**page_event(), "event": "no_such_event", "context": shared}),
        wire({**identify_event(), "context": {**shared, "ip": ["81.2.69.142", "2a02:ec0::1"]}}),  # ip: one string
    ]
    escaped = wire({**page_event(), "context": shared}).replace(b'"context":', b'"cont\\u0065xt":')
    twice = wire(page_event()).replace(b'"context":', b'"context":{"locale":"xx"},"context":')
    broken = wire(page_event()).replace(b'"en-US"', b"tru")  # not JSON inside the context only
    records += [escaped, twice, broken]
    for stages in (remembering, ordinary):
        stages.outcomes = [_outcome(stages.admit(message(value, offset=i))) for i, value in enumerate(records)]
    assert remembering.outcomes == ordinary.outcomes
    kinds = [o[0] if o[0] == "row" else o[1] for o in ordinary.outcomes]
    assert kinds == ["row"] * 3 + ["row", "row", "validate", "validate", "row", "validate", "row", "validate",
                                   "pii", "validate", "validate", "row", "row", "decode"]
    assert remembering.contexts.hits >= 4 and remembering.contexts.misses >= 3
    # The remembered context of a row is PII-free and the same text as the ordinary path writes.
    row = next(o[1] for o in remembering.outcomes if o[0] == "row" and o[1]["event"] == "identify")
    assert "81.2.69.142" not in row["context"] and row["country"] is not None


def test_records_sharing_a_shell_give_exactly_the_rows_and_letters_of_the_ordinary_path(settings, registry):
    """The fields before the event are decoded once per shell: whatever a shell holds, the outcome is the same."""
    remembering = Stages.from_settings(settings, registry)
    ordinary = Stages.from_settings(settings, registry)
    ordinary.contexts = None
    shared = {"locale": "de-DE", "ip": "81.2.69.142"}
    good = [wire({**page_event(), "context": shared}) for _ in range(3)]
    other_request = [wire({**page_event(), "context": shared}, received_at="2026-12-03T12:00:07Z") for _ in range(2)]
    version_2 = [v.replace(b'{"v":1,', b'{"v":2,') for v in good]  # refused by the record check, every time
    odd_source = [v.replace(b'"source":"native"', b'"source":"carrier-pigeon"') for v in good]
    no_receive_time = [v.replace(b'"received_at":"2026-12-03T12:00:00.500Z",', b"") for v in good]
    bad_time = [v.replace(b"2026-12-03T12:00:00.500Z", b"yesterday") for v in good]
    trailing_space = [v[:-1] + b" }" for v in good]  # the event not last byte for byte: the ordinary path
    shell_after = [v.replace(b'{"v":1,', b'{').replace(b"}}", b'}},"v":1}', 1) for v in good[:1]]
    records = good + other_request + version_2 + odd_source + no_receive_time + bad_time + trailing_space + good
    records += shell_after
    for stages in (remembering, ordinary):
        stages.outcomes = [_outcome(stages.admit(message(value, offset=i))) for i, value in enumerate(records)]
    assert remembering.outcomes == ordinary.outcomes
    kinds = [o[0] if o[0] == "row" else o[1] for o in ordinary.outcomes]
    assert kinds == ["row"] * 5 + ["decode"] * 9 + ["time"] * 3 + ["row"] * 6 + [kinds[-1]]
    rows = [o[1] for o in remembering.outcomes if o[0] == "row"]
    assert {row["received_at"] for row in rows} == {utc("2026-12-03T12:00:00.500Z"), utc("2026-12-03T12:00:07Z")}
    assert len(remembering.contexts._shells) >= 6


def test_a_remembered_context_is_never_changed_by_its_events(settings, registry):
    stages = Stages.from_settings(settings, registry)
    context = {"locale": "de-DE", "ip": "81.2.69.142", "device": {"type": "phone", "os": "iOS"}}
    first = stages.admit(message(wire({**identify_event(), "context": context}), offset=0))
    entry = next(iter(e for e in stages.contexts._entries.values() if e is not None))
    assert entry.value == context  # the IP is taken out of copies only
    second = stages.admit(message(wire({**identify_event(), "context": context}), offset=1))
    assert first["context"] == second["context"] and first["country"] == second["country"] == "GB"


def test_geo_and_user_agent_are_remembered_per_context_address_and_agent(settings, registry):
    """Derived columns come from the context together with the gateway's address and user agent: each pair its own."""
    remembering = Stages.from_settings(settings, registry)
    ordinary = Stages.from_settings(settings, registry)
    ordinary.contexts = None
    no_ip = {"locale": "de-DE", "app": {"name": "A", "version": "1"}}
    with_ip = {**no_ip, "ip": "2a02:ec0::1"}
    web = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
    pairs = [("81.2.69.142", IPHONE_UA), ("89.160.20.115", IPHONE_UA), ("81.2.69.142", web), (None, web),
             ("81.2.69.142", None), ("81.2.69.142", IPHONE_UA)]
    records = [wire({**page_event(), "context": context}, client_ip=ip, user_agent=agent)
               for context in (no_ip, with_ip) for ip, agent in pairs]
    for stages in (remembering, ordinary):
        stages.rows = [stages.admit(message(value, offset=i)) for i, value in enumerate(records)]
    assert remembering.rows == ordinary.rows
    assert all(type(row) is dict for row in ordinary.rows)
    # without an address in the context the gateway's decides; with one, the context's
    assert [row["country"] for row in ordinary.rows] == ["GB", "SE", "GB", None, "GB", "GB"] + ["DE"] * 6
    assert [row["browser"] for row in ordinary.rows[:4]] == ["Mobile Safari", "Mobile Safari", "Chrome", "Chrome"]
    assert len(remembering.contexts._entries) == 2
    assert sorted(len(e.derived) for e in remembering.contexts._entries.values()) == [5, 5]
