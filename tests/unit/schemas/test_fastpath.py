"""The fast path's memory of validated contexts: a hit only for exactly the value that was validated."""

from __future__ import annotations

import copy
import enum
import uuid
from typing import Any

from schemas import SchemaRegistry
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
