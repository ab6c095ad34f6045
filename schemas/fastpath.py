"""The registry's fast path for valid events: the envelope split in two, with its repetitive half remembered.

Most of the envelope's cost is ``context``: a nested object with patterns and formats that is the same for every
event a device sends. So the fast path checks

- the *rest* of the envelope (ids, timestamps, names) with a validator compiled from the envelope with the
  shared parts replaced by ``true``, on every event; and
- the shared parts with their own validators, but only when an identical value has not been validated recently.

"Identical" must be exact, never a near miss that turns an invalid event valid. The key is the orjson text of
the shared parts, and a hit additionally needs the event's parts to compare equal to the JSON-plain copy stored
with the key. Together these pin the value down type for type: the text tells ``1``, ``1.0`` and ``true`` apart
(which ``==`` does not), and ``==`` tells a plain value from the few non-JSON types orjson would write as the
same text (``uuid.UUID``, ``enum.Enum``, NaN written as ``null``); datetimes, dataclasses and subclasses of the
built-in types are refused by orjson under the passthrough options, so they are simply never cached.

Before any of that, for events fresh from a JSON parser (``plain``), the value is compared with the last one
found valid: the events of one request nearly always share their context, and ``==`` on two dicts costs a
fraction of writing one out as the key. ``==`` alone is exact only where no leaf is a number or a boolean
(``1 == 1.0 == True``), so only a remembered value whose leaves are all strings or nulls is compared this way;
a str, dict, list or None compares equal to nothing but its own kind, and plain values have no subclasses.

Only the decision "valid" is cached. Anything that fails goes to the registry's slow path, which explains it
against the full, unsplit schema.
"""
from __future__ import annotations

from typing import Any, Callable

import orjson

#: Envelope fields that repeat from event to event of one client and are worth remembering once validated.
#: (``consent`` repeats too, but a few booleans are checked faster than looked up.)
SHARED_PARTS = ("context",)
#: Root keywords whose meaning does not reach into a property's value; with anything else at the root (e.g.
#: ``dependencies`` or ``allOf``) a property could be constrained from outside, and the envelope is not split.
_SPLITTABLE_ROOT = {"$schema", "$comment", "$id", "title", "description", "x-version", "type", "required",
                    "anyOf", "additionalProperties", "properties", "examples"}
_KEY_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
DEFAULT_CACHE_ENTRIES = 8192  # one entry per active device; a few KB each at most
_NOTHING = object()  # equal to nothing else: the "last valid value" before there is one


def only_text(value: Any) -> bool:
    """Whether every leaf of the JSON value ``value`` is a string or null (so ``==`` on it is exact)."""
    kind = type(value)
    if kind is str or value is None:
        return True
    if kind is dict:
        return all(only_text(v) for v in value.values())
    if kind is list:
        return all(only_text(v) for v in value)
    return False


def _has_ref(node: Any) -> bool:
    if isinstance(node, dict):
        return "$ref" in node or any(_has_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_ref(v) for v in node)
    return False


def split_envelope(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
    """``(rest, {part: subschema})``, or ``None`` when the envelope cannot be split safely.

    ``rest`` keeps every shared part's name as a ``true`` schema, so a closed envelope still admits it.

    :param schema: the envelope schema as written.
    """
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not set(schema) <= _SPLITTABLE_ROOT or _has_ref(schema):
        return None
    parts = {name: properties[name] for name in SHARED_PARTS if isinstance(properties.get(name), dict)}
    if not parts:
        return None
    rest = dict(schema)
    rest["properties"] = {name: (True if name in parts else sub) for name, sub in properties.items()}
    return rest, parts


class SharedPartCache:
    """Validates the shared parts of events, remembering the last ``max_entries`` distinct valid ones.

    Safe to share between threads: the worst a race can do is validate a value twice or forget one early.

    :param validators: part name -> check of one value that returns ``False`` or raises when the value is not
        (shown to be) valid, anything else when it is.
    :param max_entries: most distinct values remembered; the oldest is forgotten first.
    """

    def __init__(self, validators: dict[str, Callable[[Any], Any]], max_entries: int = DEFAULT_CACHE_ENTRIES):
        self._validators = tuple(validators.items())
        self._names = tuple(validators)
        self._single = self._names[0] if len(self._names) == 1 else None
        self._max_entries = max_entries
        self._valid: dict[bytes, tuple[Any, Any]] = {}  # text -> _remember's entry
        # The last plain value found valid, when ``==`` on it is exact (see the module notes); our own copy,
        # so a caller that changes its event afterwards cannot change what is remembered.
        self._last: Any = _NOTHING
        self.hits = 0
        self.misses = 0

    def check(self, event: dict[str, Any], plain: bool = False) -> bool:
        """Whether the shared parts of ``event`` are valid (``True`` when it has none).

        :param event: the event, a dict.
        :param plain: the caller guarantees that ``event`` holds JSON values of the exact built-in types only, as
            ``orjson.loads`` returns them (no NaN, no subclasses, no ``uuid.UUID``): then the orjson text alone
            identifies a value, and a hit skips comparing it with the remembered one.
        :raises Exception: a validator's error, or ``TypeError`` for a value orjson cannot write, when a part is
            invalid (a validator may also just return ``False``).
        """
        if self._single is not None:
            # One part (the usual case): its value is the key's subject, no dict of parts to build.
            name = self._single
            if name not in event:
                return True
            parts: Any = event[name]
            if plain and parts == self._last:
                self.hits += 1
                return True
        else:
            parts = {name: event[name] for name in self._names if name in event}
            if not parts:
                return True
        try:
            key = orjson.dumps(parts, option=_KEY_OPTIONS)
        except TypeError:  # not JSON-plain: validate, but never remember
            key = None
        if key is not None:
            known = self._valid.get(key)
            if known is not None and (plain or known[0] == parts):
                self.hits += 1
                if plain and self._single is not None:
                    self._last = known[1]
                return True
        self.misses += 1
        if self._single is not None:
            if self._validators[0][1](parts) is False:
                return False
        else:
            for name, validate in self._validators:
                if name in parts and validate(parts[name]) is False:
                    return False
        if key is not None:
            remembered = self._remember(key, parts)
            if plain and self._single is not None and remembered is not None:
                self._last = remembered[1]
        return True

    @property
    def names(self) -> tuple[str, ...]:
        """The shared parts this cache checks."""
        return self._names

    def check_part(self, name: str, value: Any) -> bool:
        """Whether ``value`` passes the validator of part ``name``, without the cache (a validator that raises
        counts as "not valid"). :raises KeyError: for a part this cache does not check."""
        validate = dict(self._validators)[name]
        try:
            return validate(value) is not False
        except Exception:
            return False

    def _remember(self, key: bytes, parts: Any) -> tuple[Any, Any] | None:
        """Store the validated value under its text: ``(our copy, the copy again when == on it is exact, else a
        value equal to nothing)``, returned too (None when not stored)."""
        plain = orjson.loads(key)
        if plain != parts:  # e.g. a NaN written as null: the text does not stand for the value
            return None
        valid = self._valid
        while len(valid) >= self._max_entries:
            try:
                valid.pop(next(iter(valid)), None)
            except (StopIteration, RuntimeError):  # emptied or resized by another thread meanwhile
                break
        entry = valid[key] = (plain, plain if only_text(plain) else _NOTHING)
        return entry
