"""Consent: events whose subject did not consent to analytics are dropped at the edge (counted ``no_consent``).

Two sources of "no":

- the request or the event says so: ``"consent": {"analytics": false}`` on the batch applies to all of its
  events, on an event to that event;
- the server-side opt-out registry: a subject id (``user_id``, ``anonymous_id`` or ``device_id``) recorded
  through the admin API. The registry is a table (PostgreSQL, or SQLite when embedded); each worker keeps a
  snapshot in memory, reloaded every few seconds, so a check costs a set look-up. A change made through this
  worker's API applies at once; other workers see it at their next reload.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from ingest_gateway.sqlstore import SqlStore

log = logging.getLogger("headwater.gateway.consent")

TABLE = "analytics_optout"
SUBJECT_FIELDS = ("user_id", "anonymous_id", "device_id")
MAX_SUBJECT_ID = 256

_DDL = {
    "postgres": [f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        subject_id TEXT PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())"""],
    "sqlite": [f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        subject_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL)"""],
}


class OptOutRegistry:
    """:param store: the gateway's SQL store; :param refresh_seconds: snapshot reload period"""

    def __init__(self, store: SqlStore, refresh_seconds: float = 5.0) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._subjects: frozenset[str] = frozenset()
        self._task: asyncio.Task | None = None

    def setup(self) -> None:
        self._store.script(_DDL[self._store.dialect])
        self.reload()

    def reload(self) -> None:
        self._subjects = frozenset(row[0] for row in self._store.fetchall(f"SELECT subject_id FROM {TABLE}"))

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="optout-refresh")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self._store.run(self.reload)
            except Exception as exc:  # keep the last snapshot; the next reload may work
                log.warning("could not reload the opt-out registry: %s", exc)

    def __len__(self) -> int:
        return len(self._subjects)

    def blocks(self, event: dict[str, Any]) -> bool:
        """Whether any subject id of ``event`` has opted out."""
        subjects = self._subjects
        if not subjects:
            return False
        for name in SUBJECT_FIELDS:
            value = event.get(name)
            if value is not None and value in subjects:
                return True
        return False

    # --- the admin API's operations ---------------------------------------------------------
    async def add(self, subject_id: str) -> bool:
        """Record an opt-out; True when it is new."""
        now = dt.datetime.now(dt.timezone.utc)
        created_at = now if self._store.dialect == "postgres" else now.isoformat()
        count = await self._store.run(self._store.execute,
                                      f"INSERT INTO {TABLE} (subject_id, created_at) VALUES (%s, %s)"
                                      " ON CONFLICT (subject_id) DO NOTHING", (subject_id, created_at))
        self._subjects = self._subjects | {subject_id}
        return count == 1

    async def remove(self, subject_id: str) -> bool:
        """Withdraw an opt-out; True when there was one."""
        count = await self._store.run(self._store.execute, f"DELETE FROM {TABLE} WHERE subject_id = %s",
                                      (subject_id,))
        self._subjects = self._subjects - {subject_id}
        return count == 1

    async def get(self, subject_id: str) -> str | None:
        """When the subject opted out (RFC 3339), or None."""
        rows = await self._store.run(self._store.fetchall,
                                     f"SELECT created_at FROM {TABLE} WHERE subject_id = %s", (subject_id,))
        if not rows:
            return None
        created = rows[0][0]
        return created.isoformat() if isinstance(created, dt.datetime) else str(created)
