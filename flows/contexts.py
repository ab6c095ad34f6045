"""What the flow works out from an event's ``context``, remembered by the context's bytes.

A device sends the same ``context`` with every event, byte for byte: app, library, locale, device, user agent,
usually an IP address. Decoding it, checking it against the envelope, taking its IP address out and writing it back
as the row's ``context`` column is a third of the flow's work per event, and the answer is always the same. So the
flow finds the context's bytes in the raw record without decoding them (:func:`schemas.spans.member_span`), and
for bytes it has seen before it decodes only the rest of the record, with ``null`` in the context's place.

What is remembered for one context text: whether it is valid, and per set of PII salts its PII-free form, the raw
addresses taken out of it (for geo) and its JSON text; and per client address and user agent the gateway saw, what
the flow derives from them and the context (geo, the truncated address, browser / OS / device class). Equal bytes
decode to equal values, so a remembered answer is exactly the answer for the event at hand; and only contexts that
decode and validate are remembered at all.

This holds only where the context's PII treatment does not depend on the rest of the event: for event names whose
marks under ``context`` are the envelope's own, with no mark on ``context`` itself and no ``ip`` mark elsewhere
(the order of the raw addresses would change). Other events take the flow's ordinary path, as does everything
this module cannot vouch for (see :meth:`ContextMemo.split`).
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from schemas.spans import path_spans
from schemas.wire import WireError, decode_raw_object

CONTEXT = "context"
_PATH = (b"event", b"context")
ENVELOPE = "envelope"
#: Distinct context texts remembered before the memo starts afresh (one per active device, a few KB each).
DEFAULT_ENTRIES = 10_000
#: Distinct record shells (a record's text before its event: one per gateway request) remembered likewise.
DEFAULT_SHELLS = 1_024
_SEEN_ONCE = "seen once"
_INVALID = "invalid"


def context_text(context: Any) -> tuple[dict[str, Any], str]:
    """The row's ``context`` column from a PII-free context: ``(the context without any "ip" left, its JSON text)``."""
    if not isinstance(context, dict):
        context = {}
    elif "ip" in context:  # the PII step has removed it already; checked so the column is IP-free regardless
        context = {k: v for k, v in context.items() if k != "ip"}
    return context, orjson.dumps(context).decode()


#: Distinct (client address, gateway user agent) pairs remembered per context before that entry starts afresh.
DERIVED_PER_ENTRY = 32


class _Entry:
    __slots__ = ("value", "protected", "derived")

    def __init__(self, value: dict[str, Any]):
        self.value = value  # as decoded; never changed (every use works on copies)
        self.protected: dict[tuple[str, str | None], tuple[dict[str, Any], tuple[str, ...], str]] = {}
        #: What the flow derives from this context together with the gateway's client address and user agent
        #: (geo columns, truncated address, user agent columns), by that pair: see ``Stages``.
        self.derived: dict[tuple[Any, Any], tuple[Any, ...]] = {}

    def remember(self, pair: tuple[Any, Any], derived: tuple[Any, ...]) -> None:
        """Keep ``derived`` for ``pair``, starting afresh after :data:`DERIVED_PER_ENTRY` pairs."""
        if len(self.derived) >= DERIVED_PER_ENTRY:
            self.derived.clear()
        self.derived[pair] = derived


