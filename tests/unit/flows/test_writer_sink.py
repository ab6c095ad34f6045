"""The BatchWriter → Bytewax adapter: batching, pending rows kept in state while a writer fails, and the bound."""
from __future__ import annotations

from collections import Counter

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from flows.metrics import PIPELINE_LAG, SINK_PENDING
from flows.writer_sink import WriterSink
from sinks.base import BatchWriter, RetryPolicy
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
