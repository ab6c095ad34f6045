"""Hash, drop or mask the personal data an event carries, as the schemas mark it (``x-pii``).

Marks come from the registry as ``{dotted_path: "hash" | "drop" | "ip"}``; paths spell array items ``[]`` and map
values ``*`` (``properties.emails[]``, ``context.experiments.*``). A mark on an array or object covers everything
inside it.

``hash``
    The value becomes ``hex(HMAC-SHA256(salt, normalised value))``. Normalising (strip, lower-case) makes
    ``Ann@Example.com `` and ``ann@example.com`` join. The field name is *not* part of the message, so the same
    address hashed in ``properties.email`` and ``properties.billing_email`` gives the same hash and the two join.
    The salt is that of the event's quarter (by the date of the skew-corrected event time) and its id is recorded
    as ``pii_salt_id``.

Rotation and joins
    Every quarter has its own salt, so hashes of the same person differ between quarters. For ``overlap_days``
    after a quarter starts, the previous quarter's salt is still valid, and each hashed field is written twice:
    ``email`` under the new salt and ``email__prev`` under the previous one (id in ``pii_salt_id_prev``). Within a
    quarter, join on ``email``. Across a rotation, the overlap rows are the bridge: they pair ``email`` (new) with
    ``email__prev`` (old) for the same person, so ``old.email = bridge.email__prev`` and
    ``bridge.email = new.email`` links both quarters without anyone ever seeing the raw value.

``drop``
    The field is removed.

``ip``
    The raw address is handed to the caller in memory (for the geo look-up) and never written back: the field is
    removed, and :func:`mask_ip` gives the /24 (IPv4) or /48 (IPv6) network for callers that keep a truncated one.
    The gateway's ``client_ip`` from the wire record is treated the same way.

An event whose quarter has no salt raises :class:`MissingSaltError`, which the flow turns into a dead letter: no
event ever leaves with raw PII because a salt was missing.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping, Sequence

PREV_SUFFIX = "__prev"
IP_HANDLING = ("drop", "truncate")


class MissingSaltError(LookupError):
    """No PII salt covers a day: at start-up the flow refuses to run; at run time the event is a dead letter."""


@dataclass(frozen=True)
class Salt:
    """A salt as the hasher needs it (the settings' ``PiiSalt`` has the same fields).

    :param salt_id: quarter id, e.g. ``2026Q4``
    :param key: secret bytes
    :param valid_from: first day it applies to
    :param valid_until: last day it applies to (the quarter's end plus the overlap)
    """

    salt_id: str
    key: bytes = field(repr=False)
    valid_from: dt.date
    valid_until: dt.date


def quarter_id(day: dt.date) -> str:
    """``2026Q4`` for any day of October to December 2026."""
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def normalise(value: Any) -> bytes:
    """The bytes that are hashed for ``value``: text stripped and lower-cased, other scalars by their JSON text."""
    if isinstance(value, str):
        return value.strip().lower().encode()
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


def hash_value(value: Any, key: bytes) -> str:
    """Hex HMAC-SHA256 of the normalised value under ``key``; deterministic.

    :param value: a scalar (``None`` is not hashed by the callers)
    :param key: the salt's secret
    """
    return hmac.digest(key, normalise(value), "sha256").hex()  # one C call; same bytes as hmac.new(...)


_BLOCK = 64  # SHA-256 block size: HMAC pads (or first hashes) the key to this length
_INNER_PAD = bytes(b ^ 0x36 for b in range(256))
_OUTER_PAD = bytes(b ^ 0x5C for b in range(256))


class KeyedHasher:
    """HMAC-SHA256 under one fixed key, the same digests as :func:`hash_value`, at about a quarter of its cost.

    ``hmac.digest`` sets the key up again for every message: two SHA-256 blocks of padded key, which for the short
    values hashed here is most of the work. The key is fixed for a salt, so the two SHA-256 states after those blocks
    (RFC 2104's inner and outer hash) are computed once and copied for each message.

    :param key: the salt's secret
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes):
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def hexdigest(self, message: bytes) -> str:
        """Hex HMAC-SHA256 of ``message``."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def hash(self, value: Any) -> str:
        """:func:`hash_value` of ``value`` under this key."""
        return self.hexdigest(normalise(value))


def _hash_deep(value: Any, hasher: KeyedHasher) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_hash_deep(item, hasher) for item in value]
    if isinstance(value, dict):
        return {k: _hash_deep(v, hasher) for k, v in value.items()}
    return hasher.hexdigest(normalise(value))


def mask_ip(ip: Any) -> str | None:
    """The /24 network of an IPv4 address or the /48 of an IPv6 one (``81.2.69.0``, ``2a02:ec0:1::``); ``None``
    for anything that is not an address. IPv4-mapped IPv6 addresses are masked as IPv4.

    Uses the C ``inet_pton``/``inet_ntop`` pair: ``ipaddress`` costs ~100 µs per IPv6 address, too slow per event.
    """
    text = str(ip).strip()
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)[:3] + b"\0")
    except (OSError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:15] + b"\0")
    return socket.inet_ntop(socket.AF_INET6, packed[:6] + bytes(10))


_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _parse_path(path: str) -> tuple[str, ...]:
    segments: list[str] = []
    for part in path.split("."):
        name = part.rstrip("[]") if part.endswith("[]") else part
        depth = (len(part) - len(name)) // 2
        if name:
            segments.append(name)
        segments.extend(["[]"] * depth)
    # A mark on array items or map values covers the whole container: act on the last named field.
    while segments and segments[-1] in ("[]", "*"):
        segments.pop()
    return tuple(segments)


@dataclass
class PiiOutcome:
    """What :meth:`PiiHasher.protect` made of one event.

    :param event: a copy of the event with every marked field hashed or removed (the input is not modified)
    :param ips: raw addresses found, best first; in memory only, for the geo look-up, never to be stored
    :param salt_id: the quarter salt the hashes are under
    :param salt_id_prev: the previous quarter's salt, during a rotation overlap
    """

    event: dict[str, Any]
    ips: list[str]
    salt_id: str
    salt_id_prev: str | None

    @property
    def ip(self) -> str | None:
        return self.ips[0] if self.ips else None


class PiiHasher:
    """Applies the registry's PII marks to events.

    :param salts: every configured salt
    :param marks_for: event name → ``{path: mark}`` (``SchemaRegistry.pii_fields``)
    """

    def __init__(self, salts: Iterable[Any], marks_for: Callable[[str], Mapping[str, str]]):
        self._salts = tuple(Salt(s.salt_id, s.key, s.valid_from, s.valid_until) for s in salts)
        self._hashers = tuple(KeyedHasher(s.key) for s in self._salts)
        self._marks_for = marks_for
        self._keys_on = lru_cache(maxsize=512)(self._select_keys)
        self._plans = lru_cache(maxsize=1024)(self._plan)

    @classmethod
    def from_settings(cls, settings: Any, registry: Any) -> PiiHasher:
        """:param settings: :class:`headwater.settings.Settings`; :param registry: a ``SchemaRegistry``"""
        return cls(settings.pii_salts.reveal(), registry.pii_fields)

    def _select_salts(self, day: dt.date) -> tuple[Salt, Salt | None]:
        valid = [s for s in self._salts if s.valid_from <= day <= s.valid_until]
        own = quarter_id(day)
        primary = next((s for s in valid if s.salt_id == own), None)
        if primary is None:
            raise MissingSaltError(f"no PII salt for quarter {own} (event date {day.isoformat()})")
        earlier = sorted((s for s in valid if s is not primary and s.valid_from < primary.valid_from),
                         key=lambda s: s.valid_from)
        return primary, (earlier[-1] if earlier else None)

    def _select_keys(self, day: dt.date) -> _DayKeys:
        primary, previous = self._select_salts(day)
        hasher = self._hashers[self._salts.index(primary)]
        previous_hasher = self._hashers[self._salts.index(previous)] if previous is not None else None
        return _DayKeys(primary, previous, hasher, previous_hasher)

    def salts_on(self, day: dt.date) -> tuple[Salt, Salt | None]:
        """``(salt of the day's quarter, previous salt still in its overlap or None)``.

        :raises MissingSaltError: when the day's quarter has no salt valid on that day
        """
        keys = self._keys_on(day)
        return keys.primary, keys.previous

    def _plan(self, event_name: str) -> _Plan:
        try:
            marks = self._marks_for(event_name)
        except KeyError:
            marks = self._marks_for("envelope")
        # Deepest paths first, so a drop of a parent never hides a child that still needs hashing.
        steps = tuple(sorted(((_parse_path(p), m) for p, m in marks.items()), key=lambda pm: -len(pm[0])))
        steps = tuple((segments, mark) for segments, mark in steps if segments)
        if all("[]" not in segments and "*" not in segments for segments, _ in steps):
            return _Plan(steps, _flat_groups(steps))
        return _Plan(steps, None)

    def protect(self, event: Mapping[str, Any], day: dt.date, client_ip: str | None = None) -> PiiOutcome:
        """Hash, drop and strip the marked fields of one (already validated) event.

        :param event: the event as decoded
        :param day: the event's (skew-corrected) UTC date; selects the salt
        :param client_ip: the address the gateway saw, treated like an ``ip`` field
        :raises MissingSaltError: when no salt covers ``day``
        """
        return PiiOutcome(*self.protect_parts(event, day, client_ip))

    def protect_parts(self, event: Mapping[str, Any], day: dt.date, client_ip: str | None = None, *,
                      in_place: bool = False) -> tuple[dict[str, Any], list[str], str, str | None]:
        """:meth:`protect` as the tuple ``(event, ips, salt_id, salt_id_prev)``, for callers that do this per event
        and have no use for the :class:`PiiOutcome` object.

        :param in_place: change ``event`` itself (a dict) where the marks allow it, instead of copying every
            container that holds a marked field; for a caller that owns the event and has no further use for its
            raw values (the flow, with an event fresh from the wire). The returned event may still be a copy.
        :raises MissingSaltError: when no salt covers ``day``
        """
        keys = self._keys_on(day)
        name = event.get("event")
        ips: list[str] = []
        plan = self._plans(name if isinstance(name, str) else "")
        if plan.flat is None:
            out = dict(event)
            for segments, mark in plan.steps:
                _apply(out, segments, _action(mark, keys.primary, keys.previous, ips))
        elif in_place and type(event) is dict:
            out = event
            _apply_flat(out, plan.flat, keys.hasher, keys.previous_hasher, ips, copy=False)
        else:
            out = dict(event)
            _apply_flat(out, plan.flat, keys.hasher, keys.previous_hasher, ips)
        if client_ip:
            ips.append(client_ip)
        previous = keys.previous
        return out, ips, keys.primary.salt_id, previous.salt_id if previous is not None else None


@dataclass(frozen=True, slots=True)
class _DayKeys:
    """The salts of one day and their keyed hashers."""

    primary: Salt
    previous: Salt | None
    hasher: KeyedHasher
    previous_hasher: KeyedHasher | None


@dataclass(frozen=True)
class _Plan:
    """What to do to the events of one name: ``steps`` as ``(segments, mark)``, deepest first; ``flat`` the same
    steps grouped for :func:`_apply_flat` when every path is a plain chain of object keys, else ``None``."""

    steps: tuple[tuple[tuple[str, ...], str], ...]
    flat: tuple[_FlatGroup, ...] | None


@dataclass(frozen=True, slots=True)
class _FlatGroup:
    """The marked keys of one container: its path, the paths of the containers above it (``prefixes``, outermost
    first, the container's own last), its marked keys as a set, and ``(key, mark)`` in plan order."""

    path: tuple[str, ...]
    prefixes: tuple[tuple[str, ...], ...]
    keys: frozenset[str]
    ops: tuple[tuple[str, str], ...]


def _flat_groups(steps: Sequence[tuple[tuple[str, ...], str]]) -> tuple[_FlatGroup, ...]:
    # Steps come deepest first; grouping them by container keeps that order between containers (a deeper one is
    # done before one above it, which may drop it), and within one container the keys are distinct.
    ops: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for segments, mark in steps:
        ops.setdefault(segments[:-1], []).append((segments[-1], mark))
    return tuple(_FlatGroup(path, tuple(path[:i] for i in range(1, len(path) + 1)),
                            frozenset(key for key, _ in group), tuple(group)) for path, group in ops.items())


def _apply_flat(out: dict, groups: tuple[_FlatGroup, ...], hasher: KeyedHasher, previous: KeyedHasher | None,
                ips: list[str], copy: bool = True) -> None:
    """The grouped plain-path steps applied to ``out``.

    With ``copy`` (``out`` a shallow copy of the event), a container is copied, once and with every container above
    it, only when it holds a marked key, so the caller's event is never modified and an event without personal
    data costs a few look-ups. Without, ``out`` is the event itself and its own containers are changed."""
    copies: dict[tuple[str, ...], dict] | None = None
    for group in groups:
        container: Any = out
        for name in group.path:
            container = container.get(name)
            if not isinstance(container, dict):
                break
        else:
            if group.keys.isdisjoint(container):
                continue
            if copy:
                if copies is None:
                    copies = {}
                container = out
                for prefix in group.prefixes:
                    own = copies.get(prefix)
                    if own is None:
                        own = copies[prefix] = container[prefix[-1]] = dict(container[prefix[-1]])
                    container = own
            _apply_marks(container, group.ops, hasher, previous, ips)


def _apply_marks(parent: dict, ops: tuple[tuple[str, str], ...], hasher: KeyedHasher, previous: KeyedHasher | None,
                 ips: list[str]) -> None:
    for key, mark in ops:
        if key not in parent:
            continue
        if mark == "hash":
            value = parent[key]
            parent[key] = _hash_deep(value, hasher)
            if previous is not None:
                parent[key + PREV_SUFFIX] = _hash_deep(value, previous)
        elif mark == "ip":
            value = parent.pop(key)
            if type(value) is str:
                if value:
                    ips.append(value)
            else:
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, str) and item:
                        ips.append(item)
        else:  # "drop", and any mark this code does not know: removing is the only safe default
            del parent[key]


def _action(mark: str, primary: Salt, previous: Salt | None, ips: list[str]) -> Callable[[dict, str], None]:
    hasher = KeyedHasher(primary.key)
    previous_hasher = KeyedHasher(previous.key) if previous is not None else None

    def hash_field(parent: dict, key: str) -> None:
        value = parent[key]
        parent[key] = _hash_deep(value, hasher)
        if previous_hasher is not None:
            parent[key + PREV_SUFFIX] = _hash_deep(value, previous_hasher)

    def drop_field(parent: dict, key: str) -> None:
        del parent[key]

    def take_ip(parent: dict, key: str) -> None:
        value = parent.pop(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                ips.append(item)

    if mark == "hash":
        return hash_field
    if mark == "ip":
        return take_ip
    # "drop", and any mark this code does not know: removing is the only safe default.
    return drop_field


def _apply(container: dict, segments: Sequence[str], act: Callable[[dict, str], None]) -> None:
    """Run ``act(parent, key)`` wherever ``segments`` lead, copying each container on the way so that the
    caller's event is never modified."""
    head, rest = segments[0], segments[1:]
    if not rest:
        if head in container:
            act(container, head)
        return
    child = container.get(head)
    if child is None:
        return
    container[head] = _descend(child, rest, act)


def _descend(value: Any, segments: Sequence[str], act: Callable[[dict, str], None]) -> Any:
    head = segments[0]
    if head == "[]":
        if not isinstance(value, list):
            return value
        return [_descend(item, segments[1:], act) if len(segments) > 1 else item for item in value]
    if head == "*":
        if not isinstance(value, dict):
            return value
        return {k: _descend(v, segments[1:], act) if len(segments) > 1 else v for k, v in value.items()}
    if not isinstance(value, dict):
        return value
    copied = dict(value)
    _apply(copied, segments, act)
    return copied


def check_salts_cover(settings: Any, today: dt.date, lookahead_days: int | None = None) -> list[str]:
    """Start-up check: the salts must cover today's quarter.

    :param settings: :class:`headwater.settings.Settings`
    :param today: the current UTC date
    :param lookahead_days: also warn when the salt of the quarter starting within this many days is missing
        (defaults to the rotation overlap)
    :returns: warnings (e.g. next quarter's salt not configured yet)
    :raises MissingSaltError: naming the quarter and the setting to fix
    """
    hasher = PiiHasher(settings.pii_salts.reveal(), lambda name: {})
    try:
        hasher.salts_on(today)
    except MissingSaltError as exc:
        raise MissingSaltError(
            f"{exc}: add a salt for {quarter_id(today)} to HEADWATER_PII_SALTS or HEADWATER_PII_SALTS_FILE "
            f"(format QUARTER:BASE64[:FROM:UNTIL])"
        ) from None
    days = settings.pii_salt_overlap_days if lookahead_days is None else lookahead_days
    ahead = today + dt.timedelta(days=days)
    warnings = []
    if quarter_id(ahead) != quarter_id(today):
        try:
            hasher.salts_on(ahead)
        except MissingSaltError:
            warnings.append(f"no PII salt for {quarter_id(ahead)} yet, which starts within {days} days; "
                            f"its events will become dead letters")
    return warnings
