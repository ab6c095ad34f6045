"""Backward-compatibility checks: additive changes pass, each kind of breaking change is caught."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from schemas import Incompatibility, check_paths, check_schema, version_warning
from schemas.registry import DEFAULT_DIRECTORY, schema_files

BASE: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order placed",
    "description": "An order was placed.",
    "x-version": 4,
    "type": "object",
    "additionalProperties": False,
    "required": ["order_id", "amount_minor", "status"],
    "properties": {
        "order_id": {"description": "Order id.", "type": "string", "maxLength": 64},
        "amount_minor": {"description": "Total.", "type": "integer", "minimum": 0, "maximum": 1000000},
        "ratio": {"description": "Share.", "type": "number"},
        "status": {"description": "Status.", "type": "string", "enum": ["new", "paid"]},
        "note": {"description": "Note.", "type": ["string", "null"], "minLength": 1},
        "channel": {"description": "Channel.", "type": "string"},
        "shipping": {
            "description": "Shipping.", "type": "object", "additionalProperties": False,
            "properties": {
                "method": {"description": "Method.", "type": "string", "enum": ["post", "courier"]},
                "days": {"description": "Days.", "type": "integer", "minimum": 1},
            },
        },
        "items": {
            "description": "Lines.", "type": "array", "maxItems": 10,
            "items": {
                "description": "Line.", "type": "object", "additionalProperties": False, "required": ["sku"],
                "properties": {"sku": {"description": "SKU.", "type": "string", "pattern": "^[A-Z0-9-]+$"}},
            },
        },
        "labels": {"description": "Labels.", "type": "object", "additionalProperties": {"type": "string"}},
        "extra": {"description": "Open object.", "type": "object"},
    },
}


def _changed(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


def _props(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["properties"]


ADDITIVE: dict[str, Callable[[dict[str, Any]], None]] = {
    "new_optional_property": lambda s: _props(s).update(coupon={"description": "Coupon.", "type": "string"}),
    "enum_widened": lambda s: _props(s)["status"]["enum"].append("refunded"),
    "type_widened_to_nullable": lambda s: _props(s)["channel"].update(type=["string", "null"]),
    "integer_widened_to_number": lambda s: _props(s)["amount_minor"].update(type="number"),
    "max_length_raised": lambda s: _props(s)["order_id"].update(maxLength=128),
    "minimum_lowered_maximum_raised": lambda s: _props(s)["amount_minor"].update(minimum=-10, maximum=10**9),
    "min_length_removed": lambda s: _props(s)["note"].pop("minLength"),
    "required_relaxed": lambda s: s["required"].remove("status"),
    "nested_enum_widened": lambda s: _props(s)["shipping"]["properties"]["method"]["enum"].append("pickup"),
    "max_items_raised": lambda s: _props(s)["items"].update(maxItems=100),
    "additional_properties_opened": lambda s: s.update(additionalProperties=True),
    "descriptions_and_version": lambda s: (s.update({"x-version": 5, "description": "Reworded."}),
                                           _props(s)["status"].update(description="Order status.")),
    "pattern_removed": lambda s: _props(s)["items"]["items"]["properties"]["sku"].pop("pattern"),
    "new_field_in_open_object": lambda s: _props(s)["extra"].update(properties={"x": {"description": "X.", "type": "integer"}}),
}


@pytest.mark.parametrize("name", sorted(ADDITIVE))
def test_additive_change_is_accepted(name: str) -> None:
    assert check_schema(BASE, _changed(ADDITIVE[name])) == []


def test_identical_schema_is_accepted() -> None:
    assert check_schema(BASE, copy.deepcopy(BASE)) == []


def _rename(schema: dict[str, Any]) -> None:
    _props(schema)["id"] = _props(schema).pop("order_id")
    schema["required"] = ["id", "amount_minor", "status"]


# (edit, expected (path, kind) pairs — exactly these)
BREAKING: dict[str, tuple[Callable[[dict[str, Any]], None], set[tuple[str, str]]]] = {
    "required_removed": (lambda s: (_props(s).pop("status"), s["required"].remove("status")), {("status", "required_removed")}),
    "required_added": (lambda s: s["required"].append("channel"), {("channel", "required_added")}),
    "type_narrowed_nullable": (lambda s: _props(s)["note"].update(type="string"), {("note", "type_narrowed")}),
    "type_narrowed_number_to_integer": (lambda s: _props(s)["ratio"].update(type="integer"), {("ratio", "type_narrowed")}),
    "enum_narrowed": (lambda s: _props(s)["status"]["enum"].remove("paid"), {("status", "enum_narrowed")}),
    "enum_added": (lambda s: _props(s)["channel"].update(enum=["web", "app"]), {("channel", "enum_narrowed")}),
    "additional_properties_closed": (lambda s: _props(s)["extra"].update(additionalProperties=False), {("extra", "additional_properties_closed")}),
    "field_removed_closed": (lambda s: _props(s).pop("channel"), {("channel", "field_removed_closed")}),
    "max_length_lowered": (lambda s: _props(s)["order_id"].update(maxLength=32), {("order_id", "constraint_tightened")}),
    "maximum_lowered": (lambda s: _props(s)["amount_minor"].update(maximum=1000), {("amount_minor", "constraint_tightened")}),
    "min_length_raised": (lambda s: _props(s)["note"].update(minLength=3), {("note", "constraint_tightened")}),
    "pattern_added": (lambda s: _props(s)["channel"].update(pattern="^[a-z]+$"), {("channel", "constraint_tightened")}),
    "format_added": (lambda s: _props(s)["channel"].update(format="uri"), {("channel", "constraint_tightened")}),
    "nested_minimum_raised": (lambda s: _props(s)["shipping"]["properties"]["days"].update(minimum=2), {("shipping.days", "constraint_tightened")}),
    "nested_enum_narrowed": (lambda s: _props(s)["shipping"]["properties"]["method"]["enum"].pop(), {("shipping.method", "enum_narrowed")}),
    "array_item_pattern_changed": (lambda s: _props(s)["items"]["items"]["properties"]["sku"].update(pattern="^[A-Z]+$"), {("items[].sku", "constraint_tightened")}),
    "array_item_required_added": (
        lambda s: (_props(s)["items"]["items"]["properties"].update(qty={"description": "Q.", "type": "integer"}),
                   _props(s)["items"]["items"]["required"].append("qty")),
        {("items[].qty", "required_added")},
    ),
    "max_items_lowered": (lambda s: _props(s)["items"].update(maxItems=5), {("items", "constraint_tightened")}),
    "map_values_narrowed": (lambda s: _props(s)["labels"]["additionalProperties"].update(maxLength=8), {("labels.*", "constraint_tightened")}),
    "rename": (_rename, {("order_id", "required_removed"), ("id", "required_added")}),
}


@pytest.mark.parametrize("name", sorted(BREAKING))
def test_breaking_change_is_reported(name: str) -> None:
    edit, expected = BREAKING[name]
    found = check_schema(BASE, _changed(edit))
    assert {(i.path, i.kind) for i in found} == expected, found
    assert all(isinstance(i, Incompatibility) and i.reason for i in found)


def test_rename_reason_says_removed_or_renamed() -> None:
    found = check_schema(BASE, _changed(_rename))
    (removed,) = [i for i in found if i.kind == "required_removed"]
    assert "removed or renamed" in removed.reason and "order_id" in removed.reason


def test_several_breaks_are_all_reported() -> None:
    def edit(s: dict[str, Any]) -> None:
        _props(s)["status"]["enum"] = ["new"]
        _props(s)["order_id"]["maxLength"] = 8
        s["required"].append("ratio")

    found = check_schema(BASE, _changed(edit))
    assert [(i.path, i.kind) for i in found] == [
        ("order_id", "constraint_tightened"), ("ratio", "required_added"), ("status", "enum_narrowed"),
    ]


def test_version_warning() -> None:
    assert version_warning(BASE, copy.deepcopy(BASE)) is None
    assert version_warning(BASE, _changed(ADDITIVE["new_optional_property"])) == "schema changed but x-version is still 4"
    assert version_warning(BASE, _changed(lambda s: s.update({"x-version": 3}))) == "x-version went down from 4 to 3"
    bumped = _changed(lambda s: (ADDITIVE["enum_widened"](s), s.update({"x-version": 5})))
    assert version_warning(BASE, bumped) is None


def _catalogue_copy(target: Path) -> Path:
    target.mkdir()
    for path in schema_files(DEFAULT_DIRECTORY):
        shutil.copy(path, target)
    return target


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    schema = json.loads(path.read_text())
    edit(schema)
    path.write_text(json.dumps(schema))


def test_check_paths_on_directories(tmp_path: Path) -> None:
    old = _catalogue_copy(tmp_path / "old")
    new = _catalogue_copy(tmp_path / "new")
    assert check_paths(old, new) == {}

    (new / "screen_viewed.schema.json").unlink()
    (new / "search_performed.schema.json").write_text(json.dumps(BASE))  # new file: fine
    _edit_json(new / "community_join.schema.json", lambda s: s["properties"]["join_source"]["enum"].remove("api"))
    _edit_json(new / "page_viewed.schema.json", lambda s: s["properties"]["title"].update(maxLength=600))  # loosened
    result = check_paths(str(old), str(new))
    assert set(result) == {"community_join", "screen_viewed"}
    assert [(i.path, i.kind) for i in result["community_join"]] == [("join_source", "enum_narrowed")]
    assert "'api'" in result["community_join"][0].reason
    assert [i.kind for i in result["screen_viewed"]] == ["schema_removed"]


def test_check_paths_on_files(tmp_path: Path) -> None:
    old, new = tmp_path / "order_placed.schema.json", tmp_path / "order_placed.next.json"
    old.write_text(json.dumps(BASE))
    new.write_text(json.dumps(_changed(lambda s: s["required"].append("note"))))
    assert check_paths(old, new) == {"order_placed": [Incompatibility("note", "required_added", "'note' is now required; older events may lack it")]}
    new.write_text(json.dumps(_changed(ADDITIVE["new_optional_property"])))
    assert check_paths(old, new) == {}


def test_check_paths_refuses_mixed_and_broken_inputs(tmp_path: Path) -> None:
    schema_file = tmp_path / "a.schema.json"
    schema_file.write_text(json.dumps(BASE))
    with pytest.raises(ValueError, match="two files or two directories"):
        check_paths(schema_file, tmp_path)
    broken = tmp_path / "b.schema.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="b.schema.json: not valid JSON"):
        check_paths(schema_file, broken)
