"""Any :class:`sinks.base.BatchWriter` as a Bytewax sink, so that one slow or failing destination does not hold the
others back.

Every sink of the flow hangs off the same stream, and a Bytewax worker runs its steps one after another: a sink
that blocks blocks them all, and at each epoch's end the sinks' write times would add up. :class:`WriterSink`
therefore writes in the background and waits for a write only briefly:

- rows accumulate per output partition and are written in batches of up to ``batch_rows``: as soon as that many
  are pending, and at the end of every epoch (``snapshot``), which is the time bound;
- a write runs on the sink's own thread. The worker waits for it at most ``settle_timeout`` seconds, and only when
  the sink has been quick and its thread is free: a write done by then leaves nothing behind. Rows whose write is
  still running are **pending** until it confirms them: ``snapshot`` returns them, so Bytewax stores them with the
  epoch and a restart writes them again. When a write completes, the sink's thread removes its rows and goes
  straight on with the rows that became due meanwhile. A partition has one write at a time, so a Kafka
  partition's rows reach the writer in offset order; the partitions that wait for the thread share its next
  call (one insert, one MERGE, one Parquet put for all of them instead of one per partition in turn);
- when the writer fails (after its own retries), its rows stay pending, in memory and in the partition's state.
  The source offsets of that epoch may be committed, since the rows now live in the recovery store;
- while the writer fails, it is probed with a single attempt (its retry policy bypassed) at most once per
  backoff interval (doubling up to ``max_backoff``), so the other sinks keep flowing. The runtime calls a
  partition only in epochs that bring it rows, so a timer makes the probe when none arrive (otherwise the rows of
  an outage would wait for the next event);
- a write still running after ``call_timeout`` seconds (a stalled endpoint, a client retrying inside its library)
  counts as a failure; it carries on in the background, and whatever it ends with settles its rows;
- only when more than ``max_pending`` rows are pending does the partition block, until the writer takes them:
  that is the bound on memory and on recovery-state size, and it turns a long outage into backpressure on the
  whole flow instead of lost events.

Delivery: at-least-once into the writer (a replayed epoch, or a write that was still running when its epoch was
stored, writes its rows again); the writers are idempotent on ``event_id``, so each event is stored once. The output
partitions (``parts``) are the unit of parallelism; the flow keys rows by Kafka partition, so a Kafka partition
always goes to the same output partition (the lake writer relies on that). One writer per sink per process, shared
by its partitions and called only from the sink's one thread (embedded engines such as chdb allow one client per
process).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from flows.metrics import PIPELINE_LAG, SINK_PENDING
from flows.outputs import DEFAULT_SINK_PARTS, report_written
from sinks.base import BatchWriter, RetryPolicy, SinkError

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 5_000
DEFAULT_MAX_PENDING = 100_000
DEFAULT_CALL_TIMEOUT = 5.0
DEFAULT_SETTLE_TIMEOUT = 0.2


class _SharedWriter:
    """One writer for every partition of a sink in this process, called only from the sink's own thread.

    Partitions ask for a write with :meth:`request`; the thread takes the rows of every partition that asked by
    then (the first pending rows of each, read when the write starts, up to about ``batch_rows`` in all) and writes
    them in one call. The partitions of a sink share one destination, so one call for all of them costs what one
    of them would, instead of a call per partition in turn. A partition has one write at a time, so its rows reach
    the writer in order. Built lazily on the sink's thread; closed when the last partition using it closes."""

    def __init__(self, name: str, make: Callable[[], BatchWriter], batch_rows: int):
        self._name = name
        self._make = make
        self._batch_rows = batch_rows
        self._writer: BatchWriter | None = None
        self._lock = threading.Lock()
        self._single_attempt = RetryPolicy(attempts=1)
        self._thread: ThreadPoolExecutor | None = None
        self._users = 0
        self._asking: list[_WriterPartition] = []  # partitions waiting for the next write, in the order they asked
        self._draining = False  # the thread is writing, or about to
        self.last_seconds: float | None = None  # how long the latest write took, failed or not

    def attach(self) -> None:
        with self._lock:
            self._users += 1

    def request(self, part: _WriterPartition) -> bool:
        """Queue a write of ``part``'s first pending rows. Returns whether the thread was idle (the write starts
        now rather than after the one running)."""
        with self._lock:
            self._asking.append(part)
            if self._draining:
                return False
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sink-{self._name}")
            self._thread.submit(self._drain)
            self._draining = True
            return True

    def _drain(self) -> None:
        """On the sink's thread: write for the partitions that asked, until none does."""
        while True:
            with self._lock:
                if not self._asking:
                    self._draining = False
                    return
                parts, self._asking = self._asking, []
            taken: list[tuple[_WriterPartition, _Write, list[dict]]] = []
            total = 0
            for i, part in enumerate(parts):
                if total >= self._batch_rows:  # enough for one call: the others go first next time
                    with self._lock:
                        self._asking[:0] = parts[i:]
                    break
                write, rows = part.take()
                taken.append((part, write, rows))
                total += len(rows)
            rows = taken[0][2] if len(taken) == 1 else [row for _, _, chunk in taken for row in chunk]
            error: BaseException | None = None
            try:
                self.write(rows, probe=any(write.probe for _, write, _ in taken))
            except BaseException as exc:  # noqa: BLE001 - each partition settles it; a non-SinkError is raised there
                error = exc
            for part, write, chunk in taken:
                part.settle(write, chunk, error)

    def write(self, rows: list[dict], probe: bool) -> None:
        """Write ``rows`` (``probe``: one attempt only); called on the sink's thread.

        :raises SinkError: when the writer failed after its retries
        """
        if self._writer is None:
            self._writer = self._make()
        writer = self._writer
        started = time.monotonic()
        policy = writer.retry
        if probe:
            writer.retry = self._single_attempt
        try:
            writer.write(rows)
        finally:
            writer.retry = policy
            self.last_seconds = time.monotonic() - started

    def detach(self) -> None:
        """A partition is done with the writer; the last one shuts the thread down and closes the writer."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users:
                return
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True)  # a write still running finishes first: the writer is not shared
        with self._lock:
            if self._writer is not None and self._thread is None:
                self._writer.close()
                self._writer = None


class _Write:
    """One write of a partition's first pending rows, from the request until it settles."""

    __slots__ = ("size", "probe", "started", "overdue")

    def __init__(self, probe: bool):
        self.size = 0  # rows, known when the sink's thread takes them
        self.probe = probe
        self.started: float | None = None  # time.monotonic() when the sink's thread took it up
        self.overdue = False  # already counted as failed for running over call_timeout


