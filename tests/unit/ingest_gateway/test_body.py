import asyncio
import gzip
import json
import random
import tracemalloc
import zlib

import orjson
import pytest

from ingest_gateway.body import BodyError, inflate, oversized_events, parse_batch, read_body, split_batch

LIMIT = 4 * 1024 * 1024


def bomb(inflated_bytes: int) -> bytes:
    """A gzip stream of zeros, built in chunks so the test never holds the inflated size."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    parts = [comp.compress(chunk) for _ in range(inflated_bytes // len(chunk))]
    parts.append(comp.flush())
    return b"".join(parts)


def refused(fn) -> BodyError:
    with pytest.raises(BodyError) as info:
        fn()
    return info.value


def test_gzip_bomb_is_refused_with_small_memory():
    payload = bomb(256 << 20)  # a quarter gigabyte of zeros in ~0.25 MB: under the compressed-size limit
    assert len(payload) < 512 * 1024
    tracemalloc.start()
    err = refused(lambda: inflate(payload, "gzip", LIMIT))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (err.status, err.code) == (413, "decompressed_too_large")
    assert peak < 3 * LIMIT  # the output buffer at most, never the 256 MB


def test_gzip_within_limit_round_trips_and_deflate_works():
    body = orjson.dumps({"batch": [{"i": i} for i in range(100)]})
    assert inflate(gzip.compress(body), "gzip", LIMIT) == body
    assert inflate(zlib.compress(body), "deflate", LIMIT) == body
    assert inflate(body, None, LIMIT) == body
    assert inflate(body, "identity", LIMIT) == body


def test_corrupt_truncated_and_unknown_encodings():
    body = gzip.compress(b'{"batch": []}' * 100)
    assert refused(lambda: inflate(body[:-12], "gzip", LIMIT)).code == "compression_invalid"
    assert refused(lambda: inflate(b"not gzip at all", "gzip", LIMIT)).code == "compression_invalid"
    err = refused(lambda: inflate(body, "br", LIMIT))
    assert (err.status, err.code) == (415, "unsupported_encoding")
    # A plain body labelled gzip is not silently accepted.
    assert refused(lambda: inflate(b'{"batch":[1]}', "gzip", LIMIT)).status == 400


def test_identity_body_over_the_decompressed_limit():
    err = refused(lambda: inflate(b"x" * 2048, None, 1024))
    assert (err.status, err.code) == (413, "decompressed_too_large")


async def _chunks(data: bytes, size: int = 1000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_oversize_compressed_body_refused_by_header_and_by_stream():
    err = refused(lambda: asyncio.run(read_body(_chunks(b""), "600000", 512 * 1024)))
    assert (err.status, err.code) == (413, "body_too_large")
    # Without Content-Length (chunked upload) the stream is cut off as it passes the limit.
    err = refused(lambda: asyncio.run(read_body(_chunks(b"x" * 600_000), None, 512 * 1024)))
    assert (err.status, err.code) == (413, "body_too_large")
    assert asyncio.run(read_body(_chunks(b"x" * 5000), "5000", 512 * 1024)) == b"x" * 5000
    assert refused(lambda: asyncio.run(read_body(_chunks(b""), "-1", 1024))).code == "bad_content_length"


def test_batch_counts():
    ok = parse_batch(orjson.dumps({"sent_at": "2026-12-03T12:00:00Z", "batch": [{}] * 50}), 50)
    assert len(ok.events) == 50 and ok.sent_at == "2026-12-03T12:00:00Z"
    err = refused(lambda: parse_batch(orjson.dumps({"batch": [{}] * 51}), 50))
    assert (err.status, err.code) == (413, "too_many_events")
    err = refused(lambda: parse_batch(orjson.dumps({"batch": []}), 50))
    assert (err.status, err.code) == (400, "empty_batch")


@pytest.mark.parametrize("body, code", [
    (b'{"batch": [', "malformed_json"),
    (b"", "malformed_json"),
    (b'{"batch": ["\xff\xfe"]}', "invalid_utf8"),
    (b'[1, 2]', "invalid_body"),
    (b'{"events": []}', "invalid_body"),
    (b'{"batch": {"event": "x"}}', "invalid_body"),
    (b'{"batch": [{}], "sent_at": "yesterday"}', "invalid_body"),
    (b'{"batch": [{}], "consent": {"analytics": "no"}}', "invalid_body"),
])
def test_malformed_bodies_have_machine_readable_codes(body, code):
    err = refused(lambda: parse_batch(body, 50))
    assert (err.status, err.code) == (400, code)
    again = refused(lambda: split_batch(body, 50))  # the same answer when the contexts are split off
    assert (again.status, again.code, again.message) == (err.status, err.code, err.message)


def test_consent_flag_on_the_batch():
    assert parse_batch(b'{"batch": [{}], "consent": {"analytics": false}}', 50).analytics_consent is False
    assert parse_batch(b'{"batch": [{}], "consent": {"analytics": true}}', 50).analytics_consent is True
    assert parse_batch(b'{"batch": [{}]}', 50).analytics_consent is True


def test_oversized_events_are_found_by_index():
    small = {"event": "a", "properties": {"x": "y"}}
    large = {"event": "b", "properties": {"blob": "z" * 5000}}
    batch = parse_batch(orjson.dumps({"batch": [small, large, small]}), 50)
    found = oversized_events(batch, 1024)
    assert list(found) == [1] and found[1] > 5000
    # A body below the limit cannot hold an oversized event: nothing is re-encoded.
    assert oversized_events(parse_batch(orjson.dumps({"batch": [small]}), 50), 1024) == {}


def _restored(batch):
    """split_batch's events with their contexts decoded back in."""
    events = []
    for event, context in zip(batch.events, batch.contexts):
        if context is not None:
            event = {**event, "context": orjson.loads(context)}
        events.append(event)
    return events


