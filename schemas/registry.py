"""The schema registry: load ``*.schema.json`` once, then validate events fast and explain failures fully.

Shared by the ingest gateway (validates every event it accepts) and the flow (validates again before any
sink sees the event). Validation is two-speed:

- fast path: per event name, one plain-Python check generated at load by :mod:`schemas.compiler` (envelope
  and payload in one call, exact JSON types only), plus the remembered ``context`` of :mod:`schemas.fastpath`;
  a valid event costs those two calls and returns ``[]``;
- slow path, only for invalid events: a jsonschema validator lists *every* problem (see
  :mod:`schemas.explain`), because a client fixing its instrumentation wants all reasons at once.

fastjsonschema decides validity; jsonschema only explains. The generated checks only ever say "surely
valid": whatever they do not accept (an invalid event, or a valid one with e.g. ``1.0`` for an integer)
takes the slow path, where fastjsonschema decides. Both are given the same formats
(:mod:`schemas.formats`) and pattern semantics so that they agree; should they ever disagree, the
first error fastjsonschema found is reported rather than an empty list.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import jsonschema
import orjson

from schemas.compiler import Unsupported, compile_check
from schemas.explain import ValidationIssue, build_explainer, explain, finish, issue_path, show
from schemas.fastpath import SharedPartCache, split_envelope
from schemas.formats import fastjsonschema_formats
from schemas.walk import pii_marks

#: Verdicts check_shared_text remembers per shared part before it starts afresh (one per active device).
_SHARED_TEXTS = 8192
_UNKNOWN = object()

ENVELOPE = "envelope"
SCHEMA_SUFFIX = ".schema.json"
DEFAULT_DIRECTORY = Path(__file__).resolve().parent
PROPERTIES = "properties"


class SchemaLoadError(Exception):
    """One or more schema files could not be loaded; ``problems`` lists every one of them.

    :param problems: one line per problem, each starting with the file name.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} schema problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


def schema_name(path: Path) -> str:
    """The event name a schema file describes: ``community_join.schema.json`` -> ``community_join``.

    :param path: path of the schema file.
    """
    return path.name[: -len(SCHEMA_SUFFIX)] if path.name.endswith(SCHEMA_SUFFIX) else path.stem


def schema_files(directory: Path) -> list[Path]:
    """The schema files of a directory, in name order.

    :param directory: directory to list.
    """
    return sorted(p for p in directory.glob("*" + SCHEMA_SUFFIX) if p.is_file())


