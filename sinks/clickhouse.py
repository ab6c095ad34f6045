"""ClickHouse sink: ``analytics.events``, a ReplacingMergeTree keyed on event_id.

Delivery: at-least-once writes, exactly-once reads. A replayed batch inserts the same rows again; the table's
sorting key is ``event_id`` alone, so ``SELECT … FINAL`` (or a background merge) keeps one row per event.
Unit of parallelism: one writer per flow worker; each holds its own connection.

Two engines behind one URL setting:

- ``clickhouse://host:9000/db`` / ``clickhouses://host:9440/db``: a server over the native protocol
  (clickhouse-driver), batches sent column by column;
- ``chdb:///path``: the embedded engine (chdb). It allows one database path per process and locks it, so every
  writer in a process shares one session per path (:func:`_chdb_session`); batches go in as one Arrow stream.

The table is created and evolved by the versioned migrations of :mod:`sinks.clickhouse_schema`, rendered for the
server's version (18.16 has neither DateTime64 nor stable LowCardinality).
"""
from __future__ import annotations

import datetime as dt
import socket
import threading
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from sinks.base import BatchWriter, RetryPolicy, column_lists
from sinks.clickhouse_schema import (MIGRATIONS_TABLE, Column, ServerFeatures, arrow_schema, columns_at,
                                     migrations_table_ddl, pending)

DEFAULT_TABLE = "events"
# Server error codes worth another try: timeouts, network trouble, overload, a replica not ready yet.
RETRYABLE_SERVER_CODES = frozenset({159, 164, 202, 203, 209, 210, 236, 242, 252, 319, 394, 425})


