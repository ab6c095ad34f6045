"""Snowflake sink without a server: URL parsing, credentials, staging Parquet files, SQL text."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sinks.base import ROW_COLUMNS
from sinks.snowflake import (COLUMNS, SnowflakeConfigError, SnowflakeTarget, SnowflakeWriter, dedup_batch,
                             events_ddl, load_private_key, merge_sql, staging_ddl, write_staging_file)
from tests.sinkrows import make_row, make_rows

URL = "snowflake://headwater@fakesnow/analytics/public?host=127.0.0.1&port=29100&protocol=http"


def test_url_parsing():
    t = SnowflakeTarget.parse(URL)
    assert (t.user, t.account, t.database, t.schema) == ("headwater", "fakesnow", "ANALYTICS", "PUBLIC")
    assert t.connect_args() == {"user": "headwater", "account": "fakesnow", "host": "127.0.0.1", "port": 29100,
                                "protocol": "http"}
    assert t.qualified("EVENTS") == "ANALYTICS.PUBLIC.EVENTS"


def test_url_defaults_and_options():
    t = SnowflakeTarget.parse("snowflake://loader@MyOrg-Acct1/Analytics?warehouse=LOAD_WH&role=LOADER")
    assert (t.account, t.database, t.schema) == ("MyOrg-Acct1", "ANALYTICS", "PUBLIC")
    assert t.connect_args()["warehouse"] == "LOAD_WH" and t.connect_args()["role"] == "LOADER"


@pytest.mark.parametrize("bad", [
    "snowflake://acct/DB", "snowflake://u@acct", "snowflake://u@acct/A/B/C", "postgres://u@acct/DB",
    "snowflake://u@acct/DB?colour=blue", "snowflake://u@acct/DB?port=x",
])
def test_bad_urls(bad):
    with pytest.raises(SnowflakeConfigError):
        SnowflakeTarget.parse(bad)


def test_credentials_required_and_from_settings():
    with pytest.raises(SnowflakeConfigError):
        SnowflakeWriter(URL)
    from headwater.settings import load_settings

    s = load_settings({"HEADWATER_SNOWFLAKE_URL": URL, "HEADWATER_SNOWFLAKE_PASSWORD": "pw"})
    w = SnowflakeWriter.from_settings(s)
    assert w._password == "pw" and w.table == "ANALYTICS.PUBLIC.EVENTS"


def test_private_key_pem_becomes_der():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    der = load_private_key(pem)
    assert serialization.load_der_private_key(der, None).private_numbers() == key.private_numbers()


def test_dedup_batch_keeps_latest_receive():
    a, b = make_row(1), make_row(2)
    later = dict(a, received_at=a["received_at"].replace(year=2027), city="later")
    out = dedup_batch([a, b, later, b])
    assert [r["event_id"] for r in out] == [a["event_id"], b["event_id"]]
    assert out[0]["city"] == "later"
    unique = [a, b]
    assert dedup_batch(unique) is unique  # nothing to drop: no copy


def test_staging_file_types_and_values(tmp_path):
    rows = make_rows(0, 50)
    path = write_staging_file(rows, tmp_path, "b1")
    assert path.name == "batch-b1.parquet"
    table = pq.read_table(path)
    assert table.column_names == [c.upper() for c in ROW_COLUMNS] + ["BATCH_ID"]
    assert str(table.schema.field("TIMESTAMP").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("EVENT_DATE").type) == "date32[day]"
    assert str(table.schema.field("KAFKA_OFFSET").type) == "int64"
    back = table.to_pylist()
    assert back[7]["TIMESTAMP"] == rows[7]["timestamp"]
    assert json.loads(back[3]["PROPERTIES"])["name"] == "Grüße ✓"
    assert back[0]["USER_ID"] is None and back[0]["CONSENT"] is None
    assert {r["BATCH_ID"] for r in back} == {"b1"}


def test_ddl_and_merge_text():
    t = SnowflakeTarget.parse(URL)
    ddl = events_ddl(t)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS ANALYTICS.PUBLIC.EVENTS")
    assert "PROPERTIES VARIANT" in ddl and "EVENT_ID VARCHAR NOT NULL" in ddl
    assert "PRIMARY KEY" not in ddl and "UNIQUE" not in ddl  # never relied upon
    assert "PROPERTIES VARCHAR" in staging_ddl(t) and "BATCH_ID VARCHAR" in staging_ddl(t)
    merge = merge_sql(t, "abc")
    assert merge.startswith("MERGE INTO ANALYTICS.PUBLIC.EVENTS t USING (")
    assert "ON t.EVENT_ID = s.EVENT_ID" in merge and "WHEN NOT MATCHED THEN INSERT (EVENT_ID, " in merge
    assert "WHEN MATCHED" not in merge and "BATCH_ID = 'abc'" in merge
    assert "PARSE_JSON(CONSENT) AS CONSENT" in merge
    assert len(COLUMNS) == len(ROW_COLUMNS)


def test_retryable_errors():
    from snowflake.connector import errors

    w = SnowflakeWriter(URL, password="x")
    assert w.retryable(errors.OperationalError(msg="could not connect", errno=250001))
    assert w.retryable(ConnectionResetError())
    assert w.retryable(errors.DatabaseError(msg="401 Unauthorized", errno=290401, sqlstate="08001"))
    assert not w.retryable(errors.ProgrammingError(msg="syntax", errno=1003, sqlstate="42000"))
    assert not w.retryable(ValueError("bad"))
