"""A JSON answer that needs no web framework to send: what the ingest endpoints build.

The native endpoint is served by a plain ASGI handler (see :mod:`ingest_gateway.collect`): it sends an
:class:`Answer` itself, two ASGI messages, while a Starlette route turns it into a ``Response``.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.responses import Response

_JSON = b"application/json"


class Answer:
    """Status, JSON body and extra headers of a response.

    :param status_code: the HTTP status
    :param body: the JSON document, already encoded
    :param headers: headers besides ``Content-Type`` and ``Content-Length`` (added when sent)
    """

    __slots__ = ("status_code", "body", "headers")

    def __init__(self, status_code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.headers: dict[str, str] = headers if headers is not None else {}

    def to_response(self) -> Response:
        """The same answer as a Starlette ``Response``."""
        return Response(self.body, self.status_code, headers=self.headers, media_type="application/json")

    async def send(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Send it on an ASGI ``send`` channel, with the headers a Starlette ``Response`` would have."""
        raw = [(b"content-length", str(len(self.body)).encode()), (b"content-type", _JSON)]
        for name, value in self.headers.items():
            raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})
