"""Any :class:`sinks.base.BatchWriter` as a Bytewax sink, so that one failing destination does not stall the others.

Every sink of the flow hangs off the same stream, and a Bytewax worker runs its steps one after another: a sink
that blocks blocks them all. :class:`WriterSink` therefore does not block on a failing writer at first:

- rows accumulate per output partition and are written in batches of up to ``batch_rows``: as soon as that many
  are pending, and at the end of every epoch (``snapshot``), which is the time bound;
- when the writer fails (after its own retries), the rows stay **pending** in memory and in the partition's
  state: ``snapshot`` returns them, so Bytewax stores them with the epoch and hands them back on resume.
  The source offsets of that epoch may be committed, since the rows now live in the recovery store;
- while the writer fails, it is probed with a single attempt (its retry policy bypassed) at most once per
  backoff interval (doubling up to ``max_backoff``), so the other sinks keep flowing. The runtime calls a
  partition only in epochs that bring it rows, so a timer makes the probe when none arrive (otherwise the rows of
  an outage would wait for the next event);
- a write runs on the sink's own thread and the worker waits for it at most ``call_timeout`` seconds: a
  destination that hangs (a stalled endpoint, a client retrying inside its library) counts as failing after that,
  instead of holding the worker for as long as the client library's own timeouts and retries add up to. The
  abandoned call carries on in the background and may still succeed; its rows stay pending and are written again
  later, which the idempotent writers absorb. While it runs, further writes of that sink fail at once;
- only when more than ``max_pending`` rows are pending does the partition block, retrying in place until the
  writer takes them: that is the bound on memory and on recovery-state size, and it turns a long outage into
  backpressure on the whole flow instead of lost events.

Delivery: at-least-once into the writer (a replayed epoch writes its rows again); the writers are idempotent on
``event_id``, so each event is stored once. The output partitions (``parts``) are the unit of parallelism; the
flow keys rows by Kafka partition, so a Kafka partition always goes to the same output partition (the lake writer
relies on that). One writer per sink per process, shared by its partitions under a lock (embedded engines such as
chdb allow one client per process).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as CallTimeout
from typing import Callable

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows.metrics import PIPELINE_LAG, SINK_PENDING
from flows.outputs import DEFAULT_SINK_PARTS, report_written
from sinks.base import BatchWriter, RetryPolicy, SinkError

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 5_000
DEFAULT_MAX_PENDING = 100_000
DEFAULT_CALL_TIMEOUT = 5.0


class _SharedWriter:
    """One writer for every partition of a sink in this process. Calls are serialised (workers are threads) and
    run on the sink's own thread, waited for at most ``call_timeout`` seconds each."""

    def __init__(self, name: str, make: Callable[[], BatchWriter], call_timeout: float):
        self._name = name
        self._make = make
        self._call_timeout = call_timeout
        self._writer: BatchWriter | None = None
        self._lock = threading.Lock()
        self._single_attempt = RetryPolicy(attempts=1)
        self._thread: ThreadPoolExecutor | None = None
        self._running: Future | None = None

    def write(self, rows: list[dict], probe: bool) -> None:
        """Write ``rows`` (``probe``: one attempt only).

        :raises SinkError: when the writer failed, is still busy with an earlier call, or did not finish in time
        """
        with self._lock:
            if self._running is not None and not self._running.done():
                raise SinkError(f"sink {self._name}: an earlier write is still running (over {self._call_timeout:g}s)")
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{self._name}")
            self._running = self._thread.submit(self._call, rows, probe)
            try:
                self._running.result(timeout=self._call_timeout)
            except CallTimeout:
                raise SinkError(f"sink {self._name}: a write of {len(rows)} row(s) took over {self._call_timeout:g}s; "
                                f"it carries on in the background, and its rows stay pending") from None

    def _call(self, rows: list[dict], probe: bool) -> None:
        if self._writer is None:
            self._writer = self._make()
        writer = self._writer
        if not probe:
            writer.write(rows)
            return
        policy, writer.retry = writer.retry, self._single_attempt
        try:
            writer.write(rows)
        finally:
            writer.retry = policy

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.shutdown(wait=True)  # a call still running finishes first: the writer is not shared
                self._thread = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None


