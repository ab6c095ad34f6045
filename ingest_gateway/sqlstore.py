"""The gateway's small relational store: PostgreSQL in production, a SQLite file when embedded.

Only the audit log and the opt-out registry live here. Calls are blocking and serialised on one
connection; the async callers run them in a thread (:meth:`SqlStore.run`). SQL is written with ``%s``
placeholders and translated for SQLite.
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("headwater.gateway.sql")


class SqlStore:
    """:param dialect: ``"postgres"`` or ``"sqlite"``; use :meth:`open` rather than the constructor"""

    def __init__(self, dialect: str, connect: Callable[[], Any]) -> None:
        self.dialect = dialect
        self._connect = connect
        self._conn = connect()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, postgres_url: str | None, sqlite_path: Path) -> "SqlStore":
        if postgres_url:
            import psycopg

            return cls("postgres", lambda: psycopg.connect(postgres_url, autocommit=True, connect_timeout=5))
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(sqlite_path, check_same_thread=False, isolation_level=None, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        return cls("sqlite", connect)

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.dialect == "sqlite" else sql

    def _with_retry(self, work: Callable[[Any], Any]) -> Any:
        with self._lock:
            try:
                return work(self._conn)
            except Exception as exc:
                if self.dialect != "postgres" or not getattr(self._conn, "closed", False):
                    raise
                log.warning("PostgreSQL connection lost (%s); reconnecting", exc)
                self._conn = self._connect()
                return work(self._conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the affected row count."""
        def work(conn):
            cur = conn.execute(self._sql(sql), params)
            return cur.rowcount
        return self._with_retry(work)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def work(conn):
            if self.dialect == "sqlite":
                conn.execute("BEGIN")
                try:
                    conn.executemany(self._sql(sql), rows)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            else:
                with conn.cursor() as cur:
                    cur.executemany(sql, rows)
        self._with_retry(work)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        def work(conn):
            return list(conn.execute(self._sql(sql), params).fetchall())
        return self._with_retry(work)

    def script(self, statements: Sequence[str]) -> None:
        """DDL, idempotent (``IF NOT EXISTS``); tolerates another worker creating the same objects."""
        for sql in statements:
            try:
                self.execute(sql)
            except Exception as exc:
                if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                    raise

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
