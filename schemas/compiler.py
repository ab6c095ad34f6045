"""A small JSON Schema compiler for the registry's hot path: plain Python that answers "surely valid?".

fastjsonschema's generated code is general: ``isinstance`` checks that admit subclasses, a copied key set per
object, exception objects built for every failed branch. For the catalogue's subset of JSON Schema the same
decision can be written as straight-line code over exact types, which is what this module emits.

The generated check returns ``True`` only for a value that fastjsonschema accepts as well, and ``False`` for
everything else, including values that are valid but unusual (a ``1.0`` where an integer belongs, a ``str``
subclass, a tuple for an array): those the registry hands to fastjsonschema, which has the final word, so the
check may be conservative but must never be permissive. Concretely it relies on

- exact types (``type(x) is str``), so only values ``orjson.loads`` or ``json.loads`` can produce pass;
- the very regular expressions fastjsonschema compiles for ``pattern`` (``$`` read as end of string);
- the format functions of :mod:`schemas.formats`, the same ones both validators are given.

A schema that uses anything outside the subset raises :class:`Unsupported`; the registry then keeps
fastjsonschema for it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import fastjsonschema

from schemas.formats import FORMAT_CHECKS, PATTERN_CHECKS

try:  # the C evaluator of the same checks (schemas/_cschema.c); without it the generated Python runs
    from schemas._cschema import Checker
except ImportError:  # pragma: no cover - an install without a C compiler
    Checker = None

try:  # the regex parser is private to the standard library: without it, patterns keep plain ``search``
    from re._constants import AT, AT_BEGINNING, AT_END_STRING  # type: ignore[import-not-found]
    from re._parser import parse as sre_parse  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.11 and 3.12 have both
    sre_parse = None

#: Keywords that never affect validity.
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "examples", "default", "readOnly",
                "writeOnly"}
_STRING = {"minLength", "maxLength", "pattern", "format"}
_NUMBER = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_OBJECT = {"properties", "required", "additionalProperties", "maxProperties", "minProperties", "propertyNames",
           "anyOf"}
_ARRAY = {"items", "maxItems", "minItems", "uniqueItems"}
_SUPPORTED = _ANNOTATIONS | _STRING | _NUMBER | _OBJECT | _ARRAY | {"type", "enum", "allOf"}
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


class Unsupported(ValueError):
    """The schema uses something this compiler does not translate; validate it with fastjsonschema instead."""


def _fastjsonschema_regex(pattern: str) -> re.Pattern[str]:
    """The compiled regular expression fastjsonschema uses for ``pattern``, so both read it alike."""
    generated = fastjsonschema.compile({"pattern": pattern})
    return generated.__globals__["REGEX_PATTERNS"][pattern]


def _pattern_test(pattern: str) -> Callable[[str], Any]:
    """A function that returns ``None`` exactly when fastjsonschema's regex for ``pattern`` finds no match.

    fastjsonschema calls ``search`` on ``^...\\Z``; for a pattern whose outermost sequence is anchored that
    way, ``fullmatch`` of the part between the anchors gives the same answer in about half the time (and
    ``match`` when only the start is anchored). The anchors are recognised in the parsed pattern, not the
    text, so an alternation such as ``^a|b$`` or an escaped ``\\$`` keeps plain ``search``.
    """
    compiled = _fastjsonschema_regex(pattern)
    source, flags = compiled.pattern, compiled.flags
    if sre_parse is None:
        return compiled.search
    try:
        ops = list(sre_parse(source, flags))
        if ops and ops[0] == (AT, AT_BEGINNING) and source.startswith("^"):
            if len(ops) > 1 and ops[-1] == (AT, AT_END_STRING) and source.endswith("\\Z"):
                inner, kept, method = source[1:-2], ops[1:-1], "fullmatch"
            else:
                inner, kept, method = source[1:], ops[1:], "match"
            if repr(list(sre_parse(inner, flags))) == repr(kept):
                return getattr(re.compile(inner, flags), method)
    except Exception:  # a private parser that changed shape: keep what fastjsonschema does
        pass
    return compiled.search


class _Writer:
    """Accumulates the generated source and the constants it refers to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_inf": math.inf}
        self._names: dict[tuple[str, Any], str] = {}
        self._count = 0

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def variable(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def constant(self, kind: str, key: Any, value: Callable[[], Any]) -> str:
        """A name for a constant, shared by every place that needs the same one."""
        name = self._names.get((kind, key))
        if name is None:
            name = f"_{kind}{len(self._names)}"
            self._names[(kind, key)] = name
            self.constants[name] = value()
        return name


def _types(schema: dict[str, Any]) -> list[str]:
    declared = schema.get("type", list(_TYPES))
    declared = [declared] if isinstance(declared, str) else declared
    if not isinstance(declared, list) or not all(t in _TYPES for t in declared):
        raise Unsupported(f"type {declared!r}")
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values or not all(type(v) is str for v in values):
            raise Unsupported("enum of anything but strings")
        declared = [t for t in declared if t == "string"]
    return declared


def _type_test(kind: str, var: str) -> str:
    return {
        "object": f"type({var}) is dict",
        "array": f"type({var}) is list",
        "string": f"type({var}) is str",
        "integer": f"type({var}) is int",
        "number": f"(type({var}) is int or type({var}) is float)",
        "boolean": f"type({var}) is bool",
        "null": f"{var} is None",
    }[kind]


def _check_keywords(schema: dict[str, Any]) -> None:
    """:raises Unsupported: for a keyword outside the subset, or an anyOf that is not alternatives of required keys."""
    unknown = set(schema) - _SUPPORTED - {k for k in schema if k.startswith("x-")}
    if unknown:
        raise Unsupported(f"keyword(s) {sorted(unknown)}")
    alternatives = schema.get("anyOf", [])
    if not isinstance(alternatives, list) or not all(
            isinstance(b, dict) and set(b) == {"required"} and isinstance(b["required"], list) for b in alternatives):
        # Alternatives of required keys say nothing about non-objects; anything else would need a real anyOf.
        raise Unsupported("anyOf other than alternatives of required keys")


def _emit(out: _Writer, schema: Any, var: str, depth: int) -> None:
    """Lines that ``return False`` unless ``var`` is valid against ``schema``."""
    if schema is True:
        return
    if schema is False or not isinstance(schema, dict):
        if schema is False:
            out.line(depth, "return False")
            return
        raise Unsupported(f"schema of type {type(schema).__name__}")
    _check_keywords(schema)
    if "allOf" in schema:
        # Each part in turn on the same value; the registry uses this to add an event's payload schema to
        # the envelope's "properties" without losing what the envelope itself says about it.
        parts = schema["allOf"]
        if not isinstance(parts, list):
            raise Unsupported("allOf that is not a list")
        for part in parts:
            _emit(out, part, var, depth)
        schema = {key: value for key, value in schema.items() if key != "allOf"}
        if set(schema) <= _ANNOTATIONS or not schema:
            return
    kinds = _types(schema)
    if not kinds:
        out.line(depth, "return False")
        return
    bodies = [(kind, _body(out, schema, kind, var, depth + 1)) for kind in kinds]
    if "type" not in schema and "enum" not in schema:
        # Untyped: only the types something applies to need a branch, but a value of no JSON type at all
        # (a str subclass, a tuple) must not slip past a constraint fastjsonschema would apply to it.
        json_types = out.constant("types", "json", lambda: frozenset({dict, list, str, int, float, bool, type(None)}))
        bodies = [(kind, body) for kind, body in bodies if body]
        for index, (kind, body) in enumerate(bodies):
            out.line(depth, f"{'if' if index == 0 else 'elif'} {_type_test(kind, var)}:")
            out.lines.extend(body)
        out.line(depth, f"{'elif' if bodies else 'if'} type({var}) not in {json_types}:")
        out.line(depth + 1, "return False")
        return
    if len(bodies) == 1:
        kind, body = bodies[0]
        out.line(depth, f"if not {_type_test(kind, var)}:")
        out.line(depth + 1, "return False")
        out.lines.extend(line[4:] for line in body)  # the body was written one level deeper
        return
    for index, (kind, body) in enumerate(bodies):
        out.line(depth, f"{'if' if index == 0 else 'elif'} {_type_test(kind, var)}:")
        out.lines.extend(body or ["    " * (depth + 1) + "pass"])
    out.line(depth, "else:")
    out.line(depth + 1, "return False")


def _body(out: _Writer, schema: dict[str, Any], kind: str, var: str, depth: int) -> list[str]:
    """The constraints of ``schema`` that apply to a value of JSON type ``kind``, as lines of their own."""
    saved, out.lines = out.lines, []
    try:
        if kind == "string":
            _string(out, schema, var, depth)
        elif kind in ("integer", "number"):
            _number(out, schema, var, depth, kind)
        elif kind == "object":
            _object(out, schema, var, depth)
        elif kind == "array":
            _array(out, schema, var, depth)
        return out.lines
    finally:
        out.lines = saved


def _count(schema: dict[str, Any], keyword: str) -> int | None:
    """The value of a size keyword, which must be a non-negative integer."""
    value = schema.get(keyword)
    if value is not None and (type(value) is not int or value < 0):
        raise Unsupported(f"{keyword} {value!r}")
    return value


def _string(out: _Writer, schema: dict[str, Any], var: str, depth: int) -> None:
    if "enum" in schema:
        values = out.constant("enum", tuple(schema["enum"]), lambda: frozenset(schema["enum"]))
        out.line(depth, f"if {var} not in {values}:")
        out.line(depth + 1, "return False")
    low, high = _count(schema, "minLength"), _count(schema, "maxLength")
    if low is not None or high is not None:
        length = f"len({var})"
        if low is not None and high is not None:
            out.line(depth, f"if not {low!r} <= {length} <= {high!r}:")
        elif low is not None:
            out.line(depth, f"if {length} < {low!r}:")
        else:
            out.line(depth, f"if {length} > {high!r}:")
        out.line(depth + 1, "return False")
    if "pattern" in schema:
        pattern = schema["pattern"]
        if pattern in PATTERN_CHECKS:  # a pattern some format check answers exactly, e.g. the event id's
            check = out.constant("pat", pattern, lambda: PATTERN_CHECKS[pattern])
            out.line(depth, f"if not {check}({var}):")
        else:
            search = out.constant("re", pattern, lambda: _pattern_test(pattern))
            out.line(depth, f"if {search}({var}) is None:")
        out.line(depth + 1, "return False")
    if "format" in schema:
        name = schema["format"]
        if name not in FORMAT_CHECKS:
            raise Unsupported(f"format {name!r}")
        check = out.constant("fmt", name, lambda: FORMAT_CHECKS[name])
        out.line(depth, f"if not {check}({var}):")
        out.line(depth + 1, "return False")


def _number(out: _Writer, schema: dict[str, Any], var: str, depth: int, kind: str) -> None:
    if kind == "number":
        # NaN and infinities are left to fastjsonschema: JSON has no such number.
        out.line(depth, f"if not -_inf < {var} < _inf:")
        out.line(depth + 1, "return False")
    # Written as fastjsonschema writes them (reject when ...), so both draw the line at the same place.
    for keyword, refuse in (("minimum", "<"), ("maximum", ">"), ("exclusiveMinimum", "<="),
                            ("exclusiveMaximum", ">=")):
        bound = schema.get(keyword)
        if bound is None:
            continue
        if type(bound) not in (int, float):
            raise Unsupported(f"{keyword} {bound!r}")
        out.line(depth, f"if {var} {refuse} {bound!r}:")
        out.line(depth + 1, "return False")


def _object(out: _Writer, schema: dict[str, Any], var: str, depth: int) -> None:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise Unsupported("properties or required of an unexpected shape")
    if "anyOf" in schema:
        groups = [" and ".join(f"{key!r} in {var}" for key in branch["required"]) or "True"
                  for branch in schema["anyOf"]]
        out.line(depth, f"if not ({' or '.join(f'({g})' for g in groups)}):")
        out.line(depth + 1, "return False")
    closed = extra is False
    counter = f"{var}_n" if closed else None
    required = list(dict.fromkeys(required))
    present_required = [key for key in required if key in properties]
    if closed:
        # Every key must be declared: count the declared keys present and compare with the size.
        out.line(depth, f"{counter} = {len(present_required)}")
    for key in required:
        if key not in properties:
            if closed:
                out.line(depth, "return False")  # a required key that may not be present
                return
            out.line(depth, f"if {key!r} not in {var}:")
            out.line(depth + 1, "return False")
    for key, subschema in properties.items():
        child = out.variable()
        if key in required:
            # A missing key raises KeyError, which the generated function turns into False.
            out.line(depth, f"{child} = {var}[{key!r}]")
            _emit(out, subschema, child, depth)
        else:
            out.line(depth, f"if {key!r} in {var}:")
            if counter:
                out.line(depth + 1, f"{counter} += 1")
            out.line(depth + 1, f"{child} = {var}[{key!r}]")
            _emit(out, subschema, child, depth + 1)
    if closed:
        out.line(depth, f"if len({var}) != {counter}:")
        out.line(depth + 1, "return False")
    for keyword, refuse in (("maxProperties", ">"), ("minProperties", "<")):
        if keyword in schema:
            out.line(depth, f"if len({var}) {refuse} {_count(schema, keyword)}:")
            out.line(depth + 1, "return False")
    if "propertyNames" in schema and schema["propertyNames"] is not True:
        name = out.variable()
        out.line(depth, f"for {name} in {var}:")
        _emit(out, schema["propertyNames"], name, depth + 1)
    if not isinstance(extra, bool):
        key, value = out.variable(), out.variable()
        out.line(depth, f"for {key}, {value} in {var}.items():")
        inner = depth + 1
        if properties:
            declared = out.constant("keys", tuple(properties), lambda: frozenset(properties))
            out.line(inner, f"if {key} in {declared}:")
            out.line(inner + 1, "continue")
        _emit(out, extra, value, inner)


def _array(out: _Writer, schema: dict[str, Any], var: str, depth: int) -> None:
    low, high = _count(schema, "minItems"), _count(schema, "maxItems")
    if low is not None:
        out.line(depth, f"if len({var}) < {low}:")
        out.line(depth + 1, "return False")
    if high is not None:
        out.line(depth, f"if len({var}) > {high}:")
        out.line(depth + 1, "return False")
    items = schema.get("items", True)
    if isinstance(items, list):
        raise Unsupported("tuple-form items")
    if items is not True:
        item = out.variable()
        out.line(depth, f"for {item} in {var}:")
        _emit(out, items, item, depth + 1)
    if schema.get("uniqueItems") is True:
        # Only strings compare by value alone in a set (True == 1 in Python, not in JSON).
        if not (isinstance(items, dict) and items.get("type") == "string"):
            raise Unsupported("uniqueItems over anything but strings")
        out.line(depth, f"if len(set({var})) != len({var}):")
        out.line(depth + 1, "return False")


def check_source(schema: Any, name: str = "check") -> tuple[str, dict[str, Any]]:
    """The Python source of a check for ``schema`` and the constants it needs (its globals).

    :param schema: a JSON Schema in the supported subset.
    :param name: the function's name.
    :raises Unsupported: naming what is outside the subset.
    """
    out = _Writer()
    out.line(0, f"def {name}(data):")
    out.line(1, "try:")
    _emit(out, schema, "data", 2)
    out.line(2, "pass")  # the body of a schema that checks nothing (true, or allOf of nothing) would be empty
    out.line(1, "except Exception:  # e.g. a missing required key: not surely valid")
    out.line(2, "return False")
    out.line(1, "return True")
    return "\n".join(out.lines) + "\n", out.constants


def compile_check(schema: Any, name: str = "check") -> Callable[[Any], bool]:
    """:func:`compile_python_check`, evaluated in C (``schemas._cschema``) when that module is built: the same
    answers for every value, without running bytecode. :raises Unsupported: as :func:`compile_python_check`."""
    if Checker is None:
        return compile_python_check(schema, name)
    return Checker(check_spec(schema))


def compile_python_check(schema: Any, name: str = "check") -> Callable[[Any], bool]:
    """A function ``value -> bool`` that is ``True`` only when ``value`` is valid against ``schema``.

    ``False`` means "not shown valid": the value may still be valid in a way this check does not follow
    (see the module's description), so the caller must then ask fastjsonschema.

    :param schema: a JSON Schema in the supported subset.
    :param name: the function's name, as it will appear in tracebacks and profiles.
    :raises Unsupported: naming what is outside the subset.
    """
    source, namespace = check_source(schema, name)
    exec(compile(source, f"<schema check {name}>", "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace[name]


# --- the same decisions as data, for the C interpreter in schemas/_cschema.c -------------------------------------
#
# ``check_spec`` walks a schema exactly as ``_emit`` does and describes the check it would generate as nested
# tuples; ``schemas._cschema.Checker(spec)`` evaluates that description without running Python bytecode. Layout
# (the C file reads it by position):
#
#   node    None (true) | False | (parts, chain, untyped)
#           parts: the allOf parts' nodes, each checked first; chain: ((kind, body), ...) tried in order, the first
#           kind whose exact type test matches applies its body (``()``: no constraint); no match fails, unless
#           ``untyped`` and the value is of some JSON type; chain ``None``: only the parts
#   kind    0 object, 1 array, 2 string, 3 integer, 4 number, 5 boolean, 6 null
#   string  (enum frozenset | None, min length | -1, max length | -1, pattern callable | None,
#            pattern answers None for no match (a regex method) rather than a false value, format callable | None)
#   number  (finite check (kind number), ((comparison op, bound), ...)): the value fails when ``value op bound``
#   object  (anyOf required-key groups | None, closed, always fails, keys that must be present,
#            ((key, node, required), ...), declared keys present at the start of the count, max | -1, min | -1,
#            propertyNames node | True (no check), additionalProperties node | True (no check), declared keys)
#   array   (min items | -1, max items | -1, items node, unique strings)
_KIND = {name: index for index, name in enumerate(_TYPES)}
_LT, _LE, _GT, _GE = 0, 1, 4, 5  # Python's rich comparison codes (Py_LT, Py_LE, Py_GT, Py_GE)


def check_spec(schema: Any) -> Any:
    """The description of the check ``compile_check`` would generate for ``schema``.

    :raises Unsupported: exactly where :func:`compile_check` does.
    """
    return _spec(schema)


def _spec(schema: Any) -> Any:
    if schema is True:
        return None
    if schema is False or not isinstance(schema, dict):
        if schema is False:
            return False
        raise Unsupported(f"schema of type {type(schema).__name__}")
    _check_keywords(schema)
    parts: tuple = ()
    if "allOf" in schema:
        if not isinstance(schema["allOf"], list):
            raise Unsupported("allOf that is not a list")
        parts = tuple(_spec(part) for part in schema["allOf"])
        schema = {key: value for key, value in schema.items() if key != "allOf"}
        if set(schema) <= _ANNOTATIONS or not schema:
            return (parts, None, False) if parts else None  # the parts and nothing else
    kinds = _types(schema)
    if not kinds:
        return (parts, (), False)  # nothing matches: fails
    bodies = [(kind, _spec_body(schema, kind)) for kind in kinds]
    untyped = "type" not in schema and "enum" not in schema
    if untyped:
        bodies = [(kind, body) for kind, body in bodies if body is not None]
    return (parts, tuple((_KIND[kind], body if body is not None else ()) for kind, body in bodies), untyped)


def _spec_body(schema: dict[str, Any], kind: str) -> tuple | None:
    """A kind's constraints, or ``None`` when ``_body`` would write no line for it."""
    if kind == "string":
        enum = frozenset(schema["enum"]) if "enum" in schema else None
        low, high = _count(schema, "minLength"), _count(schema, "maxLength")
        pattern = test = None
        is_regex = False
        if "pattern" in schema:
            pattern = schema["pattern"]
            if pattern in PATTERN_CHECKS:
                test = PATTERN_CHECKS[pattern]
            else:
                test, is_regex = _pattern_test(pattern), True
        fmt = None
        if "format" in schema:
            if schema["format"] not in FORMAT_CHECKS:
                raise Unsupported(f"format {schema['format']!r}")
            fmt = FORMAT_CHECKS[schema["format"]]
        if enum is None and low is None and high is None and test is None and fmt is None:
            return None
        return (enum, -1 if low is None else low, -1 if high is None else high, test, is_regex, fmt)
    if kind in ("integer", "number"):
        bounds = []
        for keyword, op in (("minimum", _LT), ("maximum", _GT), ("exclusiveMinimum", _LE), ("exclusiveMaximum", _GE)):
            bound = schema.get(keyword)
            if bound is None:
                continue
            if type(bound) not in (int, float):
                raise Unsupported(f"{keyword} {bound!r}")
            bounds.append((op, bound))
        if kind == "integer" and not bounds:
            return None
        return (kind == "number", tuple(bounds))
    if kind == "object":
        return _spec_object(schema)
    if kind == "array":
        return _spec_array(schema)
    return None  # boolean, null: no constraints


def _spec_object(schema: dict[str, Any]) -> tuple | None:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise Unsupported("properties or required of an unexpected shape")
    groups = tuple(tuple(branch["required"]) for branch in schema["anyOf"]) if "anyOf" in schema else None
    closed = extra is False
    required = list(dict.fromkeys(required))
    present_required = [key for key in required if key in properties]
    missing = tuple(key for key in required if key not in properties)
    if closed and missing:  # _object writes "return False" and stops there
        return (groups, closed, True, (), (), 0, -1, -1, True, True, None)
    props = tuple((key, _spec(sub), key in required) for key, sub in properties.items())
    high, low = _count(schema, "maxProperties"), _count(schema, "minProperties")
    names: Any = True
    if "propertyNames" in schema and schema["propertyNames"] is not True:
        names = _spec(schema["propertyNames"])
    rest: Any = True
    declared = None
    if not isinstance(extra, bool):
        rest = _spec(extra)
        declared = frozenset(properties)
    if (groups is None and not closed and not missing and not props and high is None and low is None
            and names is True and rest is True):
        return None
    return (groups, closed, False, missing, props, len(present_required), -1 if high is None else high,
            -1 if low is None else low, names, rest, declared)


def _spec_array(schema: dict[str, Any]) -> tuple | None:
    low, high = _count(schema, "minItems"), _count(schema, "maxItems")
    items = schema.get("items", True)
    if isinstance(items, list):
        raise Unsupported("tuple-form items")
    unique = False
    if schema.get("uniqueItems") is True:
        if not (isinstance(items, dict) and items.get("type") == "string"):
            raise Unsupported("uniqueItems over anything but strings")
        unique = True
    node = _spec(items) if items is not True else None
    if low is None and high is None and items is True and not unique:
        return None
    return (-1 if low is None else low, -1 if high is None else high, node, unique)