class _WriterPartition(StatefulSinkPartition[dict, list]):
    def __init__(self, name: str, writer: _SharedWriter, pending: list[dict], batch_rows: int, max_pending: int,
                 backoff: RetryPolicy, clock: Callable[[], float], sleep: Callable[[float], None],
                 close_timeout: float = 60.0, retry_timer: bool = True):
        self._name = name
        # The runtime calls a partition only in epochs that bring it rows: once traffic stops, rows that a failing
        # writer left pending would wait for the next event. A timer retries them when their backoff is over. The
        # worker and the timer take turns through this lock.
        self._lock = threading.RLock()
        self._retry_timer = retry_timer
        self._timer: threading.Timer | None = None
        self._closed = False
        self._close_timeout = close_timeout
        self._writer = writer
        self._pending: list[dict] = []
        self._batch_rows = batch_rows
        self._max_pending = max_pending
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._failures = 0
        self._next_try = 0.0
        self._lag = PIPELINE_LAG.labels(sink=name)
        self._gauge = SINK_PENDING.labels(sink=name)
        self._add(list(pending))  # rows a previous run could not write, restored from recovery

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def failing(self) -> bool:
        return self._failures > 0

    def write_batch(self, items: list[dict]) -> None:
        with self._lock:
            self._add(items)
            if len(self._pending) >= self._batch_rows:
                self.flush(full_only=True)  # the remainder waits for more rows or for the epoch's end
            while len(self._pending) > self._max_pending:
                # Over the bound: block here (and with it the worker) until the destination takes the rows.
                self._sleep(max(0.0, self._next_try - self._clock()))
                self.flush(force=True)

    def snapshot(self) -> list[dict]:
        # The end of an epoch: write what is pending (the time bound); whatever the writer refused is stored in the
        # epoch's snapshot, so committing the epoch's source offsets loses nothing.
        with self._lock:
            self.flush()
            return list(self._pending)

    def close(self) -> None:
        # A clean stop: the rows cannot wait for a later batch. Retry in place, then fail loudly (the epoch holding
        # them is then not committed, and a restart replays or restores them).
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        deadline = self._clock() + self._close_timeout
        while not self.flush(force=True):
            if self._clock() >= deadline:
                raise SinkError(f"sink {self._name}: {len(self._pending)} row(s) still unwritten at shutdown")
            self._sleep(max(0.0, min(self._next_try, deadline) - self._clock()))
        self._writer.close()

    def flush(self, force: bool = False, full_only: bool = False) -> bool:
        """Write the pending rows, ``batch_rows`` at a time (``full_only``: only full batches). While the writer is
        failing, only one probe per backoff interval is made (unless ``force``). Returns whether nothing is left
        pending."""
        with self._lock:
            return self._flush(force, full_only)

    def _flush(self, force: bool, full_only: bool) -> bool:
        if self._failing_and_waiting() and not force:
            return not self._pending
        while self._pending and not (full_only and len(self._pending) < self._batch_rows):
            chunk = self._pending[:self._batch_rows]
            try:
                self._writer.write(chunk, probe=self.failing)
            except SinkError as exc:
                self._failures += 1
                delay = max(self._backoff.base_delay / 4, self._backoff.delay(self._failures))
                self._next_try = self._clock() + delay
                log.warning("sink %s: %d row(s) pending after a failed write (%s); next attempt in %.1fs",
                            self._name, len(self._pending), exc, delay)
                self._schedule_retry(delay)
                return False
            self._add(chunk, remove=True)
            if self._failures:
                log.info("sink %s: writing again after %d failed attempt(s)", self._name, self._failures)
            self._failures = 0
            report_written(self._lag, chunk)
        return not self._pending

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_timer and not self._closed and self._timer is None:
            self._timer = threading.Timer(delay, self._retry)
            self._timer.daemon = True
            self._timer.start()

    def _retry(self) -> None:
        with self._lock:
            self._timer = None
            if not self._closed and self._pending:
                self._flush(force=False, full_only=False)

    def _failing_and_waiting(self) -> bool:
        return self.failing and self._clock() < self._next_try

    def _add(self, rows: list[dict], remove: bool = False) -> None:
        if remove:
            del self._pending[:len(rows)]
            self._gauge.dec(len(rows))
        else:
            self._pending.extend(rows)
            self._gauge.inc(len(rows))


class WriterSink(FixedPartitionedSink[dict, list]):
    """Rows of a stream keyed by Kafka partition into a :class:`~sinks.base.BatchWriter`, with a bounded buffer
    for the time the destination fails (see the module docstring).

    :param name: the ``sink`` label of the lag and pending-rows metrics
    :param make_writer: builds the writer; called lazily, once per process, on a worker thread
    :param parts: output partitions
    :param batch_rows: most rows per write, and the count that triggers a write before the epoch ends
    :param max_pending: rows held per partition while the writer fails before the partition blocks
    :param backoff: delays between probes of a failing writer
    :param call_timeout: longest the worker waits for one write, retries included, before counting it as failed
    :param retry_timer: retry the rows of a failing writer when their backoff is over even if no new rows arrive
        (a timer on real time; off when ``clock`` is injected, as tests do)
    """

    def __init__(self, name: str, make_writer: Callable[[], BatchWriter], parts: int = DEFAULT_SINK_PARTS,
                 batch_rows: int = DEFAULT_BATCH_ROWS, max_pending: int = DEFAULT_MAX_PENDING,
                 backoff: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 retry_timer: bool = True):
        if batch_rows < 1 or max_pending < batch_rows:
            raise ValueError("need 1 <= batch_rows <= max_pending")
        if call_timeout <= 0:
            raise ValueError("call_timeout must be positive")
        self.name = name
        self.parts = parts
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self.backoff = backoff or RetryPolicy(attempts=1, base_delay=1.0, max_delay=30.0)
        self._clock, self._sleep = clock, sleep
        self._writer = _SharedWriter(name, make_writer, call_timeout)
        self.retry_timer = retry_timer and clock is time.monotonic

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: list | None) -> _WriterPartition:
        return _WriterPartition(self.name, self._writer, resume_state or [], self.batch_rows, self.max_pending,
                                self.backoff, self._clock, self._sleep, retry_timer=self.retry_timer)
