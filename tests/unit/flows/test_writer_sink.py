"""The BatchWriter → Bytewax adapter: batching, background writes, pending rows kept in state while a write runs or
fails, and the bound."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from flows.metrics import PIPELINE_LAG, SINK_PENDING
from flows.writer_sink import WriterSink
from sinks.base import BatchWriter, RetryPolicy, SinkError
from tests.lakekit import rows


class FlakyWriter(BatchWriter):
    """Stores batches in a list; raises while ``down`` is set. Counts attempts."""

    name = "flaky"

    def __init__(self, attempts: int = 3):
        super().__init__(RetryPolicy(attempts=attempts, sleep=lambda s: None))
        self.down = False
        self.attempts = 0
        self.batches: list[list[dict]] = []

    def setup(self) -> None:
        pass

    def write_batch(self, batch) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("destination unreachable")
        self.batches.append(list(batch))

    def offsets(self) -> list[int]:
        return [r["kafka_offset"] for b in self.batches for r in b]


class Clock:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def sink(writer, clock, name="t", **kw):
    kw.setdefault("backoff", RetryPolicy(attempts=1, base_delay=1.0, max_delay=8.0))
    return WriterSink(name, lambda: writer, parts=2, clock=clock, sleep=clock.sleep, **kw)


def test_rows_are_written_in_bounded_batches_and_at_each_epoch_end():
    writer, clock = FlakyWriter(), Clock()
    part = sink(writer, clock, "batched", batch_rows=10, max_pending=50).build_part("s", "0", None)
    part.write_batch(rows(range(0, 7)))
    assert writer.batches == []  # below batch_rows: wait for more or for the epoch's end
    part.write_batch(rows(range(7, 23)))
    assert [len(b) for b in writer.batches] == [10, 10]
    assert part.snapshot() == [] and writer.offsets() == list(range(23))
    assert PIPELINE_LAG.labels(sink="batched")._value.get() > 0
    assert SINK_PENDING.labels(sink="batched")._value.get() == 0


def test_a_failing_writer_keeps_rows_pending_in_state_and_is_probed_with_backoff():
    writer, clock = FlakyWriter(attempts=3), Clock()
    part = sink(writer, clock, "pending", batch_rows=5, max_pending=1000).build_part("s", "0", None)
    writer.down = True
    part.write_batch(rows(range(0, 5)))
    assert writer.attempts == 3  # the first failure uses the writer's own retries ...
    for start in range(5, 100, 5):
        part.write_batch(rows(range(start, start + 5)))  # ... then no write until the backoff has passed
    assert writer.attempts == 3 and part.failing and part.pending == 100
    assert SINK_PENDING.labels(sink="pending")._value.get() == 100
    state = part.snapshot()
    assert [r["kafka_offset"] for r in state] == list(range(100))
    clock.now += 10
    part.write_batch(rows(range(100, 105)))
    assert writer.attempts == 4  # a probe is a single attempt
    writer.down = False
    clock.now += 100
    part.write_batch(rows(range(105, 110)))
    assert not part.failing and part.pending == 0
    assert writer.offsets() == list(range(110)) and max(len(b) for b in writer.batches) == 5
    assert clock.slept == []  # the worker was never blocked: other sinks kept flowing


def test_pending_rows_survive_a_restart_through_the_snapshot():
    writer, clock = FlakyWriter(attempts=1), Clock()
    writer.down = True
    first = sink(writer, clock, batch_rows=4, max_pending=100).build_part("s", "1", None)
    first.write_batch(rows(range(0, 9)))
    state = first.snapshot()
    assert len(state) == 9
    writer.down = False  # the process dies; a new one resumes from the stored state
    second = sink(writer, clock, batch_rows=4, max_pending=100).build_part("s", "1", state)
    assert second.pending == 9
    second.write_batch(rows(range(9, 10)))
    assert second.snapshot() == [] and writer.offsets() == list(range(10))


def test_more_pending_than_the_bound_blocks_until_the_writer_takes_them():
    writer, clock = FlakyWriter(attempts=1), Clock()
    part = sink(writer, clock, batch_rows=10, max_pending=30).build_part("s", "0", None)
    writer.down = True
    part.write_batch(rows(range(0, 30)))
    assert part.pending == 30 and clock.slept == []  # at the bound, not over it: no blocking yet

    real_sleep = clock.sleep

    def outage_ends_after_three_waits(seconds: float) -> None:
        real_sleep(seconds)
        if len(clock.slept) == 3:
            writer.down = False

    clock.sleep = outage_ends_after_three_waits
    part._sleep = outage_ends_after_three_waits
    part.write_batch(rows(range(30, 35)))  # over the bound: retries in place
    assert len(clock.slept) == 3 and all(s > 0 for s in clock.slept)
    assert part.pending == 0 and writer.offsets() == list(range(35))


def test_under_bytewax_every_row_reaches_a_writer_that_fails_now_and_then():
    class Intermittent(FlakyWriter):
        def write_batch(self, batch) -> None:
            self.down = self.attempts % 3 == 1  # every third attempt fails
            super().write_batch(batch)

    writer, clock = Intermittent(attempts=1), Clock()
    data = rows(range(0, 300)) + rows(range(0, 200), partition=1)
    flow = Dataflow("writer_sink_test")
    keyed = op.key_on("by_partition", op.input("in", flow, TestingSource(data, batch_size=17)),
                      lambda r: str(r["kafka_partition"]))
    op.output("out", keyed, sink(writer, clock, batch_rows=25, max_pending=60,
                                 backoff=RetryPolicy(attempts=1, base_delay=0.0001, max_delay=0.0001)))
    run_main(flow)
    seen = Counter((r["kafka_partition"], r["kafka_offset"]) for b in writer.batches for r in b)
    assert len(seen) == 500 and set(seen.values()) == {1}


def test_outputs_name_the_warehouse_sinks(tmp_path):
    from flows.run import parse_outputs
    from tests.flowkit import make_settings

    sinks = parse_outputs(f"lake:{tmp_path / 'lake'}, stdout", make_settings(tmp_path))
    assert set(sinks) == {"lake", "stdout"} and isinstance(sinks["lake"], WriterSink)
    assert set(parse_outputs("all", make_settings(tmp_path))) == {"lake", "clickhouse", "snowflake"}
    writer = sinks["lake"]._writer._make()  # the writer module is imported only now
    assert writer.root == str(tmp_path / "lake")


class GatedWriter(FlakyWriter):
    """A FlakyWriter whose writes wait until ``gate`` is set, on the sink's own thread; records how many writes
    ran at once and which thread made them."""

    name = "gated"

    def __init__(self, attempts: int = 1):
        super().__init__(attempts)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self.threads: set[str] = set()

    def write_batch(self, batch) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.threads.add(threading.current_thread().name)
        self.started.set()
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            super().write_batch(batch)
        finally:
            self.running -= 1


def real_sink(writer, name, **kw):
    kw.setdefault("backoff", RetryPolicy(attempts=1, base_delay=0.4, max_delay=0.4))
    return WriterSink(name, lambda: writer, parts=2, retry_timer=False, **kw)


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_a_slow_write_does_not_hold_the_snapshot_and_its_rows_stay_in_the_state_until_confirmed():
    writer = GatedWriter()
    part = real_sink(writer, "slow", batch_rows=100, max_pending=1000, settle_timeout=1.0).build_part("s", "0", None)
    try:
        part.write_batch(rows(range(0, 10)))
        started = time.monotonic()
        state = part.snapshot()
        assert 1.0 <= time.monotonic() - started < 5.0  # the grace period, not the write's duration
        assert writer.started.is_set() and [r["kafka_offset"] for r in state] == list(range(10))
        assert SINK_PENDING.labels(sink="slow")._value.get() == 10 and not part.failing
        writer.gate.set()
        wait_until(lambda: part.pending == 0)  # the sink's thread confirmed the write: nothing left to store
        assert part.snapshot() == [] and writer.offsets() == list(range(10))
        assert SINK_PENDING.labels(sink="slow")._value.get() == 0
        assert PIPELINE_LAG.labels(sink="slow")._value.get() > 0
        assert len(writer.threads) == 1 and writer.threads != {threading.current_thread().name}
        writer.gate.clear()
        part.write_batch(rows(range(10, 12)))
        started = time.monotonic()
        assert len(part.snapshot()) == 2
        assert time.monotonic() - started < 0.5  # the sink is known to be slow: no wait at all
    finally:
        writer.gate.set()
    part.close()
    assert writer.offsets() == list(range(12))


def test_a_write_that_fails_in_the_background_puts_its_rows_back_and_backs_off():
    writer = GatedWriter(attempts=2)
    part = real_sink(writer, "slow_fail", batch_rows=100, max_pending=1000, settle_timeout=0.05).build_part(
        "s", "0", None)
    writer.down = True
    part.write_batch(rows(range(0, 10)))
    assert len(part.snapshot()) == 10 and not part.failing  # still running: not a failure yet
    writer.gate.set()
    wait_until(lambda: part.failing)
    assert writer.attempts == 2  # the writer's own retries, then the failure is the sink's
    part.write_batch(rows(range(10, 20)))
    assert [r["kafka_offset"] for r in part.snapshot()] == list(range(20))
    assert writer.attempts == 2  # inside the backoff: no new write
    time.sleep(0.45)
    writer.down = False
    part.snapshot()  # a probe (one attempt) after the backoff writes everything
    wait_until(lambda: part.pending == 0)
    assert writer.attempts == 3 and not part.failing and writer.offsets() == list(range(20))
    part.close()


def test_rows_arriving_during_a_write_go_next_in_order_partitions_share_calls_and_slowness_is_not_failure():
    writer = GatedWriter()
    sink_ = real_sink(writer, "ordered", batch_rows=7, max_pending=1000, settle_timeout=0.02)
    parts = [sink_.build_part("s", str(i), None) for i in range(2)]
    for start in range(0, 60, 5):
        for i, part in enumerate(parts):
            part.write_batch(rows(range(start, start + 5), partition=i))
            part.snapshot()
    assert writer.batches == [] and not any(p.failing for p in parts)  # every write still waits for the gate
    assert parts[0].pending == 60 and parts[1].pending == 60
    writer.gate.set()
    wait_until(lambda: parts[0].pending == parts[1].pending == 0)
    assert parts[0].snapshot() == parts[1].snapshot() == []
    assert writer.most_at_once == 1  # one write at a time per sink
    per_partition = Counter((n, r["kafka_partition"]) for n, b in enumerate(writer.batches) for r in b)
    assert max(per_partition.values()) == 7  # at most batch_rows of a partition per write ...
    assert any(len({r["kafka_partition"] for r in b}) == 2 for b in writer.batches)  # ... both sharing a call
    for i in range(2):
        offsets = [r["kafka_offset"] for b in writer.batches for r in b if r["kafka_partition"] == i]
        assert offsets == list(range(60))  # each partition's rows reach the writer once, in offset order
    assert not any(p.failing for p in parts)
    for part in parts:
        part.close()


def test_a_write_over_call_timeout_counts_as_failed_and_its_late_success_still_confirms_it():
    writer = GatedWriter()
    part = real_sink(writer, "hung", batch_rows=100, max_pending=1000, call_timeout=0.2,
                     settle_timeout=0.01).build_part("s", "0", None)
    part.write_batch(rows(range(0, 10)))
    part.snapshot()
    time.sleep(0.6)
    part.write_batch(rows(range(10, 15)))
    assert part.failing and part.pending == 15
    writer.gate.set()
    wait_until(lambda: not part.failing)
    part.snapshot()  # the rows that came during the hung write
    wait_until(lambda: part.pending == 0)
    assert writer.offsets() == list(range(15))
    part.close()


def test_an_unexpected_writer_error_is_raised_on_the_worker():
    class Broken(FlakyWriter):
        def write(self, batch) -> None:
            raise TypeError("not a row")

    part = real_sink(Broken(), "broken", batch_rows=100, max_pending=1000).build_part("s", "0", None)
    part.write_batch(rows(range(0, 3)))
    with pytest.raises(TypeError, match="not a row"):
        part.snapshot()
    assert part.pending == 3


def test_close_waits_for_a_running_write_and_raises_when_rows_stay_unwritten():
    writer = GatedWriter()
    part = real_sink(writer, "closing", batch_rows=100, max_pending=1000, settle_timeout=0.01).build_part(
        "s", "0", None)
    part.write_batch(rows(range(0, 10)))
    part.snapshot()
    threading.Timer(0.2, writer.gate.set).start()
    part.close()
    assert part.pending == 0 and writer.offsets() == list(range(10))

    down = FlakyWriter(attempts=1)
    down.down = True
    stuck = real_sink(down, "closing_down", batch_rows=100, max_pending=1000).build_part("s", "0", None)
    stuck._close_timeout = 0.5
    stuck.write_batch(rows(range(0, 4)))
    with pytest.raises(SinkError, match="4 row"):
        stuck.close()
