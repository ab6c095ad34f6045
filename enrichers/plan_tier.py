"""``plan_tier`` of each event's user, from the OLTP accounts table, looked up in batches behind a TTL cache.

Table (PostgreSQL in production, an embedded SQLite file otherwise)::

    accounts(user_id text primary key, plan_tier text, updated_at timestamptz)

:meth:`PlanTierLookup.lookup_many` is called once per batch of events. Cached answers (including "this user is
unknown") are served for ``ttl_seconds``; all misses of the batch go to the database in **one** query of at most
``max_query_ids`` ids; ids beyond that cap get ``"unknown"`` for this batch (counted, not cached) so that a cold
cache cannot stall the flow. A database error gives ``"unknown"`` for the batch, is counted in
``analytics_enrich_errors_total{enricher="plan_tier",reason="db_error"}``, and the database is left alone for
``retry_after_seconds`` before the next try. Nothing here raises into the flow.

Events without ``user_id`` (anonymous traffic) get ``"anonymous"``; users not in the table get ``"unknown"``.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from enrichers.metrics import ENRICH_ERRORS, CacheCounter

UNKNOWN = "unknown"
ANONYMOUS = "anonymous"
DEFAULT_TABLE = "accounts"
SQLITE_FILE = "accounts.sqlite3"

log = logging.getLogger(__name__)


class AccountStore(Protocol):
    """Where plan tiers live. ``fetch`` may raise; :class:`PlanTierLookup` contains the damage."""

    def fetch(self, user_ids: list[str]) -> dict[str, str | None]: ...

    def close(self) -> None: ...


class _PerThreadConnection:
    """One connection per worker thread (DB-API connections are not shared between threads), reopened after
    an error."""

    def __init__(self, connect: Callable[[], Any]):
        self._connect = connect
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def discard(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            try:
                conn.close()
            except Exception:
                pass

    def close_all(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass


class SqliteAccountStore:
    """The embedded default: a SQLite file (created with an empty ``accounts`` table when missing).

    :param path: the database file
    :param table: table name
    """

    def __init__(self, path: str | Path, table: str = DEFAULT_TABLE):
        self.path = Path(path)
        self.table = table
        self._conns = _PerThreadConnection(self._open)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=2.0, check_same_thread=False)
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" '
                     f"(user_id TEXT PRIMARY KEY, plan_tier TEXT, updated_at TEXT)")
        conn.commit()
        return conn

    def fetch(self, user_ids: list[str]) -> dict[str, str | None]:
        return {row[0]: row[1] for row in self._select(user_ids, "plan_tier")}

    def fetch_accounts(self, user_ids: list[str]) -> dict[str, tuple[str | None, Any]]:
        """``{user_id: (plan_tier, updated_at)}`` for the ids in the table (for the data-quality checks)."""
        return {row[0]: (row[1], row[2]) for row in self._select(user_ids, "plan_tier, updated_at")}

    def _select(self, user_ids: list[str], columns: str) -> list[tuple]:
        if not user_ids:
            return []
        marks = ",".join("?" * len(user_ids))
        try:
            return self._conns.get().execute(
                f'SELECT user_id, {columns} FROM "{self.table}" WHERE user_id IN ({marks})', user_ids).fetchall()
        except Exception:
            self._conns.discard()
            raise

    def close(self) -> None:
        self._conns.close_all()


class PostgresAccountStore:
    """Accounts in PostgreSQL (psycopg 3); short connect and statement timeouts so a slow database costs one
    batch a couple of seconds at most.

    :param url: ``postgresql://…``
    :param table: table name, optionally ``schema.table``
    """

    def __init__(self, url: str, table: str = DEFAULT_TABLE, statement_timeout_ms: int = 2000):
        # Imported here, when the flow is built, rather than at the first look-up: psycopg takes about a tenth of a
        # second to import, which would otherwise stall the first batch of events.
        import psycopg
        from psycopg import sql

        self._psycopg = psycopg
        self._url = url
        self.table = table
        self._timeout_ms = statement_timeout_ms
        self._conns = _PerThreadConnection(self._open)
        name = sql.Identifier(*table.split("."))
        self._queries = {columns: sql.SQL("SELECT user_id, {} FROM {} WHERE user_id = ANY(%s)").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), name)
            for columns in (("plan_tier",), ("plan_tier", "updated_at"))}

    def _open(self) -> Any:
        return self._psycopg.connect(self._url, autocommit=True, connect_timeout=3,
                                     options=f"-c statement_timeout={self._timeout_ms}")

    def fetch(self, user_ids: list[str]) -> dict[str, str | None]:
        return {row[0]: row[1] for row in self._select(user_ids, ("plan_tier",))}

    def fetch_accounts(self, user_ids: list[str]) -> dict[str, tuple[str | None, Any]]:
        """``{user_id: (plan_tier, updated_at)}`` for the ids in the table (for the data-quality checks)."""
        return {row[0]: (row[1], row[2]) for row in self._select(user_ids, ("plan_tier", "updated_at"))}

    def _select(self, user_ids: list[str], columns: tuple[str, ...]) -> list[tuple]:
        if not user_ids:
            return []
        query = self._queries[columns]
        try:
            with self._conns.get().cursor() as cur:
                cur.execute(query, (user_ids,))
                return cur.fetchall()
        except Exception:
            self._conns.discard()
            raise

    def close(self) -> None:
        self._conns.close_all()


class PlanTierLookup:
    """Batched, cached plan-tier look-ups; safe to share between the worker threads of a process.

    :param store: where the accounts are
    :param ttl_seconds: how long an answer (also "unknown user") is reused
    :param max_entries: cache size; the oldest entries go first when it is full
    :param max_query_ids: the most ids one batch may ask the database for
    :param retry_after_seconds: after a database error, how long to answer "unknown" without asking
    :param clock: monotonic seconds (a parameter so tests can move time)
    """

    def __init__(self, store: AccountStore, ttl_seconds: float = 300.0, max_entries: int = 200_000,
                 max_query_ids: int = 1000, retry_after_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_query_ids = max_query_ids
        self.retry_after = retry_after_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}
        self._db_down_until = 0.0
        self._metrics = CacheCounter("plan_tier")
        self._db_errors = ENRICH_ERRORS.labels(enricher="plan_tier", reason="db_error")
        self._overflow = ENRICH_ERRORS.labels(enricher="plan_tier", reason="overflow")
        self.queries = 0

    @classmethod
    def from_settings(cls, settings: Any, table: str = DEFAULT_TABLE, **options: Any) -> PlanTierLookup:
        """PostgreSQL when ``settings.postgres_url`` is set, else ``{data_dir}/accounts.sqlite3``."""
        if settings.postgres_url is not None:
            store: AccountStore = PostgresAccountStore(settings.postgres_url.reveal(), table)
        else:
            store = SqliteAccountStore(Path(settings.data_dir) / SQLITE_FILE, table)
        return cls(store, **options)

    def lookup_many(self, user_ids: Iterable[str | None]) -> dict[str | None, str]:
        """Plan tier of each id (``None`` → ``"anonymous"``). One database query at most; never raises."""
        now = self._clock()
        answers: dict[str | None, str] = {}
        misses: list[str] = []
        cache = self._cache
        hits = 0
        for user_id in user_ids:
            if user_id in answers:
                continue
            if user_id is None:
                answers[None] = ANONYMOUS
                continue
            cached = cache.get(user_id)
            if cached is not None and cached[0] > now:
                answers[user_id] = cached[1]
                hits += 1
            else:
                answers[user_id] = UNKNOWN  # until the database says otherwise
                misses.append(user_id)
        if hits:
            self._metrics.hit(hits)  # once per batch: a labelled counter costs about a microsecond
        if misses:
            self._metrics.miss(len(misses))
            self._resolve(misses[: self.max_query_ids], answers, now)
            if len(misses) > self.max_query_ids:
                self._overflow.inc(len(misses) - self.max_query_ids)
        return answers

    def _resolve(self, ids: list[str], answers: dict[str | None, str], now: float) -> None:
        if now < self._db_down_until:
            self._db_errors.inc(len(ids))
            return
        try:
            self.queries += 1
            found = self.store.fetch(ids)
        except Exception as exc:
            self._db_down_until = now + self.retry_after
            self._db_errors.inc(len(ids))
            log.warning("plan tier look-up failed (%s); answering 'unknown' for %ds",
                        type(exc).__name__, self.retry_after)
            return
        if len(self._cache) + len(ids) > self.max_entries:
            self._evict(len(ids), now)
        expires = now + self.ttl
        for user_id in ids:
            tier = found.get(user_id) or UNKNOWN
            answers[user_id] = tier
            self._cache[user_id] = (expires, tier)

    def _evict(self, room: int, now: float) -> None:
        # Expired entries first; then the oldest inserted (dicts keep insertion order).
        for key in [k for k, (exp, _) in self._cache.items() if exp <= now]:
            self._cache.pop(key, None)
        excess = len(self._cache) + room - self.max_entries
        for key in list(self._cache)[: max(0, excess)]:
            self._cache.pop(key, None)

    def close(self) -> None:
        self.store.close()
