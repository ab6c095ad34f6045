"""Plan tiers from the embedded SQLite store: hits, batched misses, unknown users, TTL expiry, DB errors."""
from __future__ import annotations

import sqlite3

import pytest

from enrichers.metrics import ENRICH_CACHE, ENRICH_ERRORS
from enrichers.plan_tier import ANONYMOUS, UNKNOWN, PlanTierLookup, SqliteAccountStore
from tests.flowkit import make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(SqliteAccountStore):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []

    def fetch(self, user_ids):
        self.calls.append(list(user_ids))
        return super().fetch(user_ids)


def seed(path, rows):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS accounts (user_id TEXT PRIMARY KEY, plan_tier TEXT, updated_at TEXT)")
        conn.executemany("INSERT OR REPLACE INTO accounts VALUES (?, ?, '2026-12-01T00:00:00Z')", rows)


def metric(counter, **labels) -> float:
    return counter.labels(**labels)._value.get()


@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "accounts.sqlite3"
    seed(path, [("u1", "pro"), ("u2", "free"), ("u3", "enterprise")])
    s = CountingStore(path)
    yield s
    s.close()


def test_misses_of_a_batch_cost_one_query_and_hits_none(store):
    clock = Clock()
    lookup = PlanTierLookup(store, ttl_seconds=60, clock=clock)
    hits0 = metric(ENRICH_CACHE, cache="plan_tier", result="hit")
    assert lookup.lookup_many(["u1", "u2", "u1", "nobody", None]) == {
        "u1": "pro", "u2": "free", "nobody": UNKNOWN, None: ANONYMOUS}
    assert store.calls == [["u1", "u2", "nobody"]]
    assert lookup.lookup_many(["u2", "nobody", "u1"]) == {"u2": "free", "nobody": UNKNOWN, "u1": "pro"}
    assert len(store.calls) == 1  # unknown users are cached too
    assert metric(ENRICH_CACHE, cache="plan_tier", result="hit") - hits0 == 3


def test_entries_expire_after_the_ttl(store, tmp_path):
    clock = Clock()
    lookup = PlanTierLookup(store, ttl_seconds=60, clock=clock)
    assert lookup.lookup_many(["u1"]) == {"u1": "pro"}
    seed(tmp_path / "accounts.sqlite3", [("u1", "enterprise")])
    clock.now += 59
    assert lookup.lookup_many(["u1"]) == {"u1": "pro"}
    clock.now += 2
    assert lookup.lookup_many(["u1"]) == {"u1": "enterprise"}
    assert len(store.calls) == 2


def test_misses_beyond_the_cap_are_unknown_for_this_batch_and_not_cached(store):
    lookup = PlanTierLookup(store, max_query_ids=2, clock=Clock())
    overflow0 = metric(ENRICH_ERRORS, enricher="plan_tier", reason="overflow")
    assert lookup.lookup_many(["u1", "u2", "u3"]) == {"u1": "pro", "u2": "free", "u3": UNKNOWN}
    assert store.calls == [["u1", "u2"]]
    assert metric(ENRICH_ERRORS, enricher="plan_tier", reason="overflow") - overflow0 == 1
    assert lookup.lookup_many(["u3"]) == {"u3": "enterprise"}


def test_database_errors_give_unknown_then_back_off_then_recover(tmp_path):
    path = tmp_path / "broken.sqlite3"
    path.write_bytes(b"this is not a sqlite database at all" * 100)
    clock = Clock()
    store = CountingStore(path)
    lookup = PlanTierLookup(store, retry_after_seconds=5, clock=clock)
    errors0 = metric(ENRICH_ERRORS, enricher="plan_tier", reason="db_error")
    assert lookup.lookup_many(["u1"]) == {"u1": UNKNOWN}
    assert lookup.lookup_many(["u1"]) == {"u1": UNKNOWN}  # backing off: no second query
    assert len(store.calls) == 1
    assert metric(ENRICH_ERRORS, enricher="plan_tier", reason="db_error") - errors0 == 2
    path.unlink()
    seed(path, [("u1", "pro")])
    clock.now += 6
    assert lookup.lookup_many(["u1"]) == {"u1": "pro"}  # errors were not cached


def test_from_settings_uses_sqlite_under_the_data_dir(tmp_path):
    settings = make_settings(tmp_path)
    seed(tmp_path / "accounts.sqlite3", [("u9", "team")])
    lookup = PlanTierLookup.from_settings(settings)
    assert isinstance(lookup.store, SqliteAccountStore)
    assert lookup.lookup_many(["u9", "u10"]) == {"u9": "team", "u10": UNKNOWN}
    lookup.close()
