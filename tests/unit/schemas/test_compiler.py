"""The generated checks of schemas.compiler: never more permissive than the validators, and used for ordinary events.

The differential tests mutate the catalogue's valid examples with JSON values chosen around every bound, length,
pattern and enum the catalogue declares, then compare the registry's fast path with fastjsonschema and jsonschema.
"""

from __future__ import annotations

import copy
import enum
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import SchemaRegistry
from schemas.compiler import Unsupported, _pattern_test, compile_check
from schemas.explain import build_explainer
from schemas.registry import DEFAULT_DIRECTORY, schema_files

from .mutate import fastjsonschema_accepts, mutate, paths
from .test_examples import VALID

REGISTRY = SchemaRegistry.load()
SCHEMAS = {path.name: json.loads(path.read_text()) for path in schema_files(DEFAULT_DIRECTORY)}
EXPLAINERS = {name: build_explainer(REGISTRY.schema(name)) for name in ["envelope", *REGISTRY.events]}
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _catalogue_values() -> list[Any]:
    """Values on both sides of every line the catalogue draws, plus every value the valid examples use."""
    found: set[str] = set()
    numbers: set[int] = {0, 1, -1}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("minLength", "maxLength") and isinstance(value, int):
                    found.update({"a" * value, "a" * (value + 1), "a" * max(value - 1, 0)})
                elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxItems",
                             "maxProperties") and isinstance(value, int):
                    numbers.update({value - 1, value, value + 1})
                elif key == "enum":
                    for item in value:
                        found.update({item, item.upper(), item + "\n", item + " "})
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    def leaves(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                leaves(value)
        elif isinstance(node, list):
            for value in node:
                leaves(value)
        elif isinstance(node, str):
            found.update({node, node + "\n", node[:-1], node.upper(), "\n" + node, node.replace("-", "_")})

    for schema in SCHEMAS.values():
        walk(schema)
    for event in VALID.values():
        leaves(event)
    found.update({"", "٣٣٣", "2026-02-29T12:00:00Z", "2028-02-29T12:00:00Z", "2026-12-03T12:00:60Z",
                  "2026-12-03 12:00:00Z", "a@b", "a@b.co", "::1", "256.1.1.1", "/", "http://x", "EUR", "EURO"})
    floats = [float(n) for n in sorted(numbers)][:20] + [0.5, -0.0, 1e300, 20.5]
    return sorted(found) + sorted(numbers) + floats + [True, False, None, [], {}, ["sms"], ["sms", "sms"]]


VALUES = _catalogue_values()
json_value = st.recursive(
    st.sampled_from(VALUES),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(["name", "x", "type", "analytics"]), children, max_size=3)),
    max_leaves=4,
)


