"""A minimal Redis client for the one call on the hot path: the admission script, once per request.

redis-py spends about 100 µs of CPU per command (connection checkout, retry and timeout wrappers, packing,
a general reply parser); for the single ``EVALSHA`` each collect request makes, that was a large share of
the gateway's time. This client does only what that call needs: a pool of asyncio connections (opened on
demand, with ``AUTH`` and ``SELECT``, TLS for ``rediss://``), commands packed in one write, and a reply
parser for the RESP2 types. Everything else keeps using redis-py.

Failures raise redis-py's own exceptions (``ConnectionError``, ``TimeoutError``, ``ResponseError``, all
``RedisError``), so callers map them exactly as before (503 ``dependency_unavailable``).
"""
from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RespPool", "Script"]

_CRLF = b"\r\n"


def pack(args: tuple[bytes | str | int, ...]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    """One reply: bytes, int, None (nil), a list, or a ``ResponseError`` instance for an error reply."""
    line = await reader.readuntil(_CRLF)
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return (await reader.readexactly(size + 2))[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return rest
    if kind == b"-":
        return ResponseError(rest.decode("utf-8", "replace"))
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [await _read_reply(reader) for _ in range(count)]
    raise RedisConnectionError(f"unexpected reply from Redis: {line[:40]!r}")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class Script:
    """A Lua script run by its SHA1, loaded again by ``EVAL`` when the server does not know it."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


class RespPool:
    """Connections to one Redis server, opened on demand and kept for reuse.

    :param url: ``redis://[user:password@]host[:port][/db]`` or ``rediss://`` for TLS
    :param timeout: seconds allowed for connecting and for each command
    :param max_idle: connections kept open between bursts; more are opened under load and closed after
    """

    def __init__(self, url: str, timeout: float = 2.0, max_idle: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} (redis:// or rediss://)")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._db = int(parts.path.lstrip("/") or 0)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    @staticmethod
    def supports(url: str) -> bool:
        """Whether this client can talk to ``url`` (else the caller keeps redis-py for it)."""
        return urlsplit(url).scheme in ("redis", "rediss")

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from None
        conn = _Connection(reader, writer)
        try:
            setup = []
            if self._password is not None:
                setup.append(("AUTH", self._username, self._password) if self._username else
                             ("AUTH", self._password))
            if self._db:
                setup.append(("SELECT", self._db))
            for command in setup:
                writer.write(pack(command))
                reply = await _read_reply(reader)
                if isinstance(reply, ResponseError):
                    raise RedisConnectionError(f"Redis refused {command[0]}: {reply}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def execute(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply. :raises RedisError: (a subclass) on any failure"""
        payload = pack(args)
        # A connection that sat idle may have been closed by the server (its ``timeout`` setting); such a
        # connection fails before anything was run, so that one case is tried again on a new connection.
        while self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, payload)
            except _StaleConnection:
                continue
        return await self._exchange(await self._with_timeout(self._open()), payload, fresh=True)

    async def _with_timeout(self, awaitable):
        try:
            async with asyncio.timeout(self._timeout):
                return await awaitable
        except TimeoutError:
            raise RedisTimeoutError(f"Redis did not answer within {self._timeout} s") from None

    async def _exchange(self, conn: _Connection, payload: bytes, fresh: bool = False) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                conn.writer.write(payload)
                reply = await _read_reply(conn.reader)
        except TimeoutError:
            conn.close()
            raise RedisTimeoutError(f"Redis did not answer within {self._timeout} s") from None
        except asyncio.IncompleteReadError as exc:
            conn.close()
            if not exc.partial and not fresh:
                raise _StaleConnection() from None
            raise RedisConnectionError("Redis closed the connection") from None
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            if isinstance(exc, ConnectionResetError) and not fresh:
                raise _StaleConnection() from None
            raise RedisConnectionError(f"Redis connection failed: {exc}") from None
        except BaseException:  # cancelled mid-command: the reply would be read by the next user
            conn.close()
            raise
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def run_script(self, script: Script, keys: list[bytes | str], args: list[bytes | str | int]) -> Any:
        """``EVALSHA``, and ``EVAL`` (which also caches it) when the server answers ``NOSCRIPT``."""
        try:
            return await self.execute(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute(b"EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _StaleConnection(Exception):
    """An idle connection turned out closed before the command reached Redis."""
