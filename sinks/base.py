"""What every sink shares: the row it receives, the batch-writer contract, retries and metrics.

A sink is small: it opens its client in :meth:`BatchWriter.setup` and writes one batch in
:meth:`BatchWriter.write_batch`. Batching happens upstream (the flow hands over one batch per call), and the
flow commits Kafka offsets only after ``write`` returned, so a write must be **idempotent on event_id**: a replay
after a crash rewrites the same rows (deterministic object names for files, ReplacingMergeTree for ClickHouse,
MERGE for Snowflake) and never adds a second copy.

The row: a dict with the columns of :data:`ROW_COLUMNS`. ``timestamp`` and ``received_at`` are aware UTC
datetimes, ``event_date`` a :class:`datetime.date`, ``properties``/``context``/``consent`` JSON text (hashed,
IP-free), ``kafka_partition``/``kafka_offset`` ints. The flow owns the column list (``flows.stages``); it is
repeated here because sinks never import the flow, and a test keeps the two equal.
"""
from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from operator import itemgetter
from typing import Any, Callable, Iterable, Sequence, TypeVar

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)
T = TypeVar("T")

ROW_COLUMNS = (
    "event_id", "event", "event_date", "timestamp", "received_at", "user_id", "anonymous_id", "device_id",
    "pii_salt_id", "pii_salt_id_prev", "country", "region", "city", "latitude", "longitude", "time_zone",
    "ip_truncated", "plan_tier", "browser", "os", "device_class", "properties", "context", "consent",
    "source", "schema_version", "clock_skew_seconds", "kafka_topic", "kafka_partition", "kafka_offset",
)

SINK_ROWS = Counter("analytics_sink_rows", "Rows handed to each sink, by result (written, failed).",
                    ["sink", "result"])
SINK_RETRIES = Counter("analytics_sink_retries", "Retried write attempts per sink.", ["sink"])
SINK_LATENCY = Histogram("analytics_sink_write_seconds", "Time to write one batch, retries included, per sink.",
                         ["sink"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def column_lists(rows: Sequence[dict[str, Any]], names: Iterable[str]) -> dict[str, list[Any]]:
    """The batch turned into columns: ``{name: [value of each row, in order]}``.

    Every writer stores columns, and this turn is the one per-value step they all share, so it runs in C
    (``map`` over ``itemgetter``) rather than as a Python loop per value. Flow rows carry every column; should a
    row miss one, the slower path reads it as None.
    """
    names = list(names)
    try:
        return {name: list(map(itemgetter(name), rows)) for name in names}
    except KeyError:
        return {name: [row.get(name) for row in rows] for name in names}


class SinkError(RuntimeError):
    """A batch could not be written after the sink's own bounded retries."""


class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    :param attempts: tries in all (the first included)
    :param base_delay: delay before the second try, in seconds; doubles each time
    :param max_delay: cap of one delay
    :param sleep: injectable for tests that must not wait
    """

    def __init__(self, attempts: int = 6, base_delay: float = 0.2, max_delay: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts, self.base_delay, self.max_delay, self.sleep = attempts, base_delay, max_delay, sleep

    def delay(self, attempt: int) -> float:
        """Delay after failed try number ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def run(self, fn: Callable[[], T], sink: str, retryable: Callable[[BaseException], bool]) -> T:
        """Call ``fn`` until it succeeds, a non-retryable error occurs, or the attempts run out.

        :raises SinkError: wrapping the last error
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified below
                if not retryable(exc) or attempt == self.attempts:
                    raise SinkError(f"{sink}: batch not written after {attempt} attempt(s): {exc}") from exc
                wait = self.delay(attempt)
                SINK_RETRIES.labels(sink=sink).inc()
                log.warning("%s: write failed (%s: %s); retry %d/%d in %.2fs", sink, type(exc).__name__, exc,
                            attempt, self.attempts - 1, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")


class BatchWriter(ABC):
    """One destination. Subclasses set :attr:`name` and implement :meth:`setup` and :meth:`write_batch`.

    :param retry: the retry policy for :meth:`write`
    """

    name: str = "sink"

    def __init__(self, retry: RetryPolicy | None = None):
        self.retry = retry or RetryPolicy()
        self._ready = False

    @abstractmethod
    def setup(self) -> None:
        """Open clients, create or migrate tables. Called lazily before the first write, and again after a
        failure, so it must be safe to repeat."""

    @abstractmethod
    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write ``rows`` idempotently (same rows again → same stored result). Raise on failure."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying (connection trouble, timeouts). Default: every error."""
        return True

    def close(self) -> None:
        """Release clients. Default: nothing to release."""

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write one batch with retries and metrics.

        :raises SinkError: after the retries are spent; the caller must not commit the batch's offsets
        """
        if not rows:
            return
        started = time.perf_counter()

        def attempt() -> None:
            if not self._ready:
                self.setup()
                self._ready = True
            try:
                self.write_batch(rows)
            except Exception:
                self._ready = False  # reconnect on the next try: the client may be broken
                raise

        try:
            self.retry.run(attempt, self.name, self.retryable)
        except SinkError:
            SINK_ROWS.labels(sink=self.name, result="failed").inc(len(rows))
            raise
        finally:
            SINK_LATENCY.labels(sink=self.name).observe(time.perf_counter() - started)
        SINK_ROWS.labels(sink=self.name, result="written").inc(len(rows))
