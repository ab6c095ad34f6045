"""Reading, inflating and parsing a ``POST /analytics/collect`` body, within hard limits.

Every limit is checked before the work it guards: the compressed size while the body streams in, the
inflated size while gzip inflates (``zlib`` ``max_length``, so a gzip bomb costs at most the limit in memory
and time), and the event count before any event is looked at. Failures are :class:`BodyError` with an HTTP
status and a machine-readable ``code``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterable

import orjson

from schemas.formats import is_date_time
from schemas.spans import item_members

try:  # zlib-ng inflates the same streams in about half the instructions of the system zlib
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - a platform without its wheel
    import zlib  # type: ignore[no-redef]

_BATCH = (b"batch",)
_CONTEXT = (b"context",)
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_DEFLATE_WBITS = zlib.MAX_WBITS


class BodyError(Exception):
    """A request body the gateway refuses as a whole.

    :param status: HTTP status to answer with (400, 411, 413 or 415)
    :param code: machine-readable reason, stable for clients
    :param message: human-readable detail
    """

    def __init__(self, status: int, code: str, message: str):
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class Batch:
    """A parsed collect request: the events are still unvalidated JSON values.

    From :func:`split_batch`, also each event's own JSON text as the client wrote it (``texts``) and its
    ``context``'s text (``contexts``, ``None`` for an event without one); such an event's decoded ``context`` is
    then ``None``: it was not decoded.
    """

    events: list[Any]
    sent_at: str | None
    consent: dict[str, Any] | None
    size: int
    texts: list[bytes] | None = None
    contexts: list[bytes | None] | None = None

    @property
    def analytics_consent(self) -> bool:
        return not (self.consent is not None and self.consent.get("analytics") is False)


async def read_body(chunks: AsyncIterable[bytes], content_length: str | None, limit: int) -> bytes:
    """Collect the raw body, refusing it as soon as it exceeds ``limit`` bytes.

    :param chunks: the body as it arrives
    :param content_length: the Content-Length header, if any (checked up front so nothing is read in vain)
    """
    if content_length is not None:
        if not content_length.isdigit():
            raise BodyError(400, "bad_content_length", "Content-Length is not a number")
        if int(content_length) > limit:
            raise BodyError(413, "body_too_large", f"body is {content_length} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def inflate(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (identity, gzip or deflate), producing at most ``limit`` bytes.

    :raises BodyError: 415 for an encoding we do not speak, 413 when the inflated body would pass ``limit``,
        400 for a corrupt or truncated stream
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(raw) > limit:
            raise BodyError(413, "decompressed_too_large", f"body exceeds {limit} bytes")
        return raw
    if encoding in ("gzip", "x-gzip"):
        wbits = _GZIP_WBITS
    elif encoding == "deflate":
        wbits = _DEFLATE_WBITS
    else:
        raise BodyError(415, "unsupported_encoding",
                        f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    pending = raw
    try:
        while True:
            # Ask for one byte more than allowed: getting it proves the body is too large, and the
            # inflater never produces more than that however small the input is. (One call normally
            # inflates the whole body; the loop is for an inflater that stops early.)
            part = inflater.decompress(pending, limit + 1 - size)
            size += len(part)
            if size > limit:
                raise BodyError(413, "decompressed_too_large", f"body inflates beyond {limit} bytes")
            parts.append(part)
            if inflater.eof:
                break
            pending = inflater.unconsumed_tail
            if not pending:
                raise BodyError(400, "compression_invalid", f"{encoding} stream is truncated")
    except zlib.error as exc:
        raise BodyError(400, "compression_invalid", f"{encoding} stream is corrupt: {exc}") from None
    if inflater.unused_data.strip(b"\x00"):
        raise BodyError(400, "compression_invalid", f"unexpected bytes after the {encoding} stream")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def load_json_object(data: bytes, not_object_message: str) -> dict[str, Any]:
    """Decode a JSON object body; only a failed parse pays for telling bad UTF-8 from bad JSON.

    :raises BodyError: 400 with ``invalid_utf8``, ``malformed_json`` or ``invalid_body``
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise BodyError(400, "invalid_utf8", f"body is not UTF-8 (byte {uexc.start})") from None
        raise BodyError(400, "malformed_json", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BodyError(400, "invalid_body", not_object_message)
    return doc


def parse_batch(data: bytes, max_events: int) -> Batch:
    """Decode the JSON body and check its shape (not the events themselves).

    :raises BodyError: 400 with ``invalid_utf8``, ``malformed_json``, ``invalid_body``, ``empty_batch``
        or 413 ``too_many_events``
    """
    doc = load_json_object(data, "body must be a JSON object with a 'batch' array")
    return _checked(doc, max_events, len(data))


def _checked(doc: dict[str, Any], max_events: int, size: int, texts: list[bytes] | None = None,
             contexts: list[bytes | None] | None = None) -> Batch:
    events = doc.get("batch")
    if not isinstance(events, list):
        raise BodyError(400, "invalid_body", "'batch' must be an array of events")
    if not events:
        raise BodyError(400, "empty_batch", "'batch' holds no events")
    if len(events) > max_events:
        raise BodyError(413, "too_many_events", f"'batch' holds {len(events)} events; the limit is {max_events}")
    sent_at = doc.get("sent_at")
    if sent_at is not None and not (isinstance(sent_at, str) and is_date_time(sent_at)):
        raise BodyError(400, "invalid_body", "'sent_at' must be an RFC 3339 timestamp with an offset")
    consent = doc.get("consent")
    if consent is not None and not (isinstance(consent, dict)
                                    and all(isinstance(v, bool) for k, v in consent.items() if k != "policy_version")):
        raise BodyError(400, "invalid_body", "'consent' must be an object of booleans, e.g. {\"analytics\": false}")
    return Batch(events=events, sent_at=sent_at, consent=consent, size=size, texts=texts, contexts=contexts)


def split_batch(data: bytes, max_events: int) -> Batch:
    """:func:`parse_batch`, with each event's text and its ``context``'s text found without decoding them, and the
    contexts left undecoded (``null`` in their place). Same answers and errors as :func:`parse_batch`.

    Every event of a device carries the same context, byte for byte: the caller checks it once per distinct text
    (``SchemaRegistry.check_shared_text``), and publishes each event as the client wrote it, so nothing is decoded
    twice or encoded again. A body whose layout the span finder cannot vouch for (see ``schemas/_spans.c``), or
    that does not decode, is parsed as a whole by :func:`parse_batch`, which then also gives the error.
    """
    if item_members is None:
        return parse_batch(data, max_events)
    try:
        items = item_members(data, _BATCH, _CONTEXT)
        if not items or len(items) > max_events:
            return parse_batch(data, max_events)  # for its error
        texts: list[bytes] = []
        contexts: list[bytes | None] = []
        pieces: list[bytes] = []
        done = 0
        for start, end, context_start, context_end in items:
            texts.append(data[start:end])
            if context_start < 0:
                contexts.append(None)
                continue
            contexts.append(data[context_start:context_end])
            pieces.append(data[done:context_start])
            pieces.append(b"null")
            done = context_end
        pieces.append(data[done:])
        doc = orjson.loads(b"".join(pieces))
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return parse_batch(data, max_events)
    if type(doc) is not dict:
        return parse_batch(data, max_events)
    events = doc.get("batch")
    if type(events) is not list or len(events) != len(items):
        return parse_batch(data, max_events)
    for event, text in zip(events, contexts):
        if text is not None and (type(event) is not dict or event.get("context", 0) is not None):
            return parse_batch(data, max_events)  # the nulls did not land where the contexts were: never seen
    return _checked(doc, max_events, len(data), texts, contexts)


def encoded_events(batch: Batch, limit: int) -> list[bytes] | None:
    """Each event's JSON text when the body is large enough for one event to pass ``limit`` bytes, else None.

    A body no larger than the limit cannot hold such an event, which spares the usual small request any
    work. The texts are what the raw records embed, so the gateway serializes an event once, not twice. A batch
    from :func:`split_batch` has them already: the events as the client wrote them.
    """
    if batch.texts is not None:
        return batch.texts
    if batch.size <= limit:
        return None
    dumps = orjson.dumps
    return [dumps(event) for event in batch.events]


def oversized_events(batch: Batch, limit: int, encoded: list[bytes] | None = None) -> dict[int, int]:
    """Index -> encoded size of each event larger than ``limit`` bytes.

    :param encoded: the batch's :func:`encoded_events`, when already computed
    """
    if encoded is None:
        encoded = encoded_events(batch, limit)
    if encoded is None:
        return {}
    return {index: len(text) for index, text in enumerate(encoded) if len(text) > limit}