def read_schema_file(path: Path) -> dict[str, Any]:
    """Parse one schema file.

    :param path: the file.
    :raises ValueError: with a reason that names the line and column of a JSON syntax error, or says why
        the document is not a schema object.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(document, dict):
        raise ValueError(f"a schema must be a JSON object, not {type(document).__name__}")
    return document


def compile_fast(schema: dict[str, Any]) -> Callable[[Any], Any]:
    """Compile ``schema`` with fastjsonschema the way the registry does.

    :param schema: a draft-04/06/07 JSON Schema.
    :raises ValueError: when the schema is not a valid draft-07 schema or fastjsonschema cannot compile it.
    """
    try:
        # The meta-schema check catches mistakes fastjsonschema lets through, e.g. "required": "id".
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = issue_path("", exc.absolute_path) or "(root)"
        raise ValueError(f"not a valid draft-07 schema at {where}: {exc.message}") from None
    remote = _remote_refs(schema)
    if remote:
        # fastjsonschema would fetch these over the network at start-up (and jsonschema would not):
        # the catalogue must be self-contained.
        raise ValueError(f"only local references ('#...') are allowed, found $ref {remote[0]!r}")
    try:
        # use_default=False: validation must never write defaults into the caller's event.
        validator = fastjsonschema.compile(schema, formats=fastjsonschema_formats(), use_default=False)
    except Exception as exc:  # fastjsonschema raises several unrelated types for bad definitions
        raise ValueError(f"fastjsonschema cannot compile it: {exc}") from None
    # With custom formats, fastjsonschema returns partial(validate, custom_formats=...); a keyword partial
    # rebuilds its keyword dict on every call (about 5 % of a whole event's validation here). The
    # generated function takes the formats as its second positional parameter, so bind them that way.
    generated = getattr(validator, "func", None)
    formats = getattr(validator, "keywords", {}).get("custom_formats")
    if generated is None or formats is None:
        return validator

    def fast(data: Any, _generated: Callable[..., Any] = generated, _formats: Any = formats) -> Any:
        return _generated(data, _formats)

    return fast


def _remote_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        found = [ref] if isinstance(ref, str) and not ref.startswith("#") else []
        return found + [r for child in node.values() for r in _remote_refs(child)]
    if isinstance(node, list):
        return [r for child in node for r in _remote_refs(child)]
    return []


def _x_version(schema: dict[str, Any]) -> int:
    version = schema.get("x-version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"'x-version' must be a positive integer, not {version!r}")
    return version


@dataclass(frozen=True)
class _Compiled:
    schema: dict[str, Any]
    version: int
    fast: Callable[[Any], Any]
    explainer: Any
    pii: dict[str, str]


def _fast_validator(schema: dict[str, Any]) -> Callable[[Any], Any]:
    """Compile ``schema`` for the hot path, lifting out a root ``anyOf`` of bare ``required`` lists.

    That ``anyOf`` is how JSON Schema says "at least one of these keys" (the envelope's ``user_id`` or
    ``anonymous_id``). fastjsonschema evaluates it by raising and catching an exception for every
    branch that does not match, a few microseconds that every anonymous event would pay; a key-set
    comparison answers the same question in a fraction of that. The explainer still sees the full schema.
    """
    full = compile_fast(schema)  # compiled as written first, so errors point at the file's own text
    alternatives = schema.get("anyOf")
    if not (
        isinstance(alternatives, list)
        and alternatives
        and all(isinstance(b, dict) and set(b) == {"required"} and isinstance(b["required"], list) for b in alternatives)
    ):
        return full
    structure = compile_fast({key: value for key, value in schema.items() if key != "anyOf"})
    groups = tuple(frozenset(branch["required"]) for branch in alternatives)
    needed = " or ".join(str(sorted(group)) for group in groups)

    def fast(instance: Any) -> Any:
        structure(instance)
        if isinstance(instance, dict):
            keys = instance.keys()
            for group in groups:
                if group <= keys:
                    return instance
            raise fastjsonschema.JsonSchemaValueException(f"data must contain {needed}", name="data", rule="anyOf")
        return instance

    return fast


def _part_check(schema: dict[str, Any]) -> Callable[[Any], bool]:
    """A check of one shared envelope part: generated, or fastjsonschema when the compiler cannot."""
    try:
        return compile_check(schema, "check_part")
    except Unsupported:
        pass
    validator = compile_fast(schema)

    def check(value: Any) -> bool:
        validator(value)  # raises when invalid
        return True

    return check


def _event_check(envelope: dict[str, Any], envelope_fast: Callable[[Any], Any], name: str,
                 compiled: _Compiled) -> Callable[[Any], bool]:
    """One function that checks a whole event named ``name`` but its shared parts (see :mod:`schemas.fastpath`).

    It returns ``True`` for an event surely valid, and ``False`` or raises otherwise. Generated from the
    envelope (``envelope``, the shared parts already set to ``true``) with the payload schema merged into its
    ``properties`` field; where the compiler cannot, the two fastjsonschema validators one after the other.
    """
    fields = envelope.get("properties")
    if isinstance(fields, dict) and PROPERTIES in fields:
        fields = dict(fields)
        fields[PROPERTIES] = {"allOf": [fields[PROPERTIES], compiled.schema]}
        if "event" in fields:
            # The check is chosen by the event's name, so the name is known to be this one: when it passes
            # the envelope's rule for names (a pattern), only its type and value are left to check.
            try:
                compile_fast(fields["event"])(name)
                fields["event"] = {"type": "string", "enum": [name]}
            except Exception:
                fields["event"] = {"allOf": [fields["event"], {"type": "string", "enum": [name]}]}
        try:
            return compile_check(dict(envelope, properties=fields), f"check_{name}")
        except Unsupported:
            pass
    payload_fast = compiled.fast

    def check(event: Any) -> bool:
        envelope_fast(event)
        payload_fast(event[PROPERTIES])
        return True

    return check


def _compile(schema: dict[str, Any], pii_prefix: str) -> _Compiled:
    return _Compiled(
        schema=schema,
        version=_x_version(schema),
        fast=_fast_validator(schema),
        explainer=build_explainer(schema),
        pii=pii_marks(schema, pii_prefix),
    )


def _issues(compiled: _Compiled, instance: Any, prefix: str) -> list[ValidationIssue]:
    try:
        compiled.fast(instance)
        return []
    except Exception as exc:  # a validation error, or e.g. RecursionError comparing absurdly nested items
        # Kept without its traceback: that holds this frame and every caller's (the flow's whole batch among their
        # locals) in a reference cycle through ``first_error``, which only the garbage collector could free.
        first_error = exc.with_traceback(None)
    issues = explain(compiled.explainer, instance, prefix)
    if issues:
        return issues
    if not isinstance(first_error, fastjsonschema.JsonSchemaValueException):
        return [ValidationIssue(prefix, f"value could not be validated ({type(first_error).__name__})")]
    # The validators disagree (a bug in one of them): report what fastjsonschema saw rather than nothing.
    # Its messages name the rule, never the value, so they are safe to keep.
    reason = first_error.message
    if first_error.name and reason.startswith(first_error.name):
        reason = reason[len(first_error.name) :].strip()
    return [ValidationIssue(issue_path(prefix, (first_error.path or [])[1:]), reason)]


class SchemaRegistry:
    """The loaded catalogue: the envelope schema plus one properties schema per event name.

    Immutable after :meth:`load` and safe to share between threads. Use :meth:`load` to build one.
    """

    def __init__(self, envelope: _Compiled, events: dict[str, _Compiled], directory: Path) -> None:
        self._envelope = envelope
        self._events = events
        self._names = sorted(events)
        self.directory = directory
        self._pii = {name: {**envelope.pii, **compiled.pii} for name, compiled in events.items()}
        self._pii[ENVELOPE] = dict(envelope.pii)
        # The fast path checks the envelope in two halves; see schemas.fastpath. Without a safe split it
        # checks the whole envelope at once, as written.
        split = split_envelope(envelope.schema)
        if split is None:
            rest, rest_fast, parts = envelope.schema, envelope.fast, {}
        else:
            rest, parts = split
            rest_fast = _fast_validator(rest)
        self._shared = SharedPartCache({name: _part_check(sub) for name, sub in parts.items()})
        # check_shared_text's verdicts, per part: JSON text -> valid
        self._shared_texts: dict[str, dict[bytes, bool | None]] = {name: {} for name in parts}
        self._checks = {name: _event_check(rest, rest_fast, name, compiled) for name, compiled in events.items()}

    @classmethod
    def load(cls, directory: str | Path | None = None) -> SchemaRegistry:
        """Load and compile every ``*.schema.json`` of ``directory`` (each exactly once).

        :param directory: where the schemas are; defaults to the catalogue shipped in this package.
        :raises SchemaLoadError: listing every file that cannot be read, parsed or compiled, and a
            missing ``envelope.schema.json``.
        """
        root = Path(directory) if directory is not None else DEFAULT_DIRECTORY
        if not root.is_dir():
            raise SchemaLoadError([f"{root}: not a directory"])
        problems: list[str] = []
        envelope: _Compiled | None = None
        events: dict[str, _Compiled] = {}
        for path in schema_files(root):
            name = schema_name(path)
            try:
                compiled = _compile(read_schema_file(path), "" if name == ENVELOPE else PROPERTIES)
            except ValueError as exc:
                problems.append(f"{path.name}: {exc}")
                continue
            if name == ENVELOPE:
                envelope = compiled
            else:
                events[name] = compiled
        if envelope is None and not any(p.startswith(ENVELOPE + SCHEMA_SUFFIX) for p in problems):
            problems.append(f"{ENVELOPE}{SCHEMA_SUFFIX}: missing from {root}")
        if problems:
            raise SchemaLoadError(problems)
        assert envelope is not None
        return cls(envelope, events, root)

    @property
    def events(self) -> list[str]:
        """Names of the events that have a schema, sorted."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        # Callers ask with whatever a client sent as "event", lists included: answer, never raise.
        return isinstance(name, str) and name in self._events

    def _get(self, name: str) -> _Compiled:
        if name == ENVELOPE:
            return self._envelope
        try:
            return self._events[name]
        except (KeyError, TypeError):
            raise KeyError(f"no schema for event {name!r}") from None

    def schema(self, name: str) -> dict[str, Any]:
        """A copy of the schema of event ``name`` (or of ``"envelope"``).

        :param name: event name.
        :raises KeyError: for an unknown name.
        """
        return copy.deepcopy(self._get(name).schema)

    def version(self, name: str) -> int:
        """The ``x-version`` of the schema of event ``name`` (or of ``"envelope"``).

        :param name: event name.
        :raises KeyError: for an unknown name.
        """
        return self._get(name).version

    def pii_fields(self, name: str) -> dict[str, str]:
        """Where an event named ``name`` may carry personal data: dotted path -> ``hash|drop|ip``.

        Envelope fields keep their own paths (``context.ip``); payload fields are prefixed
        ``properties.`` (``properties.email``). Array items are spelled ``[]`` and map values ``*``.

        :param name: event name, or ``"envelope"`` for the envelope's fields alone.
        :raises KeyError: for an unknown name.
        """
        self._get(name)
        return dict(self._pii[name])

    def validate(self, event: Any) -> list[ValidationIssue]:
        """Check one event: the envelope, then ``properties`` against the schema its name selects.

        Never raises: whatever ``event`` is, the result is a list, empty when the event is valid.

        :param event: the decoded event, normally a dict.
        :returns: every issue found (at most ``MAX_ISSUES`` and a note saying there are more), sorted by path.
        """
        try:
            # The common case, two calls (the shared parts usually answered from memory): anything unusual
            # falls through to the slow path, which works out what exactly is wrong, if anything.
            if self._checks[event["event"]](event) and self._shared.check(event):
                return []
        except Exception:
            pass
        return self._slow(event)

    def validate_json(self, event: Any) -> list[ValidationIssue]:
        """:meth:`validate` for an event fresh from ``orjson.loads`` (or ``json.loads`` without NaN): same answer.

        Only for values made of the exact built-in JSON types (``dict`` with ``str`` keys, ``list``, ``str``,
        ``int``, finite ``float``, ``bool``, ``None``), which is what the gateway and the flow decode. That
        lets a remembered ``context`` be recognised by its JSON text alone, skipping the comparison that
        :meth:`validate` needs to tell, say, a ``uuid.UUID`` from the string it prints as. Handing it anything
        else may accept such a value.

        :param event: the decoded event.
        :returns: as :meth:`validate`.
        """
        try:
            if self._checks[event["event"]](event) and self._shared.check(event, True):
                return []
        except Exception:
            pass
        return self._slow(event)

    @property
    def shared_parts(self) -> tuple[str, ...]:
        """The envelope fields checked apart from the rest of an event (see :mod:`schemas.fastpath`); empty when
        the envelope cannot be split."""
        return self._shared.names

    def check_rest(self, event: Any) -> bool:
        """Whether ``event`` is surely valid except for its :attr:`shared_parts`, which this does not look at (they
        may even be ``None``): their values must pass :meth:`check_shared_part` for the event to be valid.

        ``False`` means "not shown valid": :meth:`validate_json` on the whole event tells what is wrong, if
        anything. For callers that remember their shared parts' verdicts themselves, by the parts' JSON text.
        """
        try:
            return self._checks[event["event"]](event) is True
        except Exception:
            return False

    def check_shared_part(self, name: str, value: Any) -> bool:
        """Whether ``value`` is valid as the shared part ``name`` of any event (never remembered here)."""
        return self._shared.check_part(name, value)

    def check_shared_text(self, name: str, text: bytes) -> bool | None:
        """:meth:`check_shared_part` for the JSON text of the value, its verdict remembered by the text itself
        (equal texts decode to equal values); ``None`` when the text is not JSON at all. For callers that find the
        part's bytes in a larger text without decoding them (:mod:`schemas.spans`)."""
        texts = self._shared_texts[name]
        verdict = texts.get(text, _UNKNOWN)
        if verdict is not _UNKNOWN:
            return verdict
        try:
            verdict = self._shared.check_part(name, orjson.loads(text))
        except orjson.JSONDecodeError:
            verdict = None
        if len(texts) >= _SHARED_TEXTS:
            texts.clear()
        texts[text] = verdict
        return verdict

    def _slow(self, event: Any) -> list[ValidationIssue]:
        try:
            return self._explain(event)
        except Exception as exc:  # e.g. RecursionError on absurd nesting; the caller still gets data
            return [ValidationIssue("", f"event could not be validated ({type(exc).__name__})")]

    def _explain(self, event: Any) -> list[ValidationIssue]:
        issues = _issues(self._envelope, event, "")
        if not isinstance(event, dict):
            return finish(issues)
        name = event.get("event")
        compiled = self._events.get(name) if isinstance(name, str) else None
        if compiled is None:
            if isinstance(name, str) and not any(issue.path == "event" for issue in issues):
                issues.append(ValidationIssue("event", f"unknown event {show(name)}: no schema is registered for it"))
        elif PROPERTIES in event:
            issues.extend(_issues(compiled, event[PROPERTIES], PROPERTIES))
        # A non-object payload is reported by both schemas in the same words; finish() merges the two.
        return finish(issues)
