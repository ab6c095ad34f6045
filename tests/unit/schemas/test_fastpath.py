"""The fast path's memory of validated contexts: a hit only for exactly the value that was validated."""

from __future__ import annotations

import copy
import enum
import uuid
from typing import Any

from schemas import SchemaRegistry
from schemas import fastpath
from schemas.fastpath import SharedPartCache, split_envelope

from .conftest import make_event


def _page() -> dict[str, Any]:
    return make_event("page_viewed", {"url": "https://acme.example/pricing", "path": "/pricing"})


def test_a_repeated_context_is_validated_once(registry: SchemaRegistry) -> None:
    fresh = SchemaRegistry.load()
    for _ in range(5):
        assert fresh.validate(_page()) == []
    assert (fresh._shared.misses, fresh._shared.hits) == (1, 4)


class Variant(enum.Enum):
    A = "treatment"


def test_values_that_look_the_same_as_valid_ones_are_still_checked(registry: SchemaRegistry) -> None:
    fresh = SchemaRegistry.load()
    assert fresh.validate(_page()) == []  # remembered
    swaps = {
        "bool for string": ("locale", True),
        "uuid object for string": ("user_agent", uuid.UUID("0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41")),
        "enum for string": ("experiments", {"onboarding_v2": Variant.A}),
        "nan": ("user_agent", float("nan")),
    }
    for label, (key, value) in swaps.items():
        event = _page()
        event["context"][key] = value
        assert fresh.validate(event) != [], label
        assert fresh.validate(event) == registry.validate(event), label


def test_text_equal_values_of_other_types_are_not_hits() -> None:
    checked: list[Any] = []

    def validator(value: Any) -> None:
        checked.append(value)
        if not all(isinstance(v, str) for v in value.values()):
            raise ValueError("not a string")

    cache = SharedPartCache({"context": validator})
    cache.check({"context": {"variant": "0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41"}})
    try:
        cache.check({"context": {"variant": uuid.UUID("0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41")}})
    except ValueError:
        pass
    else:
        raise AssertionError("a UUID object passed as the string it prints as")
    assert len(checked) == 2


def test_changing_a_validated_context_afterwards_does_not_make_it_valid(registry: SchemaRegistry) -> None:
    fresh = SchemaRegistry.load()
    event = _page()
    assert fresh.validate(event) == []
    event["context"]["locale"] = "not a locale!"
    assert [i.path for i in fresh.validate(event)] == ["context.locale"]


def test_the_cache_is_bounded() -> None:
    cache = SharedPartCache({"context": lambda value: value}, max_entries=3)
    for i in range(10):
        cache.check({"context": {"n": i}})
    assert len(cache._valid) == 3


def test_the_split_keeps_the_envelope_closed(registry: SchemaRegistry) -> None:
    rest, parts = split_envelope(registry.schema("envelope"))
    assert set(parts) == {"context"}
    assert rest["properties"]["context"] is True and rest["additionalProperties"] is False
    event = _page()
    event["contxt"] = copy.deepcopy(event["context"])
    assert [i.path for i in registry.validate(event)] == ["contxt"]


def test_envelopes_with_constraints_from_outside_a_property_are_not_split() -> None:
    schema = {"type": "object", "properties": {"context": {"type": "object"}},
              "dependencies": {"context": ["user_id"]}}
    assert split_envelope(schema) is None
    assert split_envelope({"type": "object", "properties": {"context": {"$ref": "#/definitions/c"}}}) is None


def test_plain_events_reuse_the_last_valid_context_without_writing_it_out() -> None:
    fresh = SchemaRegistry.load()
    for _ in range(5):
        assert fresh.validate_json(_page()) == []
    assert (fresh._shared.misses, fresh._shared.hits) == (1, 4)
    assert fresh._shared._last == _page()["context"] and fresh._shared._last is not _page()["context"]


def test_the_last_context_is_a_copy_so_later_changes_to_the_event_are_seen(registry: SchemaRegistry) -> None:
    fresh = SchemaRegistry.load()
    event = _page()
    assert fresh.validate_json(event) == []
    event["context"]["locale"] = "not a locale!"
    assert [i.path for i in fresh.validate_json(event)] == ["context.locale"]
    event["context"]["locale"] = True
    assert fresh.validate_json(event) == registry.validate(event) != []


def test_only_all_text_values_are_compared_with_equality() -> None:
    checked: list[Any] = []

    def validator(value: Any) -> bool:
        checked.append(value)
        return all(type(v) is int and not isinstance(v, bool) for v in value.values())

    cache = SharedPartCache({"context": validator})
    assert cache.check({"context": {"n": 1}}, plain=True)
    assert cache._last is fastpath._NOTHING  # 1 == 1.0 == True: equality would not be exact
    assert cache.check({"context": {"n": True}}, plain=True) is False  # a different text: validated, refused
    assert cache.check({"context": {"n": 1.0}}, plain=True) is False
    assert len(checked) == 3
    assert cache.check({"context": {"n": 1}}, plain=True) and len(checked) == 3  # remembered by its text


def test_only_text_sees_every_leaf() -> None:
    assert fastpath.only_text({"a": "x", "b": [None, "y"], "c": {"d": "z"}})
    for value in ({"a": 1}, {"a": ["x", 2.0]}, {"a": {"b": False}}, [True], 0):
        assert not fastpath.only_text(value), value
