"""ClickHouse sink against the Debian server (18.16, native protocol) and the embedded chdb engine (26.x)."""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest

from sinks.base import ROW_COLUMNS, RetryPolicy
from sinks.clickhouse import ClickHouseWriter
from tests.sinkrows import make_rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chdb_dir(tmp_path_factory):
    # chdb allows one data path per process: every chdb test of this module shares it, one database each.
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture(params=["server", "chdb"])
def writer(request, devstack, chdb_dir):
    database = f"hw_test_{uuid.uuid4().hex[:10]}"
    if request.param == "server":
        url = f"clickhouse://127.0.0.1:{devstack.ports['clickhouse']}/{database}"
    else:
        url = f"chdb://{chdb_dir}?database={database}"
    w = ClickHouseWriter(url, retry=RetryPolicy(attempts=2, base_delay=0.05))
    yield w
    w.query(f"DROP DATABASE IF EXISTS {database}")
    w.close()


def test_replay_and_overlap_leave_one_row_per_event(writer):
    first, overlap = make_rows(0, 5000), make_rows(4000, 7000)
    writer.write(first)
    writer.write(first)  # replay after a crash
    writer.write(overlap)
    assert writer.count_final() == writer.distinct_event_ids() == 7000
    assert writer.count_raw() == 13000  # duplicates are stored until merged, hidden by FINAL


def test_columns_round_trip(writer):
    rows = make_rows(0, 40)
    writer.write(rows)
    names = ", ".join(f"`{c}`" for c in ROW_COLUMNS)
    got = {r[0]: dict(zip(ROW_COLUMNS, r)) for r in writer.query(f"SELECT {names} FROM {writer.qualified_table} FINAL")}
    subsecond = writer.features.datetime64
    for row in rows:
        back = got[row["event_id"]]
        for col in ROW_COLUMNS:
            want, have = row[col], back[col]
            if col in ("timestamp", "received_at"):
                want = want if subsecond else want.replace(microsecond=0)
                assert have == want and have.utcoffset().total_seconds() == 0, col
            elif col in ("properties", "context", "consent"):
                assert have == want and (want is None or json.loads(have) == json.loads(want)), col
            else:
                assert have == want, (col, want, have)
    assert any(r["user_id"] is None for r in rows) and any(r["city"] == "Zürich" for r in rows)


def test_migrations_are_versioned_and_idempotent(writer):
    assert writer.migrate(target_version=1) == [1]  # an older deployment's schema
    cols = {r[0] for r in writer.query(f"SELECT name FROM system.columns WHERE database = "
                                       f"'{writer.target.database}' AND table = 'events'")}
    assert "pii_salt_id_prev" not in cols and "event_id" in cols
    writer.write_batch(make_rows(0, 10))  # the old schema still takes writes (v1 columns only)
    assert writer.migrate() == [2]
    assert writer.migrate() == []
    assert writer.applied_versions() == {1, 2}
    cols = {r[0] for r in writer.query(f"SELECT name FROM system.columns WHERE database = "
                                       f"'{writer.target.database}' AND table = 'events'")}
    assert cols == set(ROW_COLUMNS)
    writer.write(make_rows(5, 20))
    assert writer.count_final() == 20


def test_rerun_after_crash_between_ddl_and_bookkeeping(writer):
    writer.migrate(target_version=1)
    db = writer.target.database
    writer.query(f"ALTER TABLE `{db}`.events ADD COLUMN pii_salt_id_prev Nullable(String)")  # DDL ran, not recorded
    assert writer.migrate() == [2]
    assert writer.applied_versions() == {1, 2}


def test_server_outage_is_retried_without_loss_or_duplicates(tmp_path, devstack):
    from headwater.devstack import Devstack

    stack = Devstack(root=tmp_path / "stack", ports={"clickhouse": _free_port(), "clickhouse_http": _free_port()})
    stack.up(["clickhouse"])
    restarter = None
    try:
        w = ClickHouseWriter(f"clickhouse://127.0.0.1:{stack.ports['clickhouse']}/analytics",
                             retry=RetryPolicy(attempts=40, base_delay=0.2, max_delay=1.0),
                             connect_timeout=1, send_receive_timeout=5)
        w.write(make_rows(0, 3000))
        stack.down(["clickhouse"])
        restarter = threading.Timer(1.5, lambda: stack.up(["clickhouse"]))
        restarter.start()
        started = time.monotonic()
        w.write(make_rows(2000, 6000))  # retried until the server is back
        assert time.monotonic() - started > 1.0
        restarter.join()
        w.write(make_rows(0, 3000))  # and a replay for good measure
        assert w.count_final() == w.distinct_event_ids() == 6000
        w.close()
    finally:
        if restarter is not None:
            restarter.join()
        stack.down(["clickhouse"])
