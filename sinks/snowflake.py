"""Snowflake sink: Parquet → PUT to a stage → COPY INTO a staging table → MERGE into ``EVENTS`` on EVENT_ID.

Delivery: at-least-once writes, exactly-once table. The MERGE inserts only event_ids the table does not hold yet
(:func:`merge_sql`) and the batch is deduplicated on event_id first, so a replayed or overlapping
batch adds nothing twice. Nothing relies on PRIMARY KEY/UNIQUE constraints (Snowflake does not enforce them).
Unit of parallelism: one writer per flow worker. Workers share one staging table: every attempt tags its rows
with a fresh ``BATCH_ID`` and moves and deletes only those, so concurrent writers never see each other's rows.

Names: the URL ``snowflake://user@account/ANALYTICS/PUBLIC`` targets ``ANALYTICS.PUBLIC.EVENTS``, which is what
the contract's ``ANALYTICS.EVENTS`` means (database ANALYTICS, its default schema PUBLIC). Database, schema,
stage and tables are created when missing.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from sinks.base import ROW_COLUMNS, BatchWriter, RetryPolicy, column_lists

TABLE = "EVENTS"
STAGING_TABLE = "EVENTS_STAGING"
STAGE = "HEADWATER_STAGE"
JSON_COLUMNS = ("PROPERTIES", "CONTEXT", "CONSENT")

# Column → (Snowflake type in EVENTS, Arrow type in the staging file). JSON travels as text and is parsed
# into VARIANT by the MERGE (a Parquet string copied straight into VARIANT would stay a JSON string).
_TYPES: dict[str, tuple[str, pa.DataType]] = {
    "event_id": ("VARCHAR", pa.string()), "event": ("VARCHAR", pa.string()),
    "event_date": ("DATE", pa.date32()),
    "timestamp": ("TIMESTAMP_TZ", pa.timestamp("us", tz="UTC")),
    "received_at": ("TIMESTAMP_TZ", pa.timestamp("us", tz="UTC")),
    "latitude": ("FLOAT", pa.float64()), "longitude": ("FLOAT", pa.float64()),
    "clock_skew_seconds": ("FLOAT", pa.float64()),
    "schema_version": ("NUMBER(10,0)", pa.int64()), "kafka_partition": ("NUMBER(10,0)", pa.int64()),
    "kafka_offset": ("NUMBER(19,0)", pa.int64()),
    "properties": ("VARIANT", pa.string()), "context": ("VARIANT", pa.string()), "consent": ("VARIANT", pa.string()),
}
COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = tuple(
    (name.upper(), *_TYPES.get(name, ("VARCHAR", pa.string()))) for name in ROW_COLUMNS)

# Connector errnos of connection trouble (could not connect, connection reset, timeouts, retry exhausted).
_RETRYABLE_ERRNOS = frozenset({250001, 250002, 250003, 250005, 251005, 251006, 251010, 251011, 251012, 254007})


class SnowflakeConfigError(ValueError):
    """The Snowflake URL or credentials are unusable."""


@dataclass(frozen=True)
class SnowflakeTarget:
    """Parsed ``snowflake://user@account/DATABASE/SCHEMA?warehouse=..&role=..&host=..&port=..&protocol=..``."""

    user: str
    account: str
    database: str
    schema: str = "PUBLIC"
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> SnowflakeTarget:
        parts = urlsplit(url)
        if parts.scheme != "snowflake":
            raise SnowflakeConfigError("Snowflake URL must start with snowflake://")
        if not parts.username or not parts.hostname:
            raise SnowflakeConfigError("Snowflake URL must name user and account: snowflake://user@account/DB")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise SnowflakeConfigError("Snowflake URL path must be /DATABASE or /DATABASE/SCHEMA")
        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"warehouse", "role", "host", "port", "protocol", "region"}
        if unknown:
            raise SnowflakeConfigError(f"unknown Snowflake URL option(s): {', '.join(sorted(unknown))}")
        if "port" in options and not options["port"].isdigit():
            raise SnowflakeConfigError("Snowflake URL port must be a number")
        # The account keeps its case (it is part of a host name); the netloc's hostname is lower-cased by urlsplit.
        account = parts.netloc.rsplit("@", 1)[1].split(":")[0]
        return cls(unquote(parts.username), account, path[0].upper(),
                   path[1].upper() if len(path) > 1 else "PUBLIC", options)

    def qualified(self, name: str) -> str:
        return f"{self.database}.{self.schema}.{name}"

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"user": self.user, "account": self.account}
        for key in ("warehouse", "role", "host", "protocol", "region"):
            if key in self.options:
                args[key] = self.options[key]
        if "port" in self.options:
            args["port"] = int(self.options["port"])
        return args