def test_split_batch_finds_each_event_and_context_as_written():
    rng = random.Random(4)
    contexts = [{"app": {"name": "Acme", "version": "1.2"}, "locale": "de-DE"}, {"ip": "81.2.69.142"}, {},
                {"user_agent": 'Mozilla/5.0 "quoted" \\ {[('}, {"nested": {"context": {"x": 1}}}]
    for _ in range(300):
        batch = []
        for _ in range(rng.randrange(1, 51)):
            event = {"event": "page_viewed", "event_id": str(rng.random()), "properties": {"p": rng.random()}}
            if rng.random() < 0.8:
                event["context"] = rng.choice(contexts)
            batch.append(event if rng.random() < 0.95 else rng.choice(["a string", 7, None, [event]]))
        doc = {"sent_at": "2026-12-04T12:00:00Z", "batch": batch, "consent": {"analytics": True}}
        body = (orjson.dumps(doc) if rng.random() < 0.5
                else json.dumps(doc, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5).encode())
        whole, split = parse_batch(body, 50), split_batch(body, 50)
        assert split.texts is not None and split.contexts is not None
        assert _restored(split) == whole.events == batch
        assert [orjson.loads(text) for text in split.texts] == batch
        assert (split.sent_at, split.consent, split.size) == (whole.sent_at, whole.consent, whole.size)
        for event, context in zip(split.events, split.contexts):
            assert (context is not None) == (type(event) is dict and "context" in event)
            if context is not None:
                assert event["context"] is None  # not decoded


@pytest.mark.parametrize("body", [
    b'{"batch": [{"event": "a", "cont\\u0065xt": {"x": 1}}]}',           # a key only a parser reads as context
    b'{"batch": [{"event": "a", "context": {"x": 1}, "context": {"x": 2}}]}',  # a parser keeps the last one
    b'{"batch": [{"event": "a"}], "batch": [{"event": "b", "context": {}}]}',
])
def test_split_batch_leaves_what_it_cannot_vouch_for_to_the_parser(body):
    whole, split = parse_batch(body, 50), split_batch(body, 50)
    assert split.texts is None and split.contexts is None
    assert split.events == whole.events


def test_split_batch_counts_events_like_parse_batch():
    body = orjson.dumps({"batch": [{"context": {}}] * 51})
    assert refused(lambda: split_batch(body, 50)).code == "too_many_events"
    assert refused(lambda: split_batch(b'{"batch": []}', 50)).code == "empty_batch"


def test_oversized_events_of_a_split_batch_are_measured_as_written():
    large = {"event": "b", "properties": {"blob": "z" * 5000}, "context": {"a": "b"}}
    body = json.dumps({"batch": [{"event": "a"}, large]}, indent=4).encode()
    batch = split_batch(body, 50)
    assert oversized_events(batch, 1024, batch.texts) == {1: len(batch.texts[1])}
    assert len(batch.texts[1]) > len(orjson.dumps(large))  # the client's indentation counts: it is what is sent on