class _WriterPartition(StatefulSinkPartition[dict, list]):
    def __init__(self, name: str, writer: _SharedWriter, pending: list[dict], batch_rows: int, max_pending: int,
                 backoff: RetryPolicy, clock: Callable[[], float], sleep: Callable[[float], None],
                 close_timeout: float = 60.0, retry_timer: bool = True, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 settle_timeout: float = DEFAULT_SETTLE_TIMEOUT):
        self._name = name
        # The worker, the sink's thread (settling a write) and the retry timer take turns through this lock; the
        # worker waits for a write to settle on the condition, which lets the sink's thread in.
        self._lock = threading.RLock()
        self._settled = threading.Condition(self._lock)
        self._retry_timer = retry_timer
        self._timer: threading.Timer | None = None
        self._closed = False
        self._close_timeout = close_timeout
        self._call_timeout = call_timeout
        self._settle_timeout = settle_timeout
        self._writer = writer
        self._pending: list[dict] = []
        # The first rows of _pending: those an epoch's end has already seen (the time bound is over for them) and,
        # among them or beyond, those of the write in flight.
        self._due = 0
        self._in_flight: _Write | None = None
        self._worth_waiting = False  # whether the write just started is likely to settle within settle_timeout
        self._crashed: BaseException | None = None  # a writer error that is not a SinkError, raised on the worker
        self._batch_rows = batch_rows
        self._max_pending = max_pending
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._failures = 0
        self._next_try = 0.0
        self._lag = PIPELINE_LAG.labels(sink=name)
        self._gauge = SINK_PENDING.labels(sink=name)
        self._add(list(pending))  # rows a previous run could not confirm, restored from recovery
        self._due = len(self._pending)
        writer.attach()

    @property
    def pending(self) -> int:
        """Rows not yet confirmed by the writer, those of a write in flight included."""
        return len(self._pending)

    @property
    def failing(self) -> bool:
        return self._failures > 0

    def write_batch(self, items: list[dict]) -> None:
        with self._lock:
            self._check()
            self._add(items)
            if self._start() and self._worth_waiting:  # a full batch; the rest waits for more rows or the epoch's end
                self._wait_settled(self._settle_timeout)
            while len(self._pending) > self._max_pending:
                # Over the bound: block here (and with it the worker) until the destination takes the rows.
                self._block_once()
                self._check()

    def snapshot(self) -> list[dict]:
        # The end of an epoch: every pending row is due. Whatever is not confirmed after the short wait (a write
        # still running, or refused) is stored in the epoch's snapshot, so committing the epoch's source offsets
        # loses nothing.
        with self._lock:
            self._check()
            self._due = len(self._pending)
            if self._start() and self._worth_waiting:
                self._wait_settled(self._settle_timeout)
            self._check()
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
                if self._in_flight is None:
                    self._sleep(max(0.0, min(self._next_try, deadline) - self._clock()))
        self._writer.detach()

    def flush(self, force: bool = False) -> bool:
        """Write every pending row, ``batch_rows`` at a time, and wait for the writes up to ``call_timeout``. While
        the writer is failing, only one probe per backoff interval is made (unless ``force``). Returns whether
        nothing is left pending.

        :raises BaseException: an error of the writer other than :class:`~sinks.base.SinkError`
        """
        with self._lock:
            self._check()
            self._due = len(self._pending)
            self._start(force)
            self._wait_settled(self._call_timeout)
            self._check()
            return not self._pending

    def _block_once(self) -> None:
        """One round of waiting over the bound: for the write in flight, or for the backoff and then a write of
        everything pending."""
        if self._in_flight is None:
            if self.failing:
                self._sleep(max(0.0, self._next_try - self._clock()))
            self._due = len(self._pending)
            self._start(force=True)
        self._wait_settled(self._call_timeout)

    def _start(self, force: bool = False) -> bool:
        """Ask the sink's thread for a write of the first pending rows, when none is in flight and a full batch or
        due rows are waiting (and, unless ``force``, a failing writer's backoff is over). Returns whether it asked."""
        if self._in_flight is not None or not self._pending:
            return False
        if not self._due and len(self._pending) < self._batch_rows:
            return False
        if self._failing_and_waiting() and not force:
            return False
        self._in_flight = _Write(probe=self.failing)
        idle = self._writer.request(self)
        # Waiting only pays when the write starts now and the sink has been quick: the partitions of a sink share
        # its one thread, and a slow sink's rows are better kept in the state than waited for.
        last = self._writer.last_seconds
        self._worth_waiting = idle and (last is None or last <= self._settle_timeout)
        return True

    def take(self) -> tuple[_Write, list[dict]]:
        """On the sink's thread, as the requested write starts: its rows, the first pending ones (those that came
        while it waited included)."""
        with self._lock:
            write = self._in_flight
            if write is None:
                raise RuntimeError(f"sink {self._name}: the sink's thread took a write that was never requested")
            write.size = min(len(self._pending), self._batch_rows)
            write.started = time.monotonic()
            return write, self._pending[:write.size]

    def settle(self, write: _Write, rows: list[dict], error: BaseException | None) -> None:
        """On the sink's thread, after the write: confirm its rows, or keep them pending after a failure."""
        with self._lock:
            self._settle(write, rows, error)
            self._settled.notify_all()

    def _settle(self, write: _Write, rows: list[dict], error: BaseException | None) -> None:
        self._in_flight = None
        if error is None:
            self._add(rows, remove=True)
            self._due = max(0, self._due - write.size)
            if self._failures:
                log.info("sink %s: writing again after %d failed attempt(s)", self._name, self._failures)
            self._failures = 0
            report_written(self._lag, rows)
            self._start()  # rows that became due while this write ran go next
            return
        if not isinstance(error, SinkError):
            self._crashed = error
            return
        if not write.overdue:
            self._failures += 1
        delay = self._backoff_delay()
        log.warning("sink %s: %d row(s) pending after a failed write (%s); next attempt in %.1fs",
                    self._name, len(self._pending), error, delay)
        self._schedule_retry(delay)

    def _check(self) -> None:
        """On the worker: raise what the writer raised unexpectedly; count a write running past ``call_timeout``
        as failed (it carries on, and its outcome still settles its rows)."""
        if self._crashed is not None:
            crashed, self._crashed = self._crashed, None
            raise crashed
        write = self._in_flight
        if write is None or write.overdue or write.started is None:
            return
        running = time.monotonic() - write.started
        if running > self._call_timeout:
            write.overdue = True
            self._failures += 1
            self._backoff_delay()
            log.warning("sink %s: a write of %d row(s) has been running for %.1fs (over %gs); it carries on in the "
                        "background and its rows stay pending (%d in all)", self._name, write.size, running,
                        self._call_timeout, len(self._pending))

    def _backoff_delay(self) -> float:
        delay = max(self._backoff.base_delay / 4, self._backoff.delay(self._failures))
        self._next_try = self._clock() + delay
        return delay

    def _wait_settled(self, timeout: float) -> None:
        """Wait (releasing the lock) up to ``timeout`` seconds until no write is in flight: the one submitted and the
        ones its completion starts."""
        if self._in_flight is not None:
            self._settled.wait_for(lambda: self._in_flight is None, timeout)

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_timer and not self._closed and self._timer is None:
            self._timer = threading.Timer(delay, self._retry)
            self._timer.daemon = True
            self._timer.start()

    def _retry(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or not self._pending or self._in_flight is not None:
                return
            self._due = len(self._pending)
            if not self._start() and self._failing_and_waiting():
                self._schedule_retry(max(0.01, self._next_try - self._clock()))

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
    """Rows of a stream keyed by Kafka partition into a :class:`~sinks.base.BatchWriter`, written in the
    background, with a bounded buffer for the time the destination is slow or fails (see the module docstring).

    :param name: the ``sink`` label of the lag and pending-rows metrics
    :param make_writer: builds the writer; called lazily, once per process, on the sink's thread
    :param parts: output partitions
    :param batch_rows: most rows per write, and the count that triggers a write before the epoch ends
    :param max_pending: rows held per partition (unconfirmed: in flight or refused) before the partition blocks
    :param backoff: delays between probes of a failing writer
    :param call_timeout: longest one write, retries included, may run before it counts as failed
    :param settle_timeout: longest the worker waits for a write it has just started (at an epoch's end, or for a
        full batch) before going on and keeping the write's rows in the partition's state
    :param retry_timer: retry the rows of a failing writer when their backoff is over even if no new rows arrive
        (a timer on real time; off when ``clock`` is injected, as tests do)
    """

    def __init__(self, name: str, make_writer: Callable[[], BatchWriter], parts: int = DEFAULT_SINK_PARTS,
                 batch_rows: int = DEFAULT_BATCH_ROWS, max_pending: int = DEFAULT_MAX_PENDING,
                 backoff: RetryPolicy | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 retry_timer: bool = True, settle_timeout: float = DEFAULT_SETTLE_TIMEOUT):
        if batch_rows < 1 or max_pending < batch_rows:
            raise ValueError("need 1 <= batch_rows <= max_pending")
        if call_timeout <= 0:
            raise ValueError("call_timeout must be positive")
        if not 0 <= settle_timeout <= call_timeout:
            raise ValueError("need 0 <= settle_timeout <= call_timeout")
        self.name = name
        self.parts = parts
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self.backoff = backoff or RetryPolicy(attempts=1, base_delay=1.0, max_delay=30.0)
        self.call_timeout = call_timeout
        self.settle_timeout = settle_timeout
        self._clock, self._sleep = clock, sleep
        self._writer = _SharedWriter(name, make_writer, batch_rows)
        self.retry_timer = retry_timer and clock is time.monotonic

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: list | None) -> _WriterPartition:
        return _WriterPartition(self.name, self._writer, resume_state or [], self.batch_rows, self.max_pending,
                                self.backoff, self._clock, self._sleep, retry_timer=self.retry_timer,
                                call_timeout=self.call_timeout, settle_timeout=self.settle_timeout)
