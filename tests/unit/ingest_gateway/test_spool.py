import threading

import pytest

from ingest_gateway.producer import Message, decode_batch, encode_batch
from ingest_gateway.spool import Spool, SpoolFull, SpoolLocked, open_free_spool


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (item := spool.peek()) is not None:
        position, payload = item
        out.append(payload)
        spool.commit(position)
    return out


def test_records_come_back_in_append_order_across_segments(tmp_path):
    spool = Spool(tmp_path, max_bytes=10 << 20, segment_bytes=1000)
    records = [f"batch-{i:04d}".encode() * 20 for i in range(200)]
    for r in records:
        spool.append(r)
    assert len(spool) == 200
    assert len(list(tmp_path.glob("seg-*.log"))) > 5
    assert drain(spool) == records
    assert len(spool) == 0 and spool.pending_bytes == 0
    assert len(list(tmp_path.glob("seg-*.log"))) == 1  # delivered segments are deleted
    spool.close()


def test_durable_across_reopen_and_cursor_kept(tmp_path):
    spool = Spool(tmp_path, max_bytes=10 << 20, segment_bytes=500)
    for i in range(50):
        spool.append(f"r{i}".encode() * 30)
    for _ in range(20):
        position, _ = spool.peek()
        spool.commit(position)
    spool.close()
    again = Spool(tmp_path, max_bytes=10 << 20, segment_bytes=500)
    assert len(again) == 30
    assert drain(again) == [f"r{i}".encode() * 30 for i in range(20, 50)]
    again.append(b"after")
    again.close()
    third = Spool(tmp_path, max_bytes=10 << 20)
    assert drain(third) == [b"after"]
    third.close()


def test_torn_tail_is_cut_off_on_reopen(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"complete-1")
    spool.append(b"complete-2")
    spool.close()
    segment = sorted(tmp_path.glob("seg-*.log"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"\x00\x00\x00\x40\x12\x34")  # a header promising 64 bytes, then power loss
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert len(again) == 2
    again.append(b"complete-3")
    assert drain(again) == [b"complete-1", b"complete-2", b"complete-3"]
    again.close()


def test_full_spool_refuses_and_accepts_again_after_draining(tmp_path):
    spool = Spool(tmp_path, max_bytes=1000)
    spool.append(b"x" * 600)
    with pytest.raises(SpoolFull):
        spool.append(b"y" * 600)
    assert len(spool) == 1
    drain(spool)
    spool.append(b"y" * 600)
    assert drain(spool) == [b"y" * 600]
    spool.close()


def test_one_owner_per_directory_and_free_slots(tmp_path):
    first = Spool(tmp_path / "a", max_bytes=1 << 20)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "a", max_bytes=1 << 20)
    first.close()
    s0 = open_free_spool(tmp_path / "root", 1 << 20)
    s1 = open_free_spool(tmp_path / "root", 1 << 20)
    assert {s0.directory.name, s1.directory.name} == {"slot-0", "slot-1"}
    s0.append(b"left behind")
    s0.close()  # a worker going away: the next one to start takes its slot and its backlog
    s2 = open_free_spool(tmp_path / "root", 1 << 20)
    assert s2.directory.name == "slot-0" and drain(s2) == [b"left behind"]
    s1.close()
    s2.close()


def test_concurrent_appends_are_all_kept(tmp_path):
    spool = Spool(tmp_path, max_bytes=10 << 20, segment_bytes=4096)

    def writer(n):
        for i in range(100):
            spool.append(f"{n}:{i}".encode())

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = drain(spool)
    assert sorted(got) == sorted(f"{n}:{i}".encode() for n in range(4) for i in range(100))
    for n in range(4):  # each writer's own records stay in its order
        mine = [g for g in got if g.startswith(f"{n}:".encode())]
        assert mine == [f"{n}:{i}".encode() for i in range(100)]
    spool.close()


def test_batch_encoding_round_trips_arbitrary_bytes():
    batch = [Message("analytics.events.raw", b"user-\xc3\xa9", b'{"v":1,"x":"\xe2\x82\xac"}',
                     {"hw-event": b"a\xff", "hw-event-id": b"e1"}),
             Message("analytics.events.rejected", None, b"{}", {})]
    assert decode_batch(encode_batch(batch)) == batch


def test_batch_encoding_takes_header_pairs_too():
    """A spool written when headers were lists of pairs, and callers that still pass them, read back as dicts."""
    batch = [Message("analytics.events.raw", b"k", b"v", [("hw-event", b"a"), ("hw-event-id", b"e1")])]
    assert decode_batch(encode_batch(batch)) == [Message("analytics.events.raw", b"k", b"v",
                                                         {"hw-event": b"a", "hw-event-id": b"e1"})]
