"""The whole flow under Bytewax's test runners: branches, PII never in output or logs, 2 workers, recovery."""
from __future__ import annotations

import base64
import datetime as dt
import logging
import sqlite3
from collections import Counter

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from enrichers.pii import MissingSaltError
from flows.dataflow import build_flow
from flows.metrics import PIPELINE_LAG
from flows.outputs import encode_row
from flows.sealing import LetterSeal
from flows.stages import ROW_COLUMNS, decode_dead_letter
from tests.flowkit import PLANTED, identify_event, make_settings, message, page_event, wire

TODAY = dt.date(2026, 12, 3)


@pytest.fixture()
def settings(tmp_path, geo_db):
    with sqlite3.connect(tmp_path / "accounts.sqlite3") as conn:
        conn.execute("CREATE TABLE accounts (user_id TEXT PRIMARY KEY, plan_tier TEXT, updated_at TEXT)")
        conn.executemany("INSERT INTO accounts VALUES (?, ?, NULL)", [("user-1", "pro"), ("user-2", "free")])
    return make_settings(tmp_path, geo_db)


def mixed_records() -> list[bytes]:
    bad_schema = page_event()
    del bad_schema["properties"]["url"]
    return [
        wire(identify_event("user-1")),
        wire(page_event("user-2")),
        wire(identify_event(None)),
        wire(bad_schema),
        b"\x00not json",
        wire(identify_event("user-3", when="2027-05-01T00:00:00Z"),   # 2027Q2 has no salt
             received_at="2027-05-01T00:00:01Z", sent_at=None),
        wire(identify_event("user-9"), client_ip=None),
    ]


def run(settings, registry, values, **kw):
    rows, letters = [], []
    source = TestingSource([message(v, offset=i, partition=i % 4) for i, v in enumerate(values)], batch_size=3)
    flow = build_flow(settings, source=source, sinks={"test": TestingSink(rows)}, dead_letters=TestingSink(letters),
                      registry=registry, today=TODAY, batch_size=4, **kw)
    return flow, rows, letters


def test_valid_invalid_and_undecodable_records_take_the_right_branches(settings, registry):
    values = mixed_records()
    flow, rows, letters = run(settings, registry, values)
    run_main(flow)
    assert sorted(r["kafka_offset"] for r in rows) == [0, 1, 2, 6]
    assert all(list(r) == list(ROW_COLUMNS) for r in rows)
    by_offset = {r["kafka_offset"]: r for r in rows}
    first = by_offset[0]
    assert (first["plan_tier"], first["country"], first["city"], first["ip_truncated"]) == ("pro", "GB", "London",
                                                                                          "81.2.69.0")
    assert (first["browser"], first["os"], first["device_class"]) == ("Mobile Safari", "iOS", "mobile")
    assert first["event_date"] == TODAY and first["pii_salt_id"] == "2026Q4"
    assert first["timestamp"] == dt.datetime(2026, 12, 3, 11, 59, 59, 500000, tzinfo=dt.timezone.utc)
    assert by_offset[1]["plan_tier"] == "free" and by_offset[1]["country"] == "DE"  # geo from the gateway IP
    assert by_offset[2]["plan_tier"] == "anonymous" and by_offset[2]["anonymous_id"]
    assert by_offset[6]["plan_tier"] == "unknown"
    assert "ip" not in orjson.loads(first["context"])

    seal = LetterSeal.from_settings(settings)  # what replay builds from the same salts
    decoded = sorted((decode_dead_letter(m.value, seal) for m in letters), key=lambda d: d["source_offset"])
    assert all(d["sealed"] and d["original_b64"] is None for d in decoded)
    assert all(decode_dead_letter(m.value)["original"] is None for m in letters)  # no salts, no original
    assert [(d["source_offset"], d["stage"]) for d in decoded] == [(3, "validate"), (4, "decode"), (5, "pii")]
    assert decoded[0]["reasons"] == [{"path": "properties.url", "message": "'url' is a required property"}]
    assert "2027Q2" in decoded[2]["reasons"][0]["message"]
    assert decoded[1]["original"] == b"\x00not json"
    assert all(d["original"] == values[d["source_offset"]] for d in decoded)  # replayable as they were
    assert all(m.key == b"k" for m in letters)