class ClickHouseError(RuntimeError):
    """Misconfiguration or misuse that retrying cannot fix."""


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where the sink writes, parsed from ``clickhouse_url``.

    :param engine: ``native`` (a server) or ``chdb`` (embedded)
    :param database: the database holding ``events`` (from the URL path; ``analytics`` when absent)
    :param path: the chdb data directory (chdb only)
    """

    engine: str
    database: str
    host: str | None = None
    port: int | None = None
    secure: bool = False
    path: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, secure: bool = False) -> ClickHouseTarget:
        parts = urlsplit(url)
        if parts.scheme == "chdb":
            # chdb:///abs/path (empty host) or chdb://rel/path: both name a directory.
            path = unquote((parts.netloc or "") + parts.path)
            if not path or path == "/":
                raise ClickHouseError("chdb URL needs a path: chdb:///var/chdb")
            database = (dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("database")
                        or "analytics")
            return cls("chdb", database, path=path)
        if parts.scheme not in ("clickhouse", "clickhouses"):
            raise ClickHouseError(f"unsupported ClickHouse URL scheme {parts.scheme!r}")
        tls = secure or parts.scheme == "clickhouses"
        database = parts.path.strip("/") or "analytics"
        if "/" in database:
            raise ClickHouseError(f"ClickHouse URL path must be one database name, not {database!r}")
        return cls("native", database, host=parts.hostname or "localhost",
                   port=parts.port or (9440 if tls else 9000), secure=tls,
                   user=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


# --- engines ------------------------------------------------------------------------------

class _NativeEngine:
    """A ClickHouse server over the native protocol."""

    def __init__(self, target: ClickHouseTarget, user: str, password: str, connect_timeout: float,
                 send_receive_timeout: float):
        from clickhouse_driver import Client

        self.client = Client(target.host, port=target.port, database="default", user=user, password=password,
                             secure=target.secure, connect_timeout=connect_timeout,
                             send_receive_timeout=send_receive_timeout, client_name="headwater-sink")

    def version(self) -> str:
        return str(self.client.execute("SELECT version()")[0][0])

    def execute(self, sql: str, settings: dict[str, Any] | None = None) -> list[tuple]:
        return self.client.execute(sql, settings=settings or {})

    def insert(self, table: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]],
               features: ServerFeatures) -> None:
        values = column_lists(rows, (c.name for c in columns))
        data = [_native_column(c, values[c.name], features) for c in columns]
        names = ", ".join(f"`{c.name}`" for c in columns)
        # types_check off: the columns are built above to the exact Python types the driver expects.
        self.client.execute(f"INSERT INTO {table} ({names}) VALUES", data, columnar=True, types_check=False)

    def insert_tuples(self, table: str, names: Sequence[str], tuples: list[tuple]) -> None:
        # The native protocol sends INSERT data as blocks; inline VALUES would leave the server waiting.
        self.client.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES", tuples)

    def close(self) -> None:
        self.client.disconnect()


class _ChdbEngine:
    """The embedded engine, sharing the process's one session for the path."""

    def __init__(self, target: ClickHouseTarget):
        self.path = target.path
        self.session = _chdb_session(self.path)
        self._closed = False

    def version(self) -> str:
        return self.session.query("SELECT version()", "CSV").bytes().decode()

    def execute(self, sql: str, settings: dict[str, Any] | None = None) -> list[tuple]:
        table = self.session.query(sql, "ArrowTable")
        if not isinstance(table, pa.Table) or table.num_columns == 0:
            return []
        return [tuple(r.values()) for r in table.to_pylist()]

    def insert(self, table: str, columns: Sequence[Column], rows: Sequence[dict[str, Any]],
               features: ServerFeatures) -> None:
        values = column_lists(rows, (c.name for c in columns))
        batch = pa.Table.from_pydict({c.name: _zero_filled(c, values[c.name]) for c in columns},
                                     schema=arrow_schema(tuple(columns)))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_table(batch)
        names = ", ".join(f"`{c.name}`" for c in columns)
        with self.session.send_insert(f"INSERT INTO {table} ({names})", "ArrowStream") as ins:
            ins.append(sink.getvalue().to_pybytes())
            ins.finish()

    def insert_tuples(self, table: str, names: Sequence[str], tuples: list[tuple]) -> None:
        values = ", ".join("(" + ", ".join(_literal(v) for v in t) + ")" for t in tuples)
        self.session.query(f"INSERT INTO {table} ({', '.join(names)}) VALUES {values}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_chdb_session(self.path)


_chdb_lock = threading.Lock()
_chdb_sessions: dict[str, list[Any]] = {}  # path -> [session, users]; chdb forces process-wide sharing


def _chdb_session(path: str) -> Any:
    import chdb.session

    with _chdb_lock:
        if path in _chdb_sessions:
            _chdb_sessions[path][1] += 1
            return _chdb_sessions[path][0]
        if _chdb_sessions:
            other = next(iter(_chdb_sessions))
            raise ClickHouseError(f"chdb is already open at {other} in this process; one path per process")
        session = chdb.session.Session(path)
        _chdb_sessions[path] = [session, 1]
        return session


def _release_chdb_session(path: str) -> None:
    with _chdb_lock:
        entry = _chdb_sessions.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _chdb_sessions[path]
            entry[0].close()


def _literal(value: Any) -> str:
    """A SQL literal for the few bookkeeping values (ints, text, datetimes) written outside Arrow."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _zero_filled(column: Column, values: list[Any]) -> list[Any]:
    """``values`` of ``column`` with None replaced by the type's zero value where the column is not nullable."""
    if column.nullable or None not in values:
        return values
    zero: Any = {"str": "", "lowcard": "", "json": "", "time": _EPOCH, "date": _EPOCH.date()}.get(column.kind, 0)
    return [zero if v is None else v for v in values]


def _native_column(column: Column, values: list[Any], features: ServerFeatures) -> list[Any]:
    """One column as clickhouse-driver takes it with type checks off. Timestamps go as integers in the column's
    unit (seconds for DateTime, microseconds for DateTime64(6)), converted in Arrow: the driver would convert each
    aware datetime in Python (``astimezone`` and ``timestamp``)."""
    if column.kind != "time":
        return _zero_filled(column, values)
    micros = pc.fill_null(pa.array(values, type=pa.timestamp("us", tz="UTC")).cast(pa.int64()), 0)
    if not features.datetime64:
        micros = pc.divide(micros, 10**6)  # whole seconds, truncated as the driver would
    return micros.to_pylist()


# --- the writer ---------------------------------------------------------------------------

class ClickHouseWriter(BatchWriter):
    """Writes batches to ``<database>.events``; idempotent on event_id through ReplacingMergeTree.

    :param url: ``clickhouse://host:9000/db``, ``clickhouses://host:9440/db`` or ``chdb:///path``
    :param user: server user (native only); a user in the URL wins
    :param password: server password (native only)
    :param secure: force TLS on the native port
    :param table: table name inside the database
    :param retry: retry policy for :meth:`write`
    """

    name = "clickhouse"

    def __init__(self, url: str, user: str = "default", password: str = "", secure: bool = False,
                 table: str = DEFAULT_TABLE, retry: RetryPolicy | None = None, connect_timeout: float = 5.0,
                 send_receive_timeout: float = 30.0):
        super().__init__(retry)
        self.target = ClickHouseTarget.parse(url, secure=secure)
        self.user = self.target.user or user
        self._password = self.target.password or password
        self.table = table
        self.connect_timeout, self.send_receive_timeout = connect_timeout, send_receive_timeout
        self._engine: _NativeEngine | _ChdbEngine | None = None
        self.features: ServerFeatures | None = None
        self._columns: tuple[Column, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> ClickHouseWriter:
        password = settings.clickhouse_password.reveal() if settings.clickhouse_password is not None else ""
        return cls(settings.clickhouse_url, user=settings.clickhouse_user, password=password,
                   secure=settings.clickhouse_secure, **options)

    @property
    def qualified_table(self) -> str:
        return f"`{self.target.database}`.`{self.table}`"

    # --- lifecycle ----------------------------------------------------------------------
    def _open(self) -> _NativeEngine | _ChdbEngine:
        if self._engine is None:
            if self.target.engine == "chdb":
                self._engine = _ChdbEngine(self.target)
            else:
                self._engine = _NativeEngine(self.target, self.user, self._password, self.connect_timeout,
                                             self.send_receive_timeout)
            self.features = ServerFeatures.parse(self._engine.version())
        return self._engine

    def setup(self) -> None:
        self.migrate()

    def migrate(self, target_version: int | None = None) -> list[int]:
        """Apply the pending migrations (up to ``target_version``); return the versions applied now.

        Safe to run concurrently from several workers only in the sense that every statement is idempotent;
        the bookkeeping insert may then record a version twice, which :meth:`applied_versions` tolerates.
        """
        engine = self._open()
        assert self.features is not None
        db = self.target.database
        engine.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        engine.execute(migrations_table_ddl(db))
        done = []
        for migration in pending(self.applied_versions(), target_version):
            for sql in migration.statements(db, self.table, self.features):
                try:
                    engine.execute(sql, self.features.ddl_settings())
                except Exception as exc:
                    # Re-running an ALTER after a crash between DDL and bookkeeping: the column is there.
                    if "already exists" not in str(exc):
                        raise
            engine.insert_tuples(f"`{db}`.{MIGRATIONS_TABLE}", ("version", "description", "applied_at"),
                                 [(migration.version, migration.description,
                                   dt.datetime.now(dt.timezone.utc).replace(microsecond=0))])
            done.append(migration.version)
        current = max(self.applied_versions(), default=0)
        self._columns = columns_at(current)
        return done

    def applied_versions(self) -> set[int]:
        rows = self._open().execute(f"SELECT DISTINCT version FROM `{self.target.database}`.{MIGRATIONS_TABLE}")
        return {int(r[0]) for r in rows}

    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        engine = self._open()
        assert self.features is not None
        engine.insert(self.qualified_table, self._columns, rows, self.features)

    def retryable(self, exc: BaseException) -> bool:
        from clickhouse_driver import errors

        if isinstance(exc, (errors.NetworkError, errors.SocketTimeoutError, ConnectionError, TimeoutError,
                            socket.timeout, EOFError)):
            return True
        if isinstance(exc, errors.ServerException):
            return exc.code in RETRYABLE_SERVER_CODES
        return isinstance(exc, OSError)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        self._ready = False

    # --- reads, for tests and smoke checks ----------------------------------------------
    def query(self, sql: str) -> list[tuple]:
        return self._open().execute(sql)

    def count_final(self) -> int:
        """Rows as a reader sees them: one per event_id."""
        return int(self.query(f"SELECT count() FROM {self.qualified_table} FINAL")[0][0])

    def count_raw(self) -> int:
        """Stored rows before deduplication (replays included until merged)."""
        return int(self.query(f"SELECT count() FROM {self.qualified_table}")[0][0])

    def distinct_event_ids(self) -> int:
        return int(self.query(f"SELECT uniqExact(event_id) FROM {self.qualified_table}")[0][0])
