"""House rules for the schema catalogue, beyond "is it valid JSON Schema".

Each rule protects something downstream:

- every file parses, is a valid draft-07 schema and compiles with fastjsonschema (the gateway must start);
- ``title``, ``description`` and a positive integer ``x-version`` at the top, and a ``description`` on
  every property at any depth (the catalogue is the data dictionary analysts read);
- ``x-pii`` is one of ``hash``, ``drop``, ``ip``; ``hash`` sits on a scalar field and ``ip`` on a string
  (a hash of a whole object would join nothing, and only a string can hold an address), while ``drop``
  may remove a field of any type, objects and arrays included;
- every ``format`` is one Headwater actually checks (:mod:`schemas.formats`): an unknown format is silently
  not validated, so a typo would switch validation off;
- every object declares ``additionalProperties`` (``false`` or a schema): an open object lets undeclared,
  unmarked personal data through;
- file names are valid event names, and ``envelope.schema.json`` exists;
- a property whose *name* says it holds personal data carries an ``x-pii`` mark.

The personal-data name rule splits a name into words (snake_case, camelCase and kebab-case alike, so
``ipAddress``, ``ip_address`` and ``ip-address`` are all ``ip`` + ``address``) and flags it when

- any word, or two adjacent words run together, is one of :data:`PII_WORDS` (``email``, ``e`` + ``mail``,
  ``phone``, ``ip``, ``address``, ``postcode``, ``zip``, ``ssn``, ``dob``, ``birth``...), or
- the word ``name`` follows a word that makes it a person's name (:data:`PERSONAL_NAME_PREFIXES`:
  ``first_name``, ``lastName``, ``display_name``, ``user_name``...), or
- the word ``name`` is the whole field name, unless it sits in an object named after a thing
  (:data:`THING_WORDS`: ``app.name``, ``library.name``, ``plan.name``). At the top level of a payload, or
  inside ``user``, ``author`` or anything not known to be a thing, a bare ``name`` is a person's name.

So ``plan_name``, ``community_name`` and ``screen_name`` (an app screen) are not personal data, while
``name`` on its own is. Boolean fields are exempt (``email_verified`` says nothing about the address).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from schemas.formats import FORMAT_CHECKS
from schemas.registry import (
    DEFAULT_DIRECTORY,
    ENVELOPE,
    PROPERTIES,
    SCHEMA_SUFFIX,
    compile_fast,
    read_schema_file,
    schema_files,
    schema_name,
)
from schemas.walk import iter_nodes

PII_MARKS = frozenset({"hash", "drop", "ip"})
PII_WORDS = frozenset({
    "email", "mail", "emailaddress", "phone", "phonenumber", "telephone", "mobile", "msisdn",
    "ip", "ipv4", "ipv6", "ipaddress", "ssn", "dob", "birth", "birthday", "birthdate",
    "address", "street", "postcode", "postalcode", "zip", "zipcode",
    "passport", "iban", "username", "fullname", "firstname", "lastname", "surname", "nickname",
})
PERSONAL_NAME_PREFIXES = frozenset({
    "first", "last", "full", "user", "display", "given", "family", "middle", "legal", "real", "nick", "maiden",
})
THING_WORDS = frozenset({
    "app", "application", "library", "sdk", "plan", "product", "item", "company", "organization",
    "organisation", "workspace", "team", "community", "group", "channel", "campaign", "page", "screen",
    "device", "os", "browser", "event", "experiment", "feature", "file", "attachment", "integration",
    "automation", "rule", "tag", "category", "role", "step", "action", "coupon", "currency", "country",
    "city", "region", "network", "carrier",
})
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SCALARS = frozenset({"string", "number", "integer", "null"})


@dataclass(frozen=True, order=True)
class LintProblem:
    """One rule broken by one schema.

    :param schema: schema name (file name without ``.schema.json``).
    :param path: where in the schema (dotted, as in :mod:`schemas.walk`), ``""`` for the file itself.
    :param message: what is wrong and what to do.
    """

    schema: str
    path: str
    message: str


def lint_directory(directory: Path | str | None = None) -> list[LintProblem]:
    """Check every ``*.schema.json`` of ``directory`` against the house rules.

    :param directory: catalogue to check; defaults to the one shipped in this package.
    :returns: every problem found, sorted; empty when the catalogue is clean.
    """
    root = Path(directory) if directory is not None else DEFAULT_DIRECTORY
    if not root.is_dir():
        return [LintProblem("", "", f"{root} is not a directory")]
    files = schema_files(root)
    problems: list[LintProblem] = []
    if not any(schema_name(p) == ENVELOPE for p in files):
        problems.append(LintProblem(ENVELOPE, "", f"{ENVELOPE}{SCHEMA_SUFFIX} is missing from {root}"))
    for path in files:
        problems.extend(lint_file(path))
    return sorted(problems)


def lint_file(path: Path) -> list[LintProblem]:
    """Check one schema file against the house rules.

    :param path: the ``*.schema.json`` file.
    """
    name = schema_name(path)
    try:
        schema = read_schema_file(path)
    except ValueError as exc:
        return [LintProblem(name, "", str(exc))]
    problems = [LintProblem(name, where, message) for where, message in _schema_problems(name, schema)]
    try:
        compile_fast(schema)
    except ValueError as exc:
        problems.append(LintProblem(name, "", str(exc)))
    return sorted(problems)


def _schema_problems(name: str, schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if _EVENT_NAME.fullmatch(name) is None:
        yield "", f"file name {name!r} is not a valid event name (lower case, digits, underscores)"
    for keyword in ("title", "description"):
        if not _text(schema.get(keyword)):
            yield "", f"top-level {keyword!r} is missing or empty"
    version = schema.get("x-version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        yield "", f"'x-version' must be a positive integer, found {version!r}"
    if "x-pii" in schema:
        yield "", "'x-pii' belongs on a field, not on the whole schema"
    yield from _node_problems("", schema)
    for node in iter_nodes(schema):
        if not isinstance(node.schema, dict):
            if node.name is not None:
                yield node.path, "property schema must be an object with a description, not a bare boolean"
            continue
        if node.name is not None and not _text(node.schema.get("description")):
            yield node.path, "property has no description"
        # The envelope's payload slot is open on purpose: each event's own schema closes it.
        payload_slot = name == ENVELOPE and node.path == PROPERTIES
        yield from _node_problems(node.path, node.schema, must_close=not payload_slot)
        if node.name is not None and "x-pii" not in node.schema and _looks_personal(node.path, node.schema):
            yield node.path, (
                f"{node.name!r} looks like personal data but has no x-pii mark "
                "(add \"x-pii\": \"hash\" | \"drop\" | \"ip\")"
            )


def _node_problems(path: str, schema: dict[str, Any], must_close: bool = True) -> Iterator[tuple[str, str]]:
    types = _declared_types(schema)
    if "x-pii" in schema:
        mark = schema["x-pii"]
        if mark not in PII_MARKS:
            yield path, f"x-pii must be one of {sorted(PII_MARKS)}, found {mark!r}"
        elif mark == "hash" and not (types and types <= _SCALARS):
            yield path, "x-pii 'hash' can only mark a field with scalar types (string, number, integer, null)"
        elif mark == "ip" and not (types and types <= {"string", "null"}):
            yield path, "x-pii 'ip' can only mark a string field"
    form = schema.get("format")
    if form is not None and form not in FORMAT_CHECKS:
        yield path, f"format {form!r} is not checked by Headwater; use one of {sorted(FORMAT_CHECKS)}"
    if must_close and "object" in types and "additionalProperties" not in schema:
        yield path, "object must declare additionalProperties (false, or a schema for its values)"


def _declared_types(schema: dict[str, Any]) -> frozenset[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return frozenset([declared])
    if isinstance(declared, list):
        return frozenset(t for t in declared if isinstance(t, str))
    return frozenset()


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def name_words(name: str) -> list[str]:
    """Split a property name into lower-case words, whatever its case style.

    :param name: e.g. ``billingEmail``, ``billing_email``, ``IPAddress``, ``e-mail``.
    """
    return [word.lower() for word in _WORDS.findall(name)]


def looks_personal(name: str, parent: str = "") -> bool:
    """Whether a property name says the field holds personal data (see the module docstring).

    :param name: the property name.
    :param parent: name of the object property it sits in, ``""`` at the top level of a payload.
    """
    words = name_words(name)
    joined_pairs = [a + b for a, b in zip(words, words[1:])]
    if any(word in PII_WORDS for word in words + joined_pairs):
        return True
    if words == ["name"]:
        parent_words = name_words(parent)
        return not parent_words or _singular(parent_words[-1]) not in THING_WORDS
    return any(
        word == "name" and position > 0 and words[position - 1] in PERSONAL_NAME_PREFIXES
        for position, word in enumerate(words)
    )


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and word[:-1] in THING_WORDS else word


def _looks_personal(path: str, schema: dict[str, Any]) -> bool:
    # The path of a field is "...parent.name"; array items ("items[].name") still name their parent.
    parent, _, name = path.rpartition(".")
    parent = parent.rpartition(".")[2].replace("[]", "").replace("*", "")
    return _declared_types(schema) != {"boolean"} and looks_personal(name, parent)
