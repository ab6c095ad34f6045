"""validate() never raises, whatever it is given, and its answer agrees with the compiled validators."""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import SchemaRegistry, ValidationIssue

from .mutate import fastjsonschema_accepts, mutate
from .test_examples import VALID

REGISTRY = SchemaRegistry.load()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["", "0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41", "2026-12-03T12:00:00Z",
                                           "community_join", "search", "203.0.113.7", "::1", "a@b.co"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)),
    max_leaves=25,
)
# What a Python caller might hand over by mistake, beyond what JSON can express.
odd_values = st.one_of(json_values, st.binary(max_size=10), st.sets(st.integers(), max_size=3),
                       st.dictionaries(st.integers(), scalars, max_size=3), st.tuples(scalars, scalars))


def _check(event: Any) -> list[ValidationIssue]:
    issues = REGISTRY.validate(event)
    assert isinstance(issues, list)
    assert all(isinstance(issue, ValidationIssue) and isinstance(issue.path, str) and issue.message for issue in issues)
    # An event is either accepted, or rejected with at least one reason: never rejected silently.
    assert (issues == []) == fastjsonschema_accepts(REGISTRY, event)
    return issues


@SETTINGS
@given(odd_values)
def test_arbitrary_values(value: Any) -> None:
    _check(value)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["event", "event_id", "timestamp", "user_id", "anonymous_id", "properties",
                                         "context", "consent", "sent_at", "device_id", "extra"]), odd_values))
def test_arbitrary_envelopes(event: dict[str, Any]) -> None:
    _check(event)


mutation = st.tuples(st.sampled_from(["replace", "delete", "add"]), st.integers(min_value=0), odd_values, st.text(max_size=10))


@SETTINGS
@given(st.sampled_from(sorted(VALID)), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_events(name: str, mutations: list[tuple[str, int, Any, str]]) -> None:
    event = mutate(VALID[name], mutations)
    _check(event)


def test_pathological_inputs() -> None:
    deep: Any = "leaf"
    for _ in range(50_000):
        deep = [deep]
    cyclic: dict[str, Any] = {"event": "page_viewed"}
    cyclic["properties"] = cyclic
    base = copy.deepcopy(VALID["page_viewed_anonymous_ipv6"])
    automation = copy.deepcopy(VALID["automation_run"])
    cases = [
        dict(automation, properties=dict(automation["properties"], actions=[deep, deep])),
        dict({k: v for k, v in base.items() if k != "anonymous_id"}, properties=dict(base["properties"], extra=deep)),
        deep,
        dict(base, properties=dict(base["properties"], extra=deep)),
        dict(base, context={"experiments": {"exp": deep}}),
        cyclic,
        dict(base, properties=dict(base["properties"], load_time_ms=math.nan)),
        dict(base, properties=dict(base["properties"], load_time_ms=10**400)),
        dict(base, event="x" * 1_000_000),
        dict(base, **{"\ud800": 1}),
        dict(base, properties={(1, 2): "tuple key", None: 1}),
    ]
    for case in cases:
        _check(case)
    # Deep values still get specific answers, not a blanket "could not be validated".
    issues = REGISTRY.validate(cases[0])
    assert {issue.path for issue in issues} == {"properties.actions", "properties.actions[0]", "properties.actions[1]"}
    issues = REGISTRY.validate(cases[1])
    assert {issue.path for issue in issues} == {"", "properties.extra"}
