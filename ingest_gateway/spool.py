"""A durable, ordered, bounded on-disk queue of batches: where accepted events wait while Kafka is away.

Layout of a spool directory::

    lock                       flock-held by the one process that owns this spool
    seg-000000000001.log       append-only segments of records: [u32 length][u32 crc32][payload]
    seg-000000000002.log
    cursor                     "<segment> <offset>": the first record not yet delivered

``append`` returns only after the record is fsynced, so an accepted batch survives a crash of the process or
the machine. Records are read back strictly in append order; ``commit`` moves the cursor past a delivered
record (written atomically: temp file, fsync, rename) and deletes segments left behind. A torn record at the
tail (power lost mid-write) is cut off when the spool is opened again: it was never acknowledged to a client.
"""
from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct(">II")
_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".log"


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already; the caller must refuse the batch (503)."""


class SpoolLocked(Exception):
    """Another process owns this spool directory."""


@dataclass(frozen=True)
class Position:
    """Where a record sits: its segment, its offset and the offset just past it."""

    segment: int
    offset: int
    end: int


def _segment_name(seq: int) -> str:
    return f"{_SEGMENT_PREFIX}{seq:012d}{_SEGMENT_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Thread-safe; one owner process per directory (enforced with ``flock``).

    :param directory: where the segments live (created if missing)
    :param max_bytes: bound on undelivered bytes; ``append`` beyond it raises :class:`SpoolFull`
    :param segment_bytes: a segment is closed and a new one started once it reaches this size
    :raises SpoolLocked: when another live process holds the directory
    """

    def __init__(self, directory: str | Path, max_bytes: int, segment_bytes: int = 8 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"{self.directory} is in use by another process") from None
        self._pending_bytes = 0
        self._pending_records = 0
        self._recover()

    # --- opening --------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        out = []
        for p in self.directory.iterdir():
            if p.name.startswith(_SEGMENT_PREFIX) and p.name.endswith(_SEGMENT_SUFFIX):
                out.append(int(p.name[len(_SEGMENT_PREFIX):-len(_SEGMENT_SUFFIX)]))
        return sorted(out)

    def _recover(self) -> None:
        segments = self._segments()
        seq, offset = self._read_cursor()
        for old in [s for s in segments if s < seq]:
            (self.directory / _segment_name(old)).unlink()
        segments = [s for s in segments if s >= seq]
        if not segments:
            seq, offset = (seq, 0) if seq else (1, 0)
            segments = [seq]
            (self.directory / _segment_name(seq)).touch()
            _fsync_dir(self.directory)
        elif segments[0] != seq:
            seq, offset = segments[0], 0
        self._read_seq, self._read_offset = seq, offset
        for s in segments:
            start = offset if s == seq else 0
            valid_end, records = self._scan(s, start)
            path = self.directory / _segment_name(s)
            if valid_end < path.stat().st_size:
                with open(path, "r+b") as fh:  # cut off a torn or corrupt tail
                    fh.truncate(valid_end)
                    os.fsync(fh.fileno())
            self._pending_bytes += valid_end - start
            self._pending_records += records
        self._write_seq = segments[-1]
        self._writer = open(self.directory / _segment_name(self._write_seq), "ab")
        self._write_size = self._writer.tell()

    def _scan(self, seq: int, offset: int) -> tuple[int, int]:
        """Offset after the last intact record of a segment, and how many records lie past ``offset``."""
        records = 0
        with open(self.directory / _segment_name(seq), "rb") as fh:
            fh.seek(offset)
            while True:
                header = fh.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return offset, records
                length, crc = _HEADER.unpack(header)
                payload = fh.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    return offset, records
                offset += _HEADER.size + length
                records += 1

    def _read_cursor(self) -> tuple[int, int]:
        try:
            seq, offset = (self.directory / "cursor").read_text().split()
            return int(seq), int(offset)
        except (OSError, ValueError):
            return 0, 0

    # --- writing --------------------------------------------------------------------------
    def append(self, payload: bytes) -> None:
        """Add one record and fsync it. :raises SpoolFull: when it would pass ``max_bytes``."""
        size = _HEADER.size + len(payload)
        with self._lock:
            if self._pending_bytes + size > self.max_bytes:
                raise SpoolFull(f"spool holds {self._pending_bytes} bytes; the bound is {self.max_bytes}")
            if self._write_size >= self.segment_bytes:
                self._roll()
            self._writer.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._write_size += size
            self._pending_bytes += size
            self._pending_records += 1

    def _roll(self) -> None:
        self._writer.close()
        self._write_seq += 1
        self._writer = open(self.directory / _segment_name(self._write_seq), "ab")
        self._write_size = 0
        _fsync_dir(self.directory)

    # --- reading --------------------------------------------------------------------------
    def peek(self) -> tuple[Position, bytes] | None:
        """The oldest undelivered record, or None when the spool is empty."""
        with self._lock:
            while True:
                path = self.directory / _segment_name(self._read_seq)
                with open(path, "rb") as fh:
                    fh.seek(self._read_offset)
                    header = fh.read(_HEADER.size)
                    if len(header) == _HEADER.size:
                        length, crc = _HEADER.unpack(header)
                        payload = fh.read(length)
                        if len(payload) == length and zlib.crc32(payload) == crc:
                            end = self._read_offset + _HEADER.size + length
                            return Position(self._read_seq, self._read_offset, end), payload
                if self._read_seq >= self._write_seq:
                    return None
                self._advance_segment()

    def commit(self, position: Position) -> None:
        """Mark the record at ``position`` delivered (durably)."""
        with self._lock:
            if (position.segment, position.offset) != (self._read_seq, self._read_offset):
                raise ValueError(f"commit out of order: {position} is not the oldest record")
            self._read_offset = position.end
            self._pending_bytes -= position.end - position.offset
            self._pending_records -= 1
            if self._read_seq < self._write_seq and self._read_offset >= self._segment_size(self._read_seq):
                self._advance_segment()
            else:
                self._write_cursor()

    def _segment_size(self, seq: int) -> int:
        return (self.directory / _segment_name(seq)).stat().st_size

    def _advance_segment(self) -> None:
        done = self._read_seq
        self._read_seq, self._read_offset = done + 1, 0
        self._write_cursor()
        (self.directory / _segment_name(done)).unlink(missing_ok=True)

    def _write_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{self._read_seq} {self._read_offset}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / "cursor")

    # --- state ----------------------------------------------------------------------------
    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def __len__(self) -> int:
        return self._pending_records

    def close(self) -> None:
        with self._lock:
            if self._lock_fd < 0:
                return
            self._writer.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1


def open_free_spool(root: str | Path, max_bytes: int, slots: int = 64) -> Spool:
    """Open the first spool slot under ``root`` that no live process holds.

    Each worker process owns one slot; a slot left behind by a worker that died (its lock dies with it) is
    picked up by the next worker to start, which drains whatever the dead one had spooled.
    """
    for slot in range(slots):
        try:
            return Spool(Path(root) / f"slot-{slot}", max_bytes)
        except SpoolLocked:
            continue
    raise SpoolLocked(f"all {slots} spool slots under {root} are in use")
