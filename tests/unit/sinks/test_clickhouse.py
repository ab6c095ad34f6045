"""ClickHouse sink without a server: URL parsing, DDL per server version, migration bookkeeping, column building."""
from __future__ import annotations

import datetime as dt

import pytest

from sinks.base import ROW_COLUMNS
from sinks.clickhouse import (ClickHouseError, ClickHouseTarget, ClickHouseWriter, _literal, _native_column,
                             _zero_filled)
from sinks.clickhouse_schema import (ALL_COLUMNS, MIGRATIONS, Column, ServerFeatures, columns_at,
                                     migrations_table_ddl, pending)

OLD, NEW = ServerFeatures.parse("18.16.1"), ServerFeatures.parse('"26.9.2.1"\n')


def test_every_row_column_is_stored_once():
    assert sorted(c.name for c in ALL_COLUMNS) == sorted(ROW_COLUMNS)


@pytest.mark.parametrize("url, expected", [
    ("clickhouse://127.0.0.1:29001/analytics", ("native", "analytics", "127.0.0.1", 29001, False)),
    ("clickhouse://ch.internal/db2", ("native", "db2", "ch.internal", 9000, False)),
    ("clickhouses://ch.example.com/analytics", ("native", "analytics", "ch.example.com", 9440, True)),
    ("clickhouses://ch.example.com:9441", ("native", "analytics", "ch.example.com", 9441, True)),
])
def test_native_urls(url, expected):
    t = ClickHouseTarget.parse(url)
    assert (t.engine, t.database, t.host, t.port, t.secure) == expected


def test_secure_setting_forces_tls_and_url_credentials_win():
    t = ClickHouseTarget.parse("clickhouse://bob:s%40cret@h:9440/a", secure=True)
    assert t.secure and t.user == "bob" and t.password == "s@cret"
    w = ClickHouseWriter("clickhouse://bob:pw@h/a", user="default", password="other")
    assert w.user == "bob" and w._password == "pw"


def test_chdb_urls():
    assert ClickHouseTarget.parse("chdb:///var/chdb").path == "/var/chdb"
    t = ClickHouseTarget.parse("chdb:///tmp/x?database=staging")
    assert (t.engine, t.path, t.database) == ("chdb", "/tmp/x", "staging")
    with pytest.raises(ClickHouseError):
        ClickHouseTarget.parse("chdb:///")
    with pytest.raises(ClickHouseError):
        ClickHouseTarget.parse("http://h/db")
    with pytest.raises(ClickHouseError):
        ClickHouseTarget.parse("clickhouse://h/a/b")


def test_from_settings_reads_credentials():
    from headwater.settings import load_settings

    s = load_settings({"HEADWATER_CLICKHOUSE_URL": "clickhouse://h:9000/analytics", "HEADWATER_CLICKHOUSE_USER": "u",
                       "HEADWATER_CLICKHOUSE_PASSWORD": "p", "HEADWATER_CLICKHOUSE_SECURE": "true"})
    w = ClickHouseWriter.from_settings(s)
    assert (w.user, w._password, w.target.secure, w.target.port) == ("u", "p", True, 9000)


def test_features_by_version():
    assert OLD.low_cardinality and OLD.low_cardinality_is_experimental and not OLD.datetime64
    assert OLD.ddl_settings() == {"allow_experimental_low_cardinality_type": 1}
    assert NEW.low_cardinality and not NEW.low_cardinality_is_experimental and NEW.datetime64
    assert NEW.ddl_settings() == {}
    ancient = ServerFeatures((1, 1))
    assert not ancient.low_cardinality and Column("e", "lowcard", True).ch_type(ancient) == "Nullable(String)"


def test_column_types_adapt_to_the_server():
    ts, country = Column("timestamp", "time"), Column("country", "lowcard", True)
    assert ts.ch_type(OLD) == "DateTime('UTC')"
    assert ts.ch_type(NEW) == "DateTime64(6, 'UTC')"
    assert country.ch_type(OLD) == country.ch_type(NEW) == "LowCardinality(Nullable(String))"


@pytest.mark.parametrize("features", [OLD, NEW])
def test_create_table_ddl(features):
    (sql,) = MIGRATIONS[0].statements("analytics", "events", features)
    assert sql.startswith("CREATE TABLE IF NOT EXISTS `analytics`.`events`")
    assert "ENGINE = ReplacingMergeTree(received_at)" in sql
    assert "ORDER BY event_id" in sql and "PARTITION BY toYYYYMM(event_date)" in sql
    assert ("DateTime64" in sql) == features.datetime64
    for forbidden in ("Map(", "JSON", "Object("):
        assert forbidden not in sql
    assert "pii_salt_id_prev" not in sql  # added by migration 2


def test_later_migration_adds_columns_one_statement_each():
    stmts = MIGRATIONS[1].statements("analytics", "events", OLD)
    assert len(stmts) == 2 and all(s.startswith("ALTER TABLE `analytics`.`events` ADD COLUMN") for s in stmts)
    assert "IF NOT EXISTS" not in " ".join(stmts)  # 18.16 cannot parse it


def test_pending_and_columns_at():
    assert [m.version for m in pending(set())] == [1, 2]
    assert [m.version for m in pending({1})] == [2]
    assert [m.version for m in pending(set(), target=1)] == [1]
    assert pending({1, 2}) == []
    assert len(columns_at(1)) + 2 == len(columns_at(2)) == len(ROW_COLUMNS)
    assert "ENGINE = MergeTree ORDER BY version" in migrations_table_ddl("analytics")


def test_column_values_fill_zero_values_only_where_not_nullable():
    assert _zero_filled(Column("event_id", "str"), ["a", None]) == ["a", ""]
    assert _zero_filled(Column("user_id", "str", True), [None]) == [None]
    assert _zero_filled(Column("timestamp", "time"), [None])[0].timestamp() == 0
    assert _zero_filled(Column("schema_version", "uint16", True), [None]) == [None]
    assert _zero_filled(Column("kafka_offset", "int64"), [None, 7]) == [0, 7]


def test_native_timestamps_are_integers_in_the_column_unit():
    when = dt.datetime(2026, 12, 3, 12, 0, 1, 750000, tzinfo=dt.timezone.utc)
    berlin = when.astimezone(dt.timezone(dt.timedelta(hours=1)))  # the same instant, another offset
    column = Column("timestamp", "time")
    assert _native_column(column, [when, berlin, None], OLD) == [int(when.timestamp())] * 2 + [0]
    assert _native_column(column, [when], NEW) == [int(when.timestamp()) * 10**6 + 750000]
    assert _native_column(Column("city", "str", True), ["Zürich", None], OLD) == ["Zürich", None]


def test_literals_are_escaped():
    assert _literal(3) == "3"
    assert _literal("it's \\ ok") == "'it\\'s \\\\ ok'"
    assert _literal(dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)) == "'2026-01-02 03:04:05'"


def test_retryable_errors():
    from clickhouse_driver import errors

    w = ClickHouseWriter("clickhouse://h/a")
    assert w.retryable(errors.NetworkError("down"))
    assert w.retryable(errors.SocketTimeoutError("slow"))
    assert w.retryable(ConnectionRefusedError())
    assert w.retryable(errors.ServerException("too many parts", code=252))
    assert not w.retryable(errors.ServerException("syntax", code=62))
    assert not w.retryable(ValueError("bad row"))