class ContextMemo:
    """Remembered contexts of one flow process. Not shared between threads (each worker has its own stages).

    :param registry: the ``SchemaRegistry`` (the context must be one of its shared envelope parts)
    :param pii: the flow's ``PiiHasher``
    :param max_entries: distinct context texts remembered before starting afresh
    """

    def __init__(self, registry: Any, pii: Any, max_entries: int = DEFAULT_ENTRIES, max_shells: int = DEFAULT_SHELLS):
        self.registry = registry
        self.pii = pii
        self.max_entries = max_entries
        self.max_shells = max_shells
        self._entries: dict[bytes, _Entry | None] = {}
        self._shells: dict[bytes, dict[str, Any] | str] = {}  # or _SEEN_ONCE, _INVALID
        own = {p: m for p, m in registry.pii_fields(ENVELOPE).items() if p.startswith(CONTEXT + ".")}
        self.names = frozenset(name for name in registry.events if _context_marks_are(registry.pii_fields(name), own))
        #: Of those, the names with no mark outside the context: the rest of such an event has nothing to protect.
        self.unmarked = frozenset(name for name in self.names
                                  if all(path.startswith(CONTEXT + ".") for path in registry.pii_fields(name)))
        self.hits = 0
        self.misses = 0

    @classmethod
    def usable(cls, registry: Any) -> bool:
        """Whether the memo can work here: the C span finder is built and the registry checks ``context`` apart."""
        return path_spans is not None and CONTEXT in getattr(registry, "shared_parts", ())

    def split(self, value: Any) -> tuple[dict[str, Any], dict[str, Any], _Entry] | None:
        """A raw record whose context is known and valid: ``(record, event, entry)``, the event otherwise checked
        against its schema too, its ``context`` still ``None``. ``None`` means "take the ordinary path", which
        then decides about the record: anything unusual, invalid, or not handled here ends up there.

        The record's other fields are decoded once per shell (the text before the event, which the gateway writes
        last): records of one request share the returned ``record``, so it is the callers' to read, never to change,
        and its ``event`` is ``None``."""
        if type(value) is not bytes:
            return None
        try:
            spans = path_spans(value, _PATH)
        except ValueError:  # not a record with an event object, or nothing the scanner can vouch for
            return None
        if spans is None:
            return None
        (event_start, event_end), (start, end) = spans
        text = value[start:end]
        entries = self._entries
        entry = entries.get(text, False)
        if entry is False:
            entry = self._learn(text)
        else:
            self.hits += 1
        if entry is None:
            return None
        doc = None
        if event_end == len(value) - 1:  # the event is the record's last member, as the gateway writes it
            shell = value[:event_start]
            doc = self._shells.get(shell)
            if type(doc) is not dict:
                doc = self._learn_shell(shell, doc)
        if doc is not None:
            try:
                event = orjson.loads(value[event_start:start] + b"null" + value[end:event_end])
            except orjson.JSONDecodeError:
                return None
            if type(event) is not dict:
                return None
        else:
            try:
                doc = decode_raw_object(value[:start] + b"null" + value[end:])
            except WireError:
                return None
            event = doc["event"]
        # The null must have landed where the context was (it always does in a text the scanner read right).
        if CONTEXT not in event or event[CONTEXT] is not None or event.get("event") not in self.names:
            return None
        if not self.registry.check_rest(event):
            return None
        return doc, event, entry

    def protected(self, entry: _Entry, day: dt.date) -> tuple[dict[str, Any], tuple[str, ...], str, str, str | None]:
        """``(PII-free context, raw addresses taken out of it, its JSON text, salt id, previous salt id)`` under the
        salts of ``day`` (the ids as :meth:`enrichers.pii.PiiHasher.protect_parts` gives them).

        :raises enrichers.pii.MissingSaltError: when no salt covers ``day``
        """
        primary, previous = self.pii.salts_on(day)
        salts = (primary.salt_id, previous.salt_id if previous is not None else None)
        known = entry.protected.get(salts)
        if known is None:
            # Marks under "context" are the envelope's for every name this memo serves, so the envelope's own plan.
            out, ips, _, _ = self.pii.protect_parts({"event": ENVELOPE, CONTEXT: entry.value}, day)
            context, text = context_text(out.get(CONTEXT))
            known = entry.protected[salts] = (context, tuple(ips), text, *salts)
        return known

    def _learn_shell(self, shell: bytes, known: Any) -> dict[str, Any] | None:
        """The record fields of a shell seen before, checked as :func:`decode_raw_object` checks a record (``event``
        set to ``None``); ``None`` for a shell seen for the first time (only noted: a request of one event would
        pay for decoding it twice) and for one whose fields do not pass. ``known`` is what the memo holds for it."""
        if known is _INVALID:
            return None
        doc: dict[str, Any] | None = None
        remembered: Any = _SEEN_ONCE
        if known is _SEEN_ONCE:
            try:
                doc = decode_raw_object(shell + b"{}}")
            except WireError:
                remembered = _INVALID
            else:
                doc["event"] = None
                remembered = doc
        if len(self._shells) >= self.max_shells:
            self._shells.clear()
        self._shells[shell] = remembered
        return doc

    def _learn(self, text: bytes) -> _Entry | None:
        self.misses += 1
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        entry = None
        if type(value) is dict and self.registry.check_shared_part(CONTEXT, value):
            entry = _Entry(value)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[text] = entry  # an invalid context is remembered too, as "take the ordinary path"
        return entry


def _context_marks_are(marks: dict[str, str], own: dict[str, str]) -> bool:
    if CONTEXT in marks:
        return False
    under = {p: m for p, m in marks.items() if p.startswith(CONTEXT + ".")}
    elsewhere_ip = any(m == "ip" for p, m in marks.items() if not p.startswith(CONTEXT + "."))
    return under == own and not elsewhere_ip