def _letter_text(value: bytes) -> str:
    """A dead letter as text, with every field that is valid base64 decoded too (so encoding hides nothing)."""
    parts = [value.decode()]
    for field_value in orjson.loads(value).values():
        if isinstance(field_value, str) and field_value:
            try:
                parts.append(base64.b64decode(field_value, validate=True).decode("latin-1"))
            except ValueError:
                pass
    return "\n".join(parts)


def test_no_planted_pii_in_output_rows_dead_letters_or_logs(settings, registry, caplog):
    caplog.set_level(logging.DEBUG)
    flow, rows, letters = run(settings, registry, mixed_records())
    run_main(flow)
    assert len(rows) == 4
    # offset 5 is an identify event full of planted PII that became a dead letter (no salt for its quarter)
    assert any(orjson.loads(m.value)["source_offset"] == 5 for m in letters)
    text = (b"\n".join(encode_row(r) for r in rows).decode() + "\n" + caplog.text + "\n"
            + "\n".join(_letter_text(m.value) for m in letters))
    text_lower = text.lower()
    for value in PLANTED.values():
        assert value.lower() not in text_lower, f"raw PII {value!r} leaked"
    assert PLANTED["phone"].lstrip("+") not in text
    assert "Plantina" not in text and "Springfield" not in text
    assert "81.2.69.142" not in text and "2a02:ec0:1:2" not in text


def test_two_workers_give_the_same_multiset_of_outputs(settings, registry):
    values = mixed_records() * 3
    flow1, rows1, letters1 = run(settings, registry, values)
    run_main(flow1)
    flow2, rows2, letters2 = run(settings, registry, values)
    cluster_main(flow2, [], 0, worker_count_per_proc=2)
    assert len(rows1) == 12
    assert Counter(encode_row(r) for r in rows1) == Counter(encode_row(r) for r in rows2)
    strip = lambda ms: Counter((d["source_offset"], d["stage"]) for d in map(decode_dead_letter, (m.value for m in ms)))
    assert strip(letters1) == strip(letters2)


def test_recovery_after_abort_loses_no_event(settings, registry, tmp_path):
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    values = [wire(page_event(f"user-{i}")) for i in range(8)]
    items = [message(v, offset=i, partition=0) for i, v in enumerate(values)]
    items.insert(5, TestingSource.ABORT())
    rows, letters = [], []
    flow = build_flow(settings, source=TestingSource(items, batch_size=1), sinks={"t": TestingSink(rows)},
                      dead_letters=TestingSink(letters), registry=registry, today=TODAY, batch_size=2,
                      batch_timeout=dt.timedelta(milliseconds=1))
    config = RecoveryConfig(str(recovery))
    run_main(flow, epoch_interval=dt.timedelta(0), recovery_config=config)  # stops at the ABORT
    first_run = {r["kafka_offset"] for r in rows}
    assert first_run and len(first_run) < 8
    run_main(flow, epoch_interval=dt.timedelta(0), recovery_config=config)
    assert {r["kafka_offset"] for r in rows} == set(range(8))
    assert letters == []


def test_sinks_report_pipeline_lag(settings, registry):
    flow, rows, _ = run(settings, registry, mixed_records())
    run_main(flow)
    lag = PIPELINE_LAG.labels(sink="test")._value.get()
    newest = max(r["received_at"] for r in rows)
    assert lag == pytest.approx((dt.datetime.now(dt.timezone.utc) - newest).total_seconds(), abs=60)


def test_flow_refuses_to_start_without_a_salt_for_today(settings, registry):
    with pytest.raises(MissingSaltError, match="2027Q2"):
        build_flow(settings, source=TestingSource([]), sinks={}, dead_letters=TestingSink([]), registry=registry,
                   today=dt.date(2027, 4, 2))
