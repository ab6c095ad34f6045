"""The lake writer against a real S3 API (moto server) over s3fs: replays store each event once, and an S3 outage
(a hung server) holds rows in the flow's pending buffer until S3 answers again."""
from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections import Counter

import pytest

from flows.writer_sink import WriterSink
from sinks.base import RetryPolicy
from sinks.s3_parquet import LAKE_SCHEMA, ParquetLakeWriter
from tests.lakekit import rows

pytestmark = pytest.mark.integration


def _lake(settings, prefix: str, **kw) -> ParquetLakeWriter:
    bucket = settings.s3_url.removeprefix("s3://").split("/")[0]
    return ParquetLakeWriter.from_settings(settings.model_copy(update={"s3_url": f"s3://{bucket}/{prefix}"}), **kw)


def test_write_replay_and_read_back_exactly_once_on_s3(stack_settings):
    prefix = f"it-lake-{uuid.uuid4().hex[:10]}"
    lake = _lake(stack_settings, prefix, rows_per_file=250)
    events = rows(range(0, 1000)) + rows(range(0, 400), partition=2)
    for lo in range(0, 700, 100):  # first run
        lake.write(events[lo:lo + 100])
    for lo in range(430, 1400, 170):  # replay from an older offset with other batch edges
        lake.write(events[lo:lo + 170])
    lake.write(events[1000:1100])  # partition 2 again
    lake.close()

    reader = _lake(stack_settings, prefix)  # a new client: nothing cached
    table = reader.read_table()
    assert table.schema == LAKE_SCHEMA
    ids = Counter(table.column("event_id").to_pylist())
    assert len(ids) == 1400 and set(ids.values()) == {1}
    names = reader.filesystem.find(f"{reader._base}/events")
    assert all("/event_date=2026-12-03/part-raw-" in n for n in names)
    assert len({n.rsplit("-", 1)[0] for n in names}) == 4 + 2  # windows of 250 offsets; no file spans two


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def own_moto(tmp_path, devstack):
    """A moto server of this test's own (moto keeps objects in memory, so the shared one must never be paused)."""
    from headwater.devstack import Devstack
    from headwater.settings import load_settings

    stack = Devstack(root=tmp_path / "s", ports={"s3": _free_port()})
    started = stack.up(["s3"])
    try:
        yield stack, load_settings({k: v for k, v in stack.env().items() if k.startswith("HEADWATER_S3")})
    finally:
        pid = stack.pid_of("s3")
        if pid:
            os.kill(pid, signal.SIGCONT)
        stack.down(started)


def test_rows_survive_an_s3_outage_without_blocking_the_flow(own_moto):
    """SIGSTOP freezes moto: connections hang, as with an unreachable or stalled endpoint (killing it would lose
    its in-memory objects, which is not what an S3 outage does). The sink keeps accepting rows while it is below
    its bound, and writes them all, once, after SIGCONT."""
    stack, settings = own_moto
    pid = stack.pid_of("s3")
    lake = _lake(settings, "outage", rows_per_file=1000, timeout_seconds=0.5, request_timeout=1.5,
                 retry=RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1))
    sink = WriterSink("lake_outage", lambda: lake, parts=1, batch_rows=200, max_pending=5000,
                      backoff=RetryPolicy(attempts=1, base_delay=0.5, max_delay=1.0))
    part = sink.build_part("out", "0", None)
    events = rows(range(0, 3000))
    slowest, pending_during_outage = 0.0, 0
    try:
        for i in range(30):
            if i == 8:
                os.kill(pid, signal.SIGSTOP)
            if i == 22:
                os.kill(pid, signal.SIGCONT)
            started = time.monotonic()
            part.write_batch(events[i * 100:(i + 1) * 100])
            slowest = max(slowest, time.monotonic() - started)
            if 8 <= i < 22:
                pending_during_outage = max(pending_during_outage, part.pending)
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert pending_during_outage > 1000, "the outage did not hold rows back"
    deadline = time.monotonic() + 30
    while part.snapshot() and time.monotonic() < deadline:  # epoch ends write what is pending
        time.sleep(0.2)
    part.close()
    assert part.pending == 0
    ids = Counter(_lake(settings, "outage").read_table(columns=["event_id"]).column("event_id").to_pylist())
    assert len(ids) == 3000 and set(ids.values()) == {1}
    # Each call stalls at most for one failed write (the writer's two attempts, each a few request timeouts).
    assert slowest < 10, f"a write_batch call blocked for {slowest:.1f}s"
