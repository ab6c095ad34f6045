"""One kept-alive HTTP(S) connection to the gateway (``http.client``), reopened when it breaks."""
from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


class Offline(Exception):
    """The gateway could not be reached at all: nothing was sent."""


class LostAnswer(Exception):
    """The request may have reached the gateway but no answer came back (timeout, dropped connection)."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds the gateway asked us to wait (delta-seconds or an HTTP date), or None."""
        value = self.headers.get("retry-after")
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        return max(0.0, when - (time.time() if now is None else now))

    def server_time(self) -> float | None:
        """The gateway's clock from its ``Date`` header, when it sent one."""
        try:
            return email.utils.parsedate_to_datetime(self.headers["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return None


class Transport:
    """:param base_url: ``http(s)://host[:port][/prefix]``; requests go to ``{base_url}{path}``
    :param ssl_context: for https (the system's default trust store when None)"""

    def __init__(self, base_url: str, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway url must be http(s)://host[:port], got {base_url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._ssl = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # whether the open connection already carried a request

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout,
                    context=self._ssl or ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise Offline(f"cannot connect to {self._host}:{self._port}: {exc}") from None
            self._conn, self._used = conn, False
        self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, path: str, body: bytes, headers: dict[str, str], timeout: float | None = None) -> Answer:
        """Send one request and read the whole answer.

        :raises Offline: when no connection could be made
        :raises LostAnswer: when the request went out (or may have) but no complete answer came back
        """
        timeout = self._timeout if timeout is None else timeout
        for fresh_retry in (True, False):
            conn = self._open(timeout)
            reused = self._used
            try:
                conn.request("POST", self._prefix + path, body=body, headers=headers)
                self._used = True
                response = conn.getresponse()
                data = response.read()
            except (socket.timeout, TimeoutError) as exc:
                self.close()
                raise LostAnswer(f"no answer within {timeout:g} s") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the server had already closed: resend once on a new one.
                if reused and fresh_retry and isinstance(exc, (http.client.RemoteDisconnected,
                                                               ConnectionResetError, BrokenPipeError)):
                    continue
                raise LostAnswer(f"connection failed during the request: {exc!r}") from exc
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
            if response.will_close:
                self.close()
            return answer
        raise AssertionError("unreachable")
