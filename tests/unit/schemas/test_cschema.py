"""The C evaluator of the generated checks (schemas/_cschema.c) answers exactly as the generated Python does.

Both are built from the same schema: ``compile_python_check`` writes Python source, ``check_spec`` describes the same
decisions for ``schemas._cschema.Checker``. The catalogue's own checks are compared on its valid examples and on
thousands of mutations of them; random schemas of the whole supported subset on random values.
"""
from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest

import schemas.registry as registry_module
from schemas import SchemaRegistry
from schemas.compiler import Unsupported, check_spec, compile_python_check

from .mutate import mutate
from .test_examples import VALID

_cschema = pytest.importorskip("schemas._cschema")


def _registry_schemas() -> list[tuple[str, Any]]:
    """Every schema the registry compiles (the events merged with the envelope, the shared parts), as it loads."""
    seen: list[tuple[str, Any]] = []
    original = registry_module.compile_check

    def recording(schema: Any, name: str = "check") -> Any:
        seen.append((name, schema))
        return original(schema, name)

    registry_module.compile_check = recording
    try:
        SchemaRegistry.load()
    finally:
        registry_module.compile_check = original
    return seen


CATALOGUE = _registry_schemas()
ODD = [None, True, False, 0, -1, 1, 2 ** 70, 1.5, -0.0, math.nan, math.inf, "", "x" * 3000, "é", "\u2028",
       "2026-12-03T12:00:00Z", "not-a-date", "https://acme.example/a", "a@b.co", [], [1, "a"], ["a", "a"], {}, {"a": 1},
       (1,), "a\nb"]


class Text(str):
    pass


def _both(schema: Any) -> tuple[Any, Any]:
    return _cschema.Checker(check_spec(schema)), compile_python_check(schema)


def test_the_catalogue_is_evaluated_in_c():
    registry = SchemaRegistry.load()
    assert len(CATALOGUE) == len(registry.events) + 1  # every event, and the shared context part
    assert all(type(registry._checks[name]).__name__ == "Checker" for name in registry.events)


@pytest.mark.parametrize("name", sorted(VALID))
def test_catalogue_checks_agree_on_examples_and_their_mutations(name):
    rng = random.Random(name)
    checks = [_both(schema) for _, schema in CATALOGUE]
    event = orjson.loads(orjson.dumps(VALID[name]))
    values = [event, event.get("properties"), event.get("context")]
    for _ in range(400):
        mutations = [(rng.choice(["replace", "delete", "add"]), rng.randrange(1000), rng.choice(ODD),
                      rng.choice(["x", "name", "ip", "analytics", "url", "event"])) for _ in range(rng.randint(1, 3))]
        values.append(mutate(event, mutations))
    values.append({**event, "event_id": Text(event["event_id"])})  # a str subclass: never "surely valid"
    answers = set()
    for c_check, py_check in checks:
        for value in values:
            answer = py_check(value)
            assert c_check(value) is answer, (value,)
            answers.add(answer)
    assert answers == {True, False}  # the values reach both answers, so agreeing says something


# --- random schemas of the supported subset --------------------------------------------------------------------
_PATTERNS = ["^[a-z]+$", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", "b", "^x"]
_FORMATS = ["date-time", "date", "uuid", "email", "uri", "ipv4", "ipv6", "ip"]
_KEYS = ["a", "b", "c"]


def _schema(rng: random.Random, depth: int) -> Any:
    if rng.random() < 0.08:
        return rng.choice([True, False])
    schema: dict[str, Any] = {}
    kinds = ["object", "array", "string", "integer", "number", "boolean", "null"]
    roll = rng.random()
    if roll < 0.5:
        schema["type"] = rng.choice(kinds)
    elif roll < 0.65:
        schema["type"] = rng.sample(kinds, rng.randint(1, 3))
    if rng.random() < 0.15:
        schema["enum"] = rng.sample(["a", "b", "ab", "A"], rng.randint(1, 3))
    for keyword, value in (("minLength", 1), ("maxLength", 3), ("minimum", 0), ("maximum", 10),
                           ("exclusiveMinimum", -1.5), ("exclusiveMaximum", 2 ** 64), ("minProperties", 1),
                           ("maxProperties", 2), ("minItems", 1), ("maxItems", 3)):
        if rng.random() < 0.12:
            schema[keyword] = value
    if rng.random() < 0.15:
        schema["pattern"] = rng.choice(_PATTERNS)
    if rng.random() < 0.12:
        schema["format"] = rng.choice(_FORMATS)
    if depth < 3 and rng.random() < 0.4:
        schema["properties"] = {k: _schema(rng, depth + 1) for k in rng.sample(_KEYS, rng.randint(0, 3))}
    if rng.random() < 0.25:
        schema["required"] = rng.sample(_KEYS + ["d"], rng.randint(0, 2))
    if rng.random() < 0.25:
        schema["additionalProperties"] = False if rng.random() < 0.6 or depth >= 3 else _schema(rng, depth + 1)
    if rng.random() < 0.1:
        schema["anyOf"] = [{"required": rng.sample(_KEYS, rng.randint(0, 2))} for _ in range(rng.randint(0, 2))]
    if depth < 3 and rng.random() < 0.1:
        schema["propertyNames"] = {"maxLength": 1}
    if depth < 3 and rng.random() < 0.25:
        schema["items"] = _schema(rng, depth + 1)
        if rng.random() < 0.3:
            schema["items"] = {"type": "string"}
            schema["uniqueItems"] = True
    if depth < 3 and rng.random() < 0.1:
        schema["allOf"] = [_schema(rng, depth + 1) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.05:
        schema["description"] = "annotation only"
    return schema


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        return {rng.choice(_KEYS + ["d", "ee"]): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 3 and roll < 0.4:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return rng.choice(ODD + ["a", "b", "ab", "abcd", 5, 10, 11, -1.5, 2 ** 64, Text("a")])


def test_random_schemas_agree_on_random_values():
    rng = random.Random(20261204)
    compared = refused = 0
    for _ in range(1500):
        schema = _schema(rng, 0)
        try:
            c_check, py_check = _both(schema)
        except Unsupported:
            refused += 1
            continue
        for _ in range(25):
            value = _value(rng, 0)
            assert c_check(value) is py_check(value), (schema, value)
            compared += 1
    assert compared > 20_000 and refused < 500


def test_a_failing_pattern_or_format_function_is_a_false_answer_not_an_error():
    check = _cschema.Checker(check_spec({"type": "string", "format": "date-time"}))
    assert check("2026-12-03T12:00:00Z") is True and check("nope") is False
    broken = _cschema.Checker(((), ((2, (None, -1, -1, None, False, lambda v: 1 / 0)),), False))
    assert broken("anything") is False
    with pytest.raises(TypeError):
        _cschema.Checker("not a description")
    with pytest.raises(TypeError):
        check()
