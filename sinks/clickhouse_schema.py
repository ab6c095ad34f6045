"""The ClickHouse side of the row: column types per server version and the versioned migrations.

Kept apart from the writer so that the DDL can be checked without a server. A migration is a version number and
the statements that take the schema from the previous version to it; the statements are rendered for the server
at hand (:class:`ServerFeatures`), because the same project runs against ClickHouse 18.16 (Debian) and 26.x (chdb,
ClickHouse Cloud). Applied versions are recorded in ``schema_migrations``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class ServerFeatures:
    """What the server's SQL dialect offers.

    :param version: (major, minor) of the server
    """

    version: tuple[int, int]

    @property
    def low_cardinality(self) -> bool:
        return self.version >= (18, 12)

    @property
    def low_cardinality_is_experimental(self) -> bool:
        """18.x needs ``allow_experimental_low_cardinality_type=1`` to create such columns."""
        return self.low_cardinality and self.version < (19, 0)

    @property
    def datetime64(self) -> bool:
        return self.version >= (20, 1)

    def ddl_settings(self) -> dict[str, int]:
        return {"allow_experimental_low_cardinality_type": 1} if self.low_cardinality_is_experimental else {}

    @classmethod
    def parse(cls, version: str) -> ServerFeatures:
        """From a ``SELECT version()`` answer such as ``18.16.1`` or ``26.9.2.1``."""
        parts = version.strip().strip('"').split(".")
        return cls((int(parts[0]), int(parts[1]) if len(parts) > 1 else 0))


@dataclass(frozen=True)
class Column:
    """One stored column: ``kind`` is abstract (str, lowcard, time, date, float, int16/32/64, json), rendered per
    server by :meth:`ch_type`; ``nullable`` says whether the flow may hand over None."""

    name: str
    kind: str
    nullable: bool = False

    def ch_type(self, features: ServerFeatures) -> str:
        base = {
            "str": "String", "lowcard": "String", "json": "String", "date": "Date", "float": "Float64",
            "uint16": "UInt16", "int32": "Int32", "int64": "Int64",
            "time": "DateTime64(6, 'UTC')" if features.datetime64 else "DateTime('UTC')",
        }[self.kind]
        if self.nullable:
            base = f"Nullable({base})"
        if self.kind == "lowcard" and features.low_cardinality:
            base = f"LowCardinality({base})"
        return base

    def arrow_type(self) -> pa.DataType:
        return {
            "str": pa.string(), "lowcard": pa.string(), "json": pa.string(), "date": pa.date32(),
            "float": pa.float64(), "uint16": pa.uint16(), "int32": pa.int32(), "int64": pa.int64(),
            "time": pa.timestamp("us", tz="UTC"),
        }[self.kind]


# Version 1: the table as first shipped.
V1_COLUMNS = (
    Column("event_id", "str"),
    Column("event", "lowcard"),
    Column("event_date", "date"),
    Column("timestamp", "time"),
    Column("received_at", "time"),
    Column("user_id", "str", True),
    Column("anonymous_id", "str", True),
    Column("device_id", "str", True),
    Column("pii_salt_id", "lowcard", True),
    Column("country", "lowcard", True),
    Column("region", "lowcard", True),
    Column("city", "str", True),
    Column("latitude", "float", True),
    Column("longitude", "float", True),
    Column("time_zone", "lowcard", True),
    Column("ip_truncated", "str", True),
    Column("plan_tier", "lowcard", True),
    Column("browser", "lowcard", True),
    Column("os", "lowcard", True),
    Column("device_class", "lowcard", True),
    Column("properties", "json"),
    Column("context", "json"),
    Column("consent", "json", True),
    Column("source", "lowcard", True),
    Column("schema_version", "uint16", True),
    Column("kafka_topic", "lowcard", True),
    Column("kafka_partition", "int32", True),
    Column("kafka_offset", "int64", True),
)
# Version 2: salt rotation overlap and clock-skew correction arrived later.
V2_COLUMNS = (
    Column("pii_salt_id_prev", "lowcard", True),
    Column("clock_skew_seconds", "float", True),
)
ALL_COLUMNS = V1_COLUMNS + V2_COLUMNS


def _quote(name: str) -> str:
    return f"`{name}`"


def _create_events(database: str, table: str, features: ServerFeatures) -> list[str]:
    cols = ",\n  ".join(f"{_quote(c.name)} {c.ch_type(features)}" for c in V1_COLUMNS)
    # ORDER BY event_id alone: FINAL collapses rows whose sorting key is equal, so the key must be exactly the
    # dedup key. A replay carries the same event_date, hence lands in the same monthly partition.
    # received_at is the version: among copies of one event the latest receive wins.
    return [
        f"CREATE TABLE IF NOT EXISTS {_quote(database)}.{_quote(table)} (\n  {cols}\n)\n"
        f"ENGINE = ReplacingMergeTree(received_at)\n"
        f"PARTITION BY toYYYYMM(event_date)\n"
        f"ORDER BY event_id"
    ]


def _add_v2_columns(database: str, table: str, features: ServerFeatures) -> list[str]:
    # One statement per column: 18.16 has no ADD COLUMN IF NOT EXISTS, so the runner skips "already exists"
    # per statement when a migration is re-run after a crash between DDL and bookkeeping.
    return [f"ALTER TABLE {_quote(database)}.{_quote(table)} ADD COLUMN {_quote(c.name)} {c.ch_type(features)}"
            for c in V2_COLUMNS]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    render: Callable[[str, str, ServerFeatures], list[str]]

    def statements(self, database: str, table: str, features: ServerFeatures) -> list[str]:
        return self.render(database, table, features)


MIGRATIONS = (
    Migration(1, "create events (ReplacingMergeTree on event_id)", _create_events),
    Migration(2, "add pii_salt_id_prev, clock_skew_seconds", _add_v2_columns),
)


def migrations_table_ddl(database: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {_quote(database)}.{MIGRATIONS_TABLE} "
            f"(version UInt32, description String, applied_at DateTime('UTC')) "
            f"ENGINE = MergeTree ORDER BY version")


def pending(applied: set[int], target: int | None = None) -> list[Migration]:
    """Migrations not yet applied, in order, up to ``target`` (default: all)."""
    return [m for m in MIGRATIONS if m.version not in applied and (target is None or m.version <= target)]


def columns_at(version: int) -> tuple[Column, ...]:
    """The stored columns once migrations up to ``version`` ran."""
    return V1_COLUMNS + (V2_COLUMNS if version >= 2 else ())


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type(), nullable=c.nullable) for c in columns])