def load_private_key(pem: str | bytes, passphrase: str | None = None) -> bytes:
    """PEM private key → the DER (PKCS#8) bytes the connector's ``private_key`` accepts."""
    from cryptography.hazmat.primitives import serialization

    data = pem.encode() if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def dedup_batch(rows: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """One row per event_id; the latest ``received_at`` wins (the first one seen on a tie). A batch without
    repeats (the usual case) comes back as it is."""
    ids = list(map(itemgetter("event_id"), rows))
    if len(set(ids)) == len(ids):
        return rows
    best: dict[Any, dict[str, Any]] = {}
    for row in rows:
        seen = best.get(row["event_id"])
        if seen is None or (row.get("received_at") and seen.get("received_at")
                            and row["received_at"] > seen["received_at"]):
            best[row["event_id"]] = row
    return list(best.values())


def staging_table(rows: Sequence[dict[str, Any]], batch_id: str) -> pa.Table:
    """The batch as an Arrow table with the staging columns (upper-case names) plus ``BATCH_ID``, built column by
    column."""
    values = column_lists(rows, ROW_COLUMNS)
    arrays = {upper: pa.array(values[upper.lower()], type=arrow) for upper, _, arrow in COLUMNS}
    arrays["BATCH_ID"] = pa.array([batch_id] * len(rows), type=pa.string())
    return pa.table(arrays)


def write_staging_file(rows: Sequence[dict[str, Any]], directory: Path, batch_id: str) -> Path:
    """Write the batch to ``directory/batch-<id>.parquet`` (zstd) and return the path."""
    path = Path(directory) / f"batch-{batch_id}.parquet"
    pq.write_table(staging_table(rows, batch_id), path, compression="zstd")
    return path


def events_ddl(target: SnowflakeTarget) -> str:
    cols = ",\n  ".join(f"{name} {sf}{' NOT NULL' if name == 'EVENT_ID' else ''}" for name, sf, _ in COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {target.qualified(TABLE)} (\n  {cols}\n)"


def staging_ddl(target: SnowflakeTarget) -> str:
    cols = ",\n  ".join(f"{name} {'VARCHAR' if sf == 'VARIANT' else sf}" for name, sf, _ in COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {target.qualified(STAGING_TABLE)} (\n  {cols},\n  BATCH_ID VARCHAR\n)"


def merge_sql(target: SnowflakeTarget, batch_id: str) -> str:
    """The statement that moves one staged batch into ``EVENTS``: a ``MERGE`` on EVENT_ID that inserts only the
    event ids the table does not hold yet.

    MERGE rather than ``INSERT … WHERE NOT EXISTS``: Snowflake runs the DML statements that read the target
    (MERGE, UPDATE, DELETE) on a table generally one at a time, while plain INSERTs can run side by side, so two writers
    moving overlapping batches at once (a replay racing a live write) could both insert an event id with an
    anti-join insert. On fakesnow the MERGE costs more (it copies a join with the whole target table), which
    shows in the sink benchmark; the contract is the production engine's. The batch is unique on EVENT_ID
    already (:func:`dedup_batch`).
    """
    names = [name for name, _, _ in COLUMNS]
    source = ", ".join(f"PARSE_JSON({n}) AS {n}" if n in JSON_COLUMNS else n for n in names)
    return (
        f"MERGE INTO {target.qualified(TABLE)} t USING (\n"
        f"  SELECT {source} FROM {target.qualified(STAGING_TABLE)} WHERE BATCH_ID = '{batch_id}'\n"
        f") s ON t.EVENT_ID = s.EVENT_ID\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)})\n"
        f"  VALUES ({', '.join('s.' + n for n in names)})"
    )


class SnowflakeWriter(BatchWriter):
    """Writes batches to ``DATABASE.SCHEMA.EVENTS`` through a stage and a MERGE on EVENT_ID.

    :param url: ``snowflake://user@account/DATABASE/SCHEMA?warehouse=..&role=..&host=..&port=..&protocol=..``
    :param password: password authentication
    :param private_key: PEM private key for key-pair authentication (wins over the password)
    :param create_schema: create the database and schema when missing (needs the privilege)
    :param retry: retry policy for :meth:`write`
    """

    name = "snowflake"

    def __init__(self, url: str, password: str | None = None, private_key: str | bytes | None = None,
                 create_schema: bool = True, retry: RetryPolicy | None = None, login_timeout: int = 10,
                 network_timeout: int = 60):
        super().__init__(retry)
        self.target = SnowflakeTarget.parse(url)
        if password is None and private_key is None:
            raise SnowflakeConfigError("Snowflake needs a password or a private key")
        self._password, self._private_key = password, private_key
        self.create_schema = create_schema
        self.login_timeout, self.network_timeout = login_timeout, network_timeout
        self._conn: Any = None
        self._tmp: Path | None = None

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> SnowflakeWriter:
        secret = lambda s: s.reveal() if s is not None else None  # noqa: E731
        return cls(settings.snowflake_url, password=secret(settings.snowflake_password),
                   private_key=secret(settings.snowflake_private_key), **options)

    @property
    def table(self) -> str:
        return self.target.qualified(TABLE)

    # --- lifecycle ----------------------------------------------------------------------
    def _connect(self) -> Any:
        import snowflake.connector

        auth: dict[str, Any] = ({"private_key": load_private_key(self._private_key)}
                                if self._private_key is not None else {"password": self._password})
        return snowflake.connector.connect(**self.target.connect_args(), **auth,
                                           login_timeout=self.login_timeout, network_timeout=self.network_timeout,
                                           client_session_keep_alive=False)

    def setup(self) -> None:
        self._drop_connection()
        self._conn = self._connect()
        t = self.target
        statements = []
        if self.create_schema:
            statements += [f"CREATE DATABASE IF NOT EXISTS {t.database}",
                           f"CREATE SCHEMA IF NOT EXISTS {t.database}.{t.schema}"]
        statements += [f"USE SCHEMA {t.database}.{t.schema}", events_ddl(t), staging_ddl(t),
                       f"CREATE STAGE IF NOT EXISTS {t.qualified(STAGE)}"]
        with self._conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="headwater-snowflake-"))

    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        # A fresh id per attempt: Snowflake skips files it has loaded before, so a retry must not reuse a name.
        batch_id = uuid.uuid4().hex
        assert self._tmp is not None and self._conn is not None
        path = write_staging_file(dedup_batch(rows), self._tmp, batch_id)
        t, staging = self.target, self.target.qualified(STAGING_TABLE)
        location = f"@{t.qualified(STAGE)}/{batch_id}"
        try:
            with self._conn.cursor() as cur:
                cur.execute(f"PUT 'file://{path}' {location} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
                cur.execute(f"COPY INTO {staging} FROM {location} FILE_FORMAT=(TYPE=PARQUET) "
                            f"MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE PURGE=TRUE")
                cur.execute(merge_sql(t, batch_id))
                cur.execute(f"DELETE FROM {staging} WHERE BATCH_ID = '{batch_id}'")
        finally:
            path.unlink(missing_ok=True)

    def retryable(self, exc: BaseException) -> bool:
        from snowflake.connector import errors

        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, OSError)):
            return True
        if str(getattr(exc, "sqlstate", None) or "").startswith("08"):
            return True  # SQLSTATE class 08, connection exception: e.g. a session lost when the server restarted
        if isinstance(exc, errors.ProgrammingError):
            return False  # SQL or permission problems: the same statement fails again
        if isinstance(exc, (errors.OperationalError, errors.InterfaceError)):
            return True
        if isinstance(exc, errors.DatabaseError):
            return getattr(exc, "errno", None) in _RETRYABLE_ERRNOS
        return type(exc).__module__.startswith(("requests", "urllib3"))

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass
            self._conn = None

    def close(self) -> None:
        self._drop_connection()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._ready = False

    # --- reads, for tests and smoke checks ----------------------------------------------
    def read(self, sql: str) -> list[tuple]:
        """Run a read-only statement on the writer's connection, opened without the set-up DDL (for checks that
        must not create anything, such as ``headwater quality``)."""
        if self._conn is None:
            self._conn = self._connect()
        with self._conn.cursor() as cur:
            return cur.execute(sql).fetchall()

    def query(self, sql: str) -> list[tuple]:
        if self._conn is None:
            self.setup()
            self._ready = True
        with self._conn.cursor() as cur:
            return cur.execute(sql).fetchall()

    def count(self) -> int:
        return int(self.query(f"SELECT COUNT(*) FROM {self.table}")[0][0])

    def distinct_event_ids(self) -> int:
        return int(self.query(f"SELECT COUNT(DISTINCT EVENT_ID) FROM {self.table}")[0][0])


__all__ = ["SnowflakeWriter", "SnowflakeTarget", "SnowflakeConfigError", "dedup_batch", "staging_table",
           "write_staging_file", "events_ddl", "staging_ddl", "merge_sql", "load_private_key"]