def _has_float(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return type(value) is float


def _jsonschema_accepts(event: dict[str, Any]) -> bool:
    name = event.get("event")
    return (EXPLAINERS["envelope"].is_valid(event) and name in EXPLAINERS
            and EXPLAINERS[name].is_valid(event["properties"]))


def _generated_accepts(event: dict[str, Any]) -> bool:
    """The generated checks alone, the context checked every time (not answered from memory)."""
    try:
        context_check = REGISTRY._shared._validators[0][1]
        return bool(REGISTRY._checks[event["event"]](event) and ("context" not in event or context_check(event["context"])))
    except Exception:
        return False


mutation = st.tuples(st.sampled_from(["replace", "delete", "add"]), st.integers(min_value=0), json_value,
                     st.sampled_from(["x", "name", "version", "ip", "analytics", "amount_minor"]))


@SETTINGS
@given(st.sampled_from(sorted(VALID)), st.lists(mutation, min_size=1, max_size=3))
def test_generated_checks_agree_with_both_validators(name: str, mutations: list[tuple[str, int, Any, str]]) -> None:
    event = mutate(VALID[name], mutations)
    event = orjson.loads(orjson.dumps(event))  # exactly what the gateway and the flow hand over
    generated = _generated_accepts(event)
    fast, full = fastjsonschema_accepts(REGISTRY, event), _jsonschema_accepts(event)
    if generated:
        assert fast and full, "the generated check accepted an event a validator refuses"
    elif fast and full and not _has_float(event):
        raise AssertionError("an ordinary valid event missed the generated fast path")
    issues = REGISTRY.validate_json(event)
    assert issues == REGISTRY.validate(event)
    assert (issues == []) == fast


def _subschema(event: dict[str, Any], path: tuple[Any, ...]) -> Any:
    """The schema that applies at ``path`` of ``event`` (``None`` where the path leaves the schemas)."""
    schema: Any = REGISTRY.schema("envelope")
    if path[0] == "properties":
        schema, path = REGISTRY.schema(event["event"]), path[1:]
    for part in path:
        if not isinstance(schema, dict):
            return None
        if isinstance(part, int):
            schema = schema.get("items")
        else:
            schema = schema.get("properties", {}).get(part, schema.get("additionalProperties"))
    return schema if isinstance(schema, dict) else None


def _edge_values(schema: dict[str, Any], current: Any) -> list[Any]:
    """Values just inside and just outside each constraint of ``schema``, and of the wrong types."""
    values: list[Any] = [None, True, 0, 1.0, "", [], {}, [current], {"x": current}]
    for key in ("minLength", "maxLength"):
        if key in schema:
            values += ["a" * schema[key], "a" * (schema[key] + 1), "a" * max(schema[key] - 1, 0)]
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            bound = schema[key]
            values += [bound - 1, bound, bound + 1, float(bound), bound - 0.5, bound + 0.5]
    for item in schema.get("enum", []):
        values += [item, item.upper(), item + "\n"]
    if isinstance(current, str):
        values += [current + "\n", current + " ", current.upper(), current[:-1], "\n" + current, current * 3]
    if isinstance(current, int) and not isinstance(current, bool):
        values += [-current, current * 1000, float(current)]
    return values


@pytest.mark.parametrize("name", sorted(VALID))
def test_edges_of_every_field_agree_with_both_validators(name: str) -> None:
    base = orjson.loads(orjson.dumps(VALID[name]))
    checked = 0
    for path in paths(base):
        schema = _subschema(base, path) if path else None
        if schema is None:
            continue
        *parents, last = path
        for value in _edge_values(schema, _at(base, path)):
            event = copy.deepcopy(base)
            target = event
            for part in parents:
                target = target[part]
            target[last] = value
            event = orjson.loads(orjson.dumps(event))
            generated = _generated_accepts(event)
            fast, full = fastjsonschema_accepts(REGISTRY, event), _jsonschema_accepts(event)
            where = f"{'.'.join(map(str, path))} = {value!r}"
            assert not generated or (fast and full), f"generated check too permissive at {where}"
            assert generated or not (fast and full) or _has_float(event), f"valid event off the fast path at {where}"
            checked += 1
    assert checked > 50


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_valid_example_takes_the_generated_path(name: str) -> None:
    event = orjson.loads(orjson.dumps(VALID[name]))
    assert _generated_accepts(event)
    assert REGISTRY.validate_json(event) == [] == REGISTRY.validate(event)


def test_every_catalogue_schema_is_compiled() -> None:
    for name, schema in SCHEMAS.items():
        compile_check(schema, name.split(".")[0])  # raises Unsupported otherwise


class Colour(str, enum.Enum):
    RED = "red"


@pytest.mark.parametrize("value", [
    1.0,  # an integral float is an integer to both validators: left to fastjsonschema
    True,  # a bool is never an integer
    Colour.RED,  # a str subclass
    ("a",),  # a tuple is an array only to fastjsonschema
])
def test_unusual_values_are_never_accepted(value: Any) -> None:
    check = compile_check({"type": ["integer", "string", "array"], "maxLength": 5})
    assert check(value) is False


def test_untyped_constraints_are_not_skipped_for_subclasses() -> None:
    check = compile_check({"pattern": "^[a-z]+$"})
    assert check("abc") and check(12) and check(None)
    assert not check("ABC") and not check(Colour.RED)


def test_an_enum_without_a_type_refuses_other_types() -> None:
    check = compile_check({"enum": ["a", "b"]})
    assert check("a") and not check("c") and not check(1) and not check(None)


def test_untyped_bounds_apply_to_every_number() -> None:
    check = compile_check({"maximum": 5})
    assert check(5) and check(4.5) and check("text")
    assert not check(6) and not check(5.5) and not check(float("inf")) and not check(float("nan"))


def test_numbers_mirror_fastjsonschema_bounds() -> None:
    check = compile_check({"type": "number", "exclusiveMinimum": 0, "maximum": 100})
    assert [check(v) for v in (0, 0.0001, 100, 100.5, float("nan"), float("inf"))] == [False, True, True, False, False, False]


@pytest.mark.parametrize("pattern, text, expected", [
    ("^[A-Z]{3}$", "EUR", True),
    ("^[A-Z]{3}$", "EUR\n", False),  # "$" is the end of the string, as fastjsonschema reads it
    ("^a|b$", "bxxb", True),  # an alternation is not an anchored sequence
    ("^a|b$", "axx", True),
    ("^/", "/x", True),
    ("^/", "x/", False),
    ("^a\\$", "a$", True),
    ("b", "abc", True),  # unanchored: anywhere
])
def test_patterns_keep_fastjsonschema_semantics(pattern: str, text: str, expected: bool) -> None:
    assert (_pattern_test(pattern)(text) is not None) is expected
    assert compile_check({"type": "string", "pattern": pattern})(text) is expected


@pytest.mark.parametrize("schema", [
    {"type": "integer", "multipleOf": 2},
    {"oneOf": [{"type": "string"}]},
    {"type": "string", "format": "hostname"},
    {"enum": [1, 2]},
    {"type": "array", "items": [{"type": "string"}]},
    {"type": "array", "uniqueItems": True},
    {"type": "string", "anyOf": [{"maxLength": 3}]},
    {"type": "string", "maxLength": 2.5},
])
def test_anything_outside_the_subset_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        compile_check(schema)


def test_schemas_outside_the_subset_fall_back_to_fastjsonschema(tmp_path: Path) -> None:
    (tmp_path / "envelope.schema.json").write_text((DEFAULT_DIRECTORY / "envelope.schema.json").read_text())
    schema = {"x-version": 1, "type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "multipleOf": 5}}}
    (tmp_path / "tally.schema.json").write_text(json.dumps(schema))
    registry = SchemaRegistry.load(tmp_path)
    event = copy.deepcopy(VALID["page_viewed_anonymous_ipv6"])
    event.update(event="tally", properties={"n": 10})
    assert registry.validate(event) == [] == registry.validate_json(event)
    event["properties"]["n"] = 7
    assert [issue.path for issue in registry.validate_json(event)] == ["properties.n"]
