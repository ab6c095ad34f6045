"""Backward-compatibility check between two versions of a schema.

The question answered is the consumer's: *will a validator built from NEW accept every event that was valid
under OLD?* Events already in flight, in the spool, in the dead-letter topic awaiting replay, and from clients
that have not upgraded were all produced against OLD, so a change that rejects any of them is breaking.

Additive changes pass: a new optional property, an enum or type widened, a constraint loosened, text
(``description``, ``title``) edited, ``x-version`` bumped. Everything else is reported as an
:class:`Incompatibility`; where a change cannot be proven safe (a regex edited, a combinator rewritten) it
is reported too, because a false alarm costs a review while a missed break loses events.

Conventions and limits:

- paths are dotted property paths inside the compared schema, ``[]`` for array items, ``*`` for map
  values; ``""`` is the schema's root;
- a property added to an *open* object (``additionalProperties`` absent or true) is accepted although old
  events could have carried that key with another type: Headwater's schemas are closed, and flagging
  every addition to an open object would make the check useless;
- ``$ref`` is compared textually (the catalogue does not use references).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.registry import SCHEMA_SUFFIX, read_schema_file, schema_files, schema_name
from schemas.walk import join

REQUIRED_REMOVED = "required_removed"
REQUIRED_ADDED = "required_added"
TYPE_NARROWED = "type_narrowed"
ENUM_NARROWED = "enum_narrowed"
ADDITIONAL_PROPERTIES_CLOSED = "additional_properties_closed"
FIELD_REMOVED_CLOSED = "field_removed_closed"
CONSTRAINT_TIGHTENED = "constraint_tightened"
SCHEMA_REMOVED = "schema_removed"

_ALL_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
# A smaller maximum, or a larger minimum, rejects values the old schema accepted.
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
# Keywords whose change cannot be proven safe by comparing values: any edit is reported.
_OPAQUE = ("pattern", "format", "propertyNames", "contains", "dependencies", "not", "if", "then", "else",
           "allOf", "anyOf", "oneOf", "$ref", "patternProperties")


@dataclass(frozen=True, order=True)
class Incompatibility:
    """One way in which NEW rejects events that OLD accepted.

    :param path: where in the schema, e.g. ``discount.percent_off`` (``""`` for the root).
    :param kind: one of the module's kind constants, e.g. ``required_added``.
    :param reason: the change in words.
    """

    path: str
    kind: str
    reason: str


def check_schema(old: dict[str, Any], new: dict[str, Any]) -> list[Incompatibility]:
    """Every breaking change from ``old`` to ``new``, sorted; empty when ``new`` accepts all ``old`` accepts.

    :param old: the schema events were produced against.
    :param new: the candidate replacement.
    """
    found: list[Incompatibility] = []
    _compare(old, new, "", found)
    return sorted(set(found))


def version_warning(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """A warning when the schema changed but its ``x-version`` did not go up (never an error by itself).

    :param old: previous schema.
    :param new: candidate schema.
    """
    old_version, new_version = old.get("x-version"), new.get("x-version")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (old_version, new_version)):
        return None  # schemas.lint reports a missing or malformed x-version
    if new_version < old_version:
        return f"x-version went down from {old_version} to {new_version}"
    unversioned_old = {k: v for k, v in old.items() if k != "x-version"}
    unversioned_new = {k: v for k, v in new.items() if k != "x-version"}
    if new_version == old_version and _canonical(unversioned_old) != _canonical(unversioned_new):
        return f"schema changed but x-version is still {new_version}"
    return None


def check_paths(old: str | Path, new: str | Path) -> dict[str, list[Incompatibility]]:
    """Compare two schema files, or two directories of ``*.schema.json`` matched by file name.

    A schema present in OLD but missing from NEW is a ``schema_removed`` incompatibility; a schema new in
    NEW is fine (nothing was produced against it yet).

    :param old: file or directory with the schemas events were produced against.
    :param new: file or directory with the candidate schemas.
    :returns: schema name -> its incompatibilities, only for schemas that have some (empty: compatible).
    :raises ValueError: when one path is a file and the other a directory, a path does not exist, or a
        schema file cannot be parsed.
    """
    old_path, new_path = Path(old), Path(new)
    if old_path.is_file() and new_path.is_file():
        pairs = {schema_name(old_path): (old_path, new_path)}
    elif old_path.is_dir() and new_path.is_dir():
        new_files = {p.name: p for p in schema_files(new_path)}
        pairs = {schema_name(p): (p, new_files.get(p.name)) for p in schema_files(old_path)}
    else:
        raise ValueError(f"compare two files or two directories, not {old_path} and {new_path}")
    result: dict[str, list[Incompatibility]] = {}
    for name, (old_file, new_file) in sorted(pairs.items()):
        if new_file is None:
            reason = f"{name}{SCHEMA_SUFFIX} was deleted; events of this kind would no longer validate"
            result[name] = [Incompatibility("", SCHEMA_REMOVED, reason)]
            continue
        found = check_schema(_read(old_file), _read(new_file))
        if found:
            result[name] = found
    return result


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_schema_file(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _canonical(value: Any) -> str:
    # JSON text as identity: 1 and True, or 1 and 1.0, are different JSON values but equal in Python.
    return json.dumps(value, sort_keys=True)


def _types(schema: dict[str, Any]) -> frozenset[str]:
    declared = schema.get("type")
    values = _enum_values(schema)
    if declared is not None:
        types = set(declared if isinstance(declared, list) else [declared])
    elif values is not None:
        types = {_json_type(v) for v in values}
    else:
        return _ALL_TYPES
    if "number" in types:
        types.add("integer")
    return frozenset(types)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _compare(old: Any, new: Any, path: str, found: list[Incompatibility]) -> None:
    if new is True or new == {} or old is False:
        return  # new accepts everything, or old accepted nothing: nothing can break
    if new is False:
        found.append(Incompatibility(path, TYPE_NARROWED, "schema replaced by false: nothing is accepted"))
        return
    old = {} if old is True else old
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    _compare_types(old, new, path, found)
    _compare_enums(old, new, path, found)
    _compare_bounds(old, new, path, found)
    _compare_opaque(old, new, path, found)
    _compare_objects(old, new, path, found)
    _compare_arrays(old, new, path, found)


def _compare_types(old: dict[str, Any], new: dict[str, Any], path: str, found: list[Incompatibility]) -> None:
    lost = _types(old) - _types(new)
    if lost:
        found.append(Incompatibility(path, TYPE_NARROWED, f"type no longer accepts {sorted(lost)}"))


def _enum_values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    values = schema.get("enum")
    return values if isinstance(values, list) else None


def _compare_enums(old: dict[str, Any], new: dict[str, Any], path: str, found: list[Incompatibility]) -> None:
    new_values = _enum_values(new)
    if new_values is None:
        return
    old_values = _enum_values(old)
    if old_values is None:
        found.append(Incompatibility(path, ENUM_NARROWED, f"values restricted to an enum of {len(new_values)} where any was allowed"))
        return
    allowed = {_canonical(v) for v in new_values}
    removed = [v for v in old_values if _canonical(v) not in allowed]
    if removed:
        found.append(Incompatibility(path, ENUM_NARROWED, f"enum values removed: {removed!r}"))


def _compare_bounds(old: dict[str, Any], new: dict[str, Any], path: str, found: list[Incompatibility]) -> None:
    for keyword in _UPPER_BOUNDS + _LOWER_BOUNDS:
        if keyword not in new:
            continue
        before, after = old.get(keyword), new[keyword]
        if before is None:
            found.append(Incompatibility(path, CONSTRAINT_TIGHTENED, f"{keyword} {after!r} added"))
        elif _is_number(before) and _is_number(after):
            if (after < before) if keyword in _UPPER_BOUNDS else (after > before):
                found.append(Incompatibility(path, CONSTRAINT_TIGHTENED, f"{keyword} changed from {before!r} to {after!r}"))
    if "multipleOf" in new and not _divides(new["multipleOf"], old.get("multipleOf")):
        found.append(Incompatibility(path, CONSTRAINT_TIGHTENED, f"multipleOf {new['multipleOf']!r} is stricter than before"))
    if new.get("uniqueItems") is True and old.get("uniqueItems") is not True:
        found.append(Incompatibility(path, CONSTRAINT_TIGHTENED, "uniqueItems added"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _divides(new_step: Any, old_step: Any) -> bool:
    # Every multiple of the old step is a multiple of the new one when the new step divides the old.
    if not _is_number(new_step) or not _is_number(old_step) or new_step <= 0:
        return False
    ratio = old_step / new_step
    return abs(ratio - round(ratio)) < 1e-9


def _compare_opaque(old: dict[str, Any], new: dict[str, Any], path: str, found: list[Incompatibility]) -> None:
    for keyword in _OPAQUE:
        if keyword not in new:
            continue
        if keyword not in old:
            found.append(Incompatibility(path, CONSTRAINT_TIGHTENED, f"{keyword} added: {_short(new[keyword])}"))
        elif _canonical(old[keyword]) != _canonical(new[keyword]):
            found.append(Incompatibility(path, CONSTRAINT_TIGHTENED, f"{keyword} changed from {_short(old[keyword])} to {_short(new[keyword])}"))


def _short(value: Any) -> str:
    text = _canonical(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _is_closed(schema: dict[str, Any]) -> bool:
    return schema.get("additionalProperties", True) is False


def _compare_objects(old: dict[str, Any], new: dict[str, Any], path: str, found: list[Incompatibility]) -> None:
    old_props = old.get("properties") if isinstance(old.get("properties"), dict) else {}
    new_props = new.get("properties") if isinstance(new.get("properties"), dict) else {}
    old_required = set(old.get("required") or [])
    new_required = set(new.get("required") or [])
    new_extra = new.get("additionalProperties", True)

    for name in sorted(new_required - old_required):
        found.append(Incompatibility(join(path, name), REQUIRED_ADDED, f"{name!r} is now required; older events may lack it"))

    for name, old_field in old_props.items():
        field_path = join(path, name)
        if name in new_props:
            _compare(old_field, new_props[name], field_path, found)
        elif name in old_required:
            found.append(Incompatibility(field_path, REQUIRED_REMOVED, f"required property {name!r} was removed or renamed"))
        elif new_extra is False:
            found.append(Incompatibility(field_path, FIELD_REMOVED_CLOSED, f"property {name!r} was removed and additionalProperties is false, so events carrying it are rejected"))
        elif isinstance(new_extra, dict):
            _compare(old_field, new_extra, field_path, found)

    old_extra = old.get("additionalProperties", True)
    if old_extra is not False and new_extra is False:
        found.append(Incompatibility(path, ADDITIONAL_PROPERTIES_CLOSED, "additionalProperties closed: undeclared properties are now rejected"))
    elif old_extra is True and isinstance(new_extra, dict) and new_extra:
        found.append(Incompatibility(path, ADDITIONAL_PROPERTIES_CLOSED, "additionalProperties restricted to a schema where anything was allowed"))
    elif isinstance(old_extra, dict) and isinstance(new_extra, dict):
        _compare(old_extra, new_extra, join(path, "*"), found)
    if isinstance(old_extra, dict):
        # Keys old validated through its additionalProperties schema that new now declares explicitly.
        for name in sorted(new_props.keys() - old_props.keys()):
            _compare(old_extra, new_props[name], join(path, name), found)


def _compare_arrays(old: dict[str, Any], new: dict[str, Any], path: str, found: list[Incompatibility]) -> None:
    old_items, new_items = old.get("items"), new.get("items")
    if new_items is None:
        return
    if isinstance(old_items, list) or isinstance(new_items, list):
        if _canonical(old_items) != _canonical(new_items):
            found.append(Incompatibility(path + "[]", CONSTRAINT_TIGHTENED, "tuple items changed"))
        return
    _compare(True if old_items is None else old_items, new_items, path + "[]", found)
