"""The durable offline queue: one SQLite file (WAL) holding queued events, sealed batches, the failure log
and a few persisted settings (anonymous id, user id, consent).

An event is written before ``track`` returns. Sending *seals* a batch first: its events, the request body
(``sent_at`` included) and its ``Idempotency-Key`` are stored together, so every retry, also after a restart,
sends the same body under the same key. A batch leaves the queue only when the gateway answered it or its
events were moved to the failure log. One process owns a queue file at a time.
"""
from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater_client import wire

# Below the gateway's default 512 KiB body limit even if gzip does not help.
MAX_BODY_BYTES = 500 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    batch_id TEXT,
    enqueued_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_batch ON events (batch_id, seq);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    signed_at INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    errors TEXT NOT NULL,
    failed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class SealedBatch:
    """A batch ready to send: ``body`` is the uncompressed JSON, ``event_ids`` in request order."""

    batch_id: str
    idempotency_key: str
    body: bytes
    event_ids: list[str]
    attempts: int
    signed_at: int


def default_queue_path(device_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id)[:100] or "default"
    return Path.home() / ".cache" / "headwater" / f"queue-{safe}.sqlite3"


class EventQueue:
    """:param path: the SQLite file (created with its parent directory)"""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process dying; only an OS crash can lose the latest ones.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Kept in memory: counting rows on every append would make track() slower as the queue grows.
        self._unsealed = self._db.execute("SELECT count(*) FROM events WHERE batch_id IS NULL").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- settings -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                                 " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    # --- events ---------------------------------------------------------------------------------
    def append(self, event_id: str, payload: bytes) -> int:
        """Store one encoded event durably; returns how many events wait unsealed."""
        with self._lock:
            self._db.execute("INSERT INTO events (event_id, payload, enqueued_at) VALUES (?, ?, ?)",
                             (event_id, payload, time.time()))
            self._unsealed += 1
            return self._unsealed

    def pending(self) -> int:
        """Events still in the queue, sealed or not."""
        with self._lock:
            return self._db.execute("SELECT count(*) FROM events").fetchone()[0]

    def clear(self) -> int:
        """Delete every queued event and batch (consent withdrawn); returns how many events went."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._db.execute("DELETE FROM events").rowcount
                self._db.execute("DELETE FROM batches")
                self._db.execute("DELETE FROM failures")
                self._db.execute("COMMIT")
                self._unsealed = 0
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return count

    # --- batches --------------------------------------------------------------------------------
    def sealed(self) -> list[str]:
        """Ids of sealed batches, oldest first (those left over from a previous run come first)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT batch_id FROM batches ORDER BY created_at, rowid")]

    def seal(self, max_events: int, analytics_consent: bool = True,
             max_bytes: int = MAX_BODY_BYTES) -> SealedBatch | None:
        """Turn the oldest unsealed events (at most ``max_events``, and at most ``max_bytes`` of JSON unless a
        single event is larger) into a batch with a fresh Idempotency-Key."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT seq, event_id, payload FROM events WHERE batch_id IS NULL"
                                        " ORDER BY seq LIMIT ?", (max_events,)).fetchall()
                if not rows:
                    self._db.execute("COMMIT")
                    return None
                size, keep = 0, 0
                for _, _, payload in rows:
                    size += len(payload) + 1
                    if keep and size > max_bytes:
                        break
                    keep += 1
                rows = rows[:keep]
                batch_id = uuid.uuid4().hex
                key = f"hw-{uuid.uuid4()}"
                body = wire.batch_body([r[2] for r in rows], wire.rfc3339(), analytics_consent)
                self._db.execute("INSERT INTO batches (batch_id, idempotency_key, body, created_at)"
                                 " VALUES (?, ?, ?, ?)", (batch_id, key, body, time.time()))
                self._db.executemany("UPDATE events SET batch_id = ? WHERE seq = ?",
                                     [(batch_id, r[0]) for r in rows])
                self._db.execute("COMMIT")
                self._unsealed -= len(rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return SealedBatch(batch_id, key, body, [r[1] for r in rows], 0, 0)

    def unseal(self, batch_id: str) -> None:
        """Give a batch's events back to the queue (the gateway refused it as too large, publishing nothing)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._db.execute("UPDATE events SET batch_id = NULL WHERE batch_id = ?",
                                         (batch_id,)).rowcount
                self._db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
                self._db.execute("COMMIT")
                self._unsealed += count
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load(self, batch_id: str) -> SealedBatch | None:
        with self._lock:
            row = self._db.execute("SELECT idempotency_key, body, attempts, signed_at FROM batches"
                                   " WHERE batch_id = ?", (batch_id,)).fetchone()
            if row is None:
                return None
            ids = [r[0] for r in self._db.execute("SELECT event_id FROM events WHERE batch_id = ? ORDER BY seq",
                                                  (batch_id,))]
        return SealedBatch(batch_id, row[0], row[1], ids, row[2], row[3])

    def record_attempt(self, batch_id: str, signed_at: int, error: str | None = None,
                       counts: bool = True) -> None:
        """Remember the signing time (so the next attempt signs later) and, for a failed attempt, the error."""
        with self._lock:
            self._db.execute("UPDATE batches SET attempts = attempts + ?, signed_at = ?,"
                             " last_error = coalesce(?, last_error) WHERE batch_id = ?",
                             (1 if counts else 0, signed_at, error, batch_id))

    def finish(self, batch_id: str, failures: list[tuple[int, str, list[str]]] = ()) -> int:
        """Remove an answered batch. ``failures`` are ``(index in batch, reason, errors)`` of events that go
        to the failure log instead of vanishing. Returns how many events were removed (0 after an opt-out)."""
        now = wire.rfc3339()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT event_id, payload FROM events WHERE batch_id = ? ORDER BY seq",
                                        (batch_id,)).fetchall()
                failed = [(rows[i][0], rows[i][1], reason, wire.dumps(errors).decode(), now)
                          for i, reason, errors in failures if 0 <= i < len(rows)]
                self._db.executemany("INSERT INTO failures (event_id, payload, reason, errors, failed_at)"
                                     " VALUES (?, ?, ?, ?, ?)", failed)
                self._db.execute("DELETE FROM events WHERE batch_id = ?", (batch_id,))
                self._db.execute("DELETE FROM batches WHERE batch_id = ?", (batch_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    # --- failure log ----------------------------------------------------------------------------
    def failures(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT event_id, payload, reason, errors, failed_at FROM failures"
                                    " ORDER BY id").fetchall()
        return [{"event_id": r[0], "reason": r[2], "errors": wire.loads(r[3]), "failed_at": r[4],
                 "event": wire.loads(r[1])} for r in rows]
