"""The three stores as the checks read them: one ``event_date`` at a time, through the sinks' own clients.

Every reader answers the same three questions for a day (:meth:`load_day`): which rows it holds (event_id, user_id,
plan_tier, received_at, one entry per stored row so duplicates show), how many rows miss each mandatory field (and a
few of their event_ids), and, for ClickHouse, how many unmerged copies wait for a background merge. Counting happens
inside the store where it can (SQL aggregates); only the narrow per-row columns travel.

"Missing" means the same in every store: NULL, an empty string, or the zero value a non-nullable ClickHouse column
stores in place of NULL (the sink writes ``''`` and the epoch there).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import pyarrow as pa
import pyarrow.compute as pc

#: Columns every row of the flow carries (the envelope requires them or the flow always derives them).
MANDATORY_COLUMNS = (
    "event_id", "event", "event_date", "timestamp", "received_at", "pii_salt_id", "plan_tier", "properties",
    "context", "source", "schema_version", "clock_skew_seconds", "kafka_topic", "kafka_partition", "kafka_offset",
)
#: The envelope's "user_id or anonymous_id" rule, checked like a column.
IDENTITY = "user_id|anonymous_id"
FIELDS_CHECKED = MANDATORY_COLUMNS + (IDENTITY,)
_LOOKUP_CHUNK = 1000


class StoreError(RuntimeError):
    """A store cannot be reached or read (connection refused, table absent, permission denied)."""

    def __init__(self, store: str, message: str):
        self.store = store
        super().__init__(f"{store}: {message}")


@dataclass
class DayData:
    """What one store holds for one ``event_date``.

    :param event_ids: one entry per stored row (ClickHouse: as read with FINAL)
    :param missing: rows missing each field of :data:`FIELDS_CHECKED`
    :param missing_examples: a few event_ids per field with missing rows
    :param unmerged_copies: ClickHouse only: stored rows minus distinct event_ids before FINAL
    """

    store: str
    day: dt.date
    event_ids: list[str]
    user_ids: list[str | None]
    plan_tiers: list[str | None]
    received_at: list[dt.datetime | None]
    missing: dict[str, int] = field(default_factory=dict)
    missing_examples: dict[str, list[str]] = field(default_factory=dict)
    unmerged_copies: int | None = None

    @property
    def rows(self) -> int:
        return len(self.event_ids)


class Store(Protocol):
    name: str

    def load_day(self, day: dt.date, examples: int) -> DayData: ...

    def find_event_ids(self, event_ids: Sequence[str]) -> dict[str, dt.datetime | None]: ...

    def close(self) -> None: ...


def _chunks(items: Sequence[str], size: int = _LOOKUP_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _sql_text(value: str) -> str:
    """A quoted SQL string literal (backslash and quote escaped; both ClickHouse and Snowflake accept it)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _aware(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


# --- the lake -----------------------------------------------------------------------------

class LakeStore:
    """The Parquet lake, read with the lake writer's own filesystem and schema (``event_date`` from the path).

    :param writer: a :class:`sinks.s3_parquet.ParquetLakeWriter` (only its reading side is used)
    """

    name = "lake"

    def __init__(self, writer: Any):
        self.writer = writer
        self._dataset: Any = None

    @classmethod
    def from_settings(cls, settings: Any) -> LakeStore:
        from sinks.s3_parquet import ParquetLakeWriter

        return cls(ParquetLakeWriter.from_settings(settings))

    def _ds(self) -> Any:
        if self._dataset is None:
            root = self.writer.root.removeprefix("file://")
            if "://" not in root and not os.path.isdir(os.path.join(root, "events")):
                # Checked first: the writer's setup would create a local lake, and an empty lake reads as no events.
                raise StoreError(self.name, f"no events/ directory under {self.writer.root}")
            try:
                self._dataset = self.writer.dataset()  # lists the files once per run
            except FileNotFoundError:
                raise StoreError(self.name, f"no events/ directory under {self.writer.root}") from None
            except Exception as exc:
                raise StoreError(self.name, f"cannot list {self.writer.root}: {type(exc).__name__}: {exc}") from exc
        return self._dataset

    def _read(self, columns: list[str], condition: Any) -> pa.Table:
        try:
            return self._ds().to_table(columns=columns, filter=condition)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(self.name, f"cannot read {self.writer.root}: {type(exc).__name__}: {exc}") from exc

    def load_day(self, day: dt.date, examples: int) -> DayData:
        wanted = sorted(set(MANDATORY_COLUMNS) | {"user_id", "anonymous_id"})
        table = self._read(wanted, pc.field("event_date") == pa.scalar(day, pa.date32()))
        ids = table.column("event_id")
        masks = {name: _missing_mask(table.column(name)) for name in MANDATORY_COLUMNS}
        masks[IDENTITY] = pc.and_(_missing_mask(table.column("user_id")), _missing_mask(table.column("anonymous_id")))
        missing, found = {}, {}
        for name, mask in masks.items():
            missing[name] = int(pc.sum(mask).as_py() or 0)
            if missing[name]:
                found[name] = pc.filter(ids, mask).slice(0, examples).to_pylist()
        return DayData(self.name, day, ids.to_pylist(), table.column("user_id").to_pylist(),
                       table.column("plan_tier").to_pylist(), table.column("received_at").to_pylist(),
                       missing, found)

    def find_event_ids(self, event_ids: Sequence[str]) -> dict[str, dt.datetime | None]:
        out: dict[str, dt.datetime | None] = {}
        for chunk in _chunks(list(event_ids), 50_000):
            table = self._read(["event_id", "received_at"], pc.field("event_id").isin(list(chunk)))
            out.update(zip(table.column("event_id").to_pylist(), table.column("received_at").to_pylist()))
        return out

    def close(self) -> None:
        self.writer.close()


def _missing_mask(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a value is NULL, an empty string, or the epoch (a timestamp that was never set)."""
    mask = pc.is_null(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        mask = pc.or_(mask, pc.fill_null(pc.equal(column, ""), False))
    elif pa.types.is_timestamp(column.type):
        mask = pc.or_(mask, pc.fill_null(pc.equal(column.cast(pa.int64()), 0), False))
    return mask


# --- ClickHouse ---------------------------------------------------------------------------

def clickhouse_missing_condition(name: str, ch_type: str) -> str:
    """SQL that is true when column ``name`` of type ``ch_type`` (as ``system.columns`` spells it) is missing."""
    quoted = f"`{name}`"
    nullable = "Nullable(" in ch_type
    value = f"assumeNotNull({quoted})" if nullable else quoted
    base = ch_type.replace("LowCardinality(", "").replace("Nullable(", "").rstrip(")")
    if base.startswith("String"):
        test = f"{value} = ''"
    elif base.startswith("DateTime"):
        test = f"toUnixTimestamp({value}) = 0"
    elif base.startswith("Date"):
        test = f"{value} = toDate('1970-01-01')"
    else:
        test = ""  # numbers: a stored zero is a real value
    if nullable:
        return f"(isNull({quoted}) OR {test})" if test else f"isNull({quoted})"
    return test or "0"


class ClickHouseStore:
    """``analytics.events`` through the ClickHouse writer's client (native server or chdb); reads with FINAL.

    :param writer: a :class:`sinks.clickhouse.ClickHouseWriter` (only its query side is used; no DDL runs)
    """

    name = "clickhouse"

    def __init__(self, writer: Any):
        self.writer = writer
        self._types: dict[str, str] | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> ClickHouseStore:
        from sinks.clickhouse import ClickHouseWriter

        return cls(ClickHouseWriter.from_settings(settings))

    @property
    def table(self) -> str:
        return self.writer.qualified_table

    def _query(self, sql: str) -> list[tuple]:
        try:
            return self.writer.query(sql)
        except Exception as exc:
            raise StoreError(self.name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                        f" (query: {sql[:160]})") from exc

    def _column_types(self) -> dict[str, str]:
        if self._types is None:
            db, table = self.writer.target.database, self.writer.table
            rows = self._query(f"SELECT name, type FROM system.columns WHERE database = {_sql_text(db)} "
                               f"AND table = {_sql_text(table)}")
            if not rows:
                raise StoreError(self.name, f"table {db}.{table} does not exist")
            self._types = {str(n): str(t) for n, t in rows}
        return self._types

    def load_day(self, day: dt.date, examples: int) -> DayData:
        types = self._column_types()
        where = f"event_date = toDate('{day.isoformat()}')"
        conditions = {name: clickhouse_missing_condition(name, types[name]) if name in types else "1"
                      for name in MANDATORY_COLUMNS}
        conditions[IDENTITY] = (f"({clickhouse_missing_condition('user_id', types['user_id'])}) AND "
                                f"({clickhouse_missing_condition('anonymous_id', types['anonymous_id'])})")
        stored, distinct = self._query(f"SELECT count(), uniqExact(event_id) FROM {self.table} WHERE {where}")[0]
        counts = self._query("SELECT " + ", ".join(f"countIf({c})" for c in conditions.values())
                             + f" FROM {self.table} FINAL WHERE {where}")[0]
        missing = {name: int(n) for name, n in zip(conditions, counts)}
        found = {name: [str(r[0]) for r in self._query(
                    f"SELECT event_id FROM {self.table} FINAL WHERE {where} AND {conditions[name]} "
                    f"ORDER BY event_id LIMIT {int(examples)}")]
                 for name, n in missing.items() if n}
        rows = self._query(f"SELECT event_id, user_id, plan_tier, received_at FROM {self.table} FINAL WHERE {where}")
        return DayData(self.name, day, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                       [_aware(r[3]) for r in rows], missing, found, unmerged_copies=int(stored) - int(distinct))

    def find_event_ids(self, event_ids: Sequence[str]) -> dict[str, dt.datetime | None]:
        out: dict[str, dt.datetime | None] = {}
        for chunk in _chunks(list(event_ids)):
            values = ", ".join(_sql_text(i) for i in chunk)
            for event_id, received in self._query(
                    f"SELECT event_id, received_at FROM {self.table} FINAL WHERE event_id IN ({values})"):
                out[event_id] = _aware(received)
        return out

    def close(self) -> None:
        self.writer.close()


# --- Snowflake ----------------------------------------------------------------------------

def snowflake_missing_condition(name: str, sf_type: str) -> str:
    """SQL that is true when Snowflake column ``name`` of type ``sf_type`` is missing."""
    return f"COALESCE({name}, '') = ''" if sf_type == "VARCHAR" else f"{name} IS NULL"


class SnowflakeStore:
    """``DATABASE.SCHEMA.EVENTS`` through the Snowflake writer's connection settings (password or key-pair).

    The connection is opened without the writer's ``setup()``, so a check never creates or alters anything.

    :param writer: a :class:`sinks.snowflake.SnowflakeWriter`
    """

    name = "snowflake"

    def __init__(self, writer: Any):
        self.writer = writer

    @classmethod
    def from_settings(cls, settings: Any) -> SnowflakeStore:
        from sinks.snowflake import SnowflakeWriter

        return cls(SnowflakeWriter.from_settings(settings, create_schema=False))

    @property
    def table(self) -> str:
        return self.writer.table

    def _query(self, sql: str) -> list[tuple]:
        try:
            return self.writer.read(sql)  # the writer's connection, without its set-up DDL
        except Exception as exc:
            raise StoreError(self.name, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                        f" (query: {sql[:160]})") from exc

    def load_day(self, day: dt.date, examples: int) -> DayData:
        from sinks.snowflake import COLUMNS

        types = {name: sf for name, sf, _ in COLUMNS}
        where = f"EVENT_DATE = '{day.isoformat()}'"
        conditions = {name: snowflake_missing_condition(name.upper(), types[name.upper()])
                      for name in MANDATORY_COLUMNS}
        conditions[IDENTITY] = (f"{snowflake_missing_condition('USER_ID', 'VARCHAR')} AND "
                                f"{snowflake_missing_condition('ANONYMOUS_ID', 'VARCHAR')}")
        counts = self._query("SELECT " + ", ".join(f"SUM(CASE WHEN {c} THEN 1 ELSE 0 END)"
                                                   for c in conditions.values())
                             + f" FROM {self.table} WHERE {where}")[0]
        missing = {name: int(n or 0) for name, n in zip(conditions, counts)}
        found = {name: [str(r[0]) for r in self._query(
                    f"SELECT EVENT_ID FROM {self.table} WHERE {where} AND {conditions[name]} "
                    f"ORDER BY EVENT_ID LIMIT {int(examples)}")]
                 for name, n in missing.items() if n}
        rows = self._query(f"SELECT EVENT_ID, USER_ID, PLAN_TIER, RECEIVED_AT FROM {self.table} WHERE {where}")
        return DayData(self.name, day, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                       [_aware(r[3]) for r in rows], missing, found)

    def find_event_ids(self, event_ids: Sequence[str]) -> dict[str, dt.datetime | None]:
        out: dict[str, dt.datetime | None] = {}
        for chunk in _chunks(list(event_ids)):
            values = ", ".join(_sql_text(i) for i in chunk)
            for event_id, received in self._query(
                    f"SELECT EVENT_ID, RECEIVED_AT FROM {self.table} WHERE EVENT_ID IN ({values})"):
                out[event_id] = _aware(received)
        return out

    def close(self) -> None:
        self.writer.close()


STORE_NAMES = ("lake", "clickhouse", "snowflake")
_FACTORIES = {"lake": LakeStore, "clickhouse": ClickHouseStore, "snowflake": SnowflakeStore}


def open_stores(settings: Any, names: Sequence[str]) -> list[Store]:
    """Readers for ``names`` (a subset of :data:`STORE_NAMES`), built from the settings; nothing connects yet."""
    stores: list[Store] = []
    for name in names:
        try:
            stores.append(_FACTORIES[name].from_settings(settings))
        except Exception as exc:  # a URL the sink refuses, a missing credential
            for store in stores:
                store.close()
            raise StoreError(name, f"{type(exc).__name__}: {exc}") from exc
    return stores
