"""SchemaRegistry: loading, the catalogue's shape, look-ups and the validate() contract."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from schemas import SchemaLoadError, SchemaRegistry, ValidationIssue
from schemas.explain import MAX_ISSUES
from schemas.registry import (
    DEFAULT_DIRECTORY,
    _Compiled,
    _fast_validator,
    _issues,
    build_explainer,
    compile_fast,
    schema_files,
)

from .conftest import make_event

REQUIRED_EVENTS = {
    "community_join", "subscription_started", "subscription_cancelled", "payment_failed", "automation_run",
    "moderation_action", "message_sent", "page_viewed", "screen_viewed", "identify",
}
CATALOGUE = schema_files(DEFAULT_DIRECTORY)


def test_catalogue_has_the_required_events(registry: SchemaRegistry) -> None:
    assert REQUIRED_EVENTS <= set(registry.events)
    assert registry.events == sorted(registry.events)
    assert "envelope" not in registry.events


@pytest.mark.parametrize("path", CATALOGUE, ids=[p.name for p in CATALOGUE])
def test_every_catalogue_schema_compiles_and_is_documented(path: Path) -> None:
    schema = json.loads(path.read_text())
    validate = compile_fast(schema)
    assert callable(validate)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert isinstance(schema["x-version"], int) and schema["x-version"] >= 1
    assert schema["title"].strip() and schema["description"].strip()


def test_join_source_values(registry: SchemaRegistry) -> None:
    enum = registry.schema("community_join")["properties"]["join_source"]["enum"]
    assert enum == ["invite_link", "search", "recommendation", "direct", "import", "api"]


def test_envelope_is_closed_but_experiments_are_open(registry: SchemaRegistry) -> None:
    envelope = registry.schema("envelope")
    assert envelope["additionalProperties"] is False
    assert envelope["properties"]["context"]["additionalProperties"] is False
    event = make_event("screen_viewed", {"screen_name": "Home"})
    event["context"]["experiments"] = {f"exp_{i}": "b" for i in range(20)}
    assert registry.validate(event) == []


def test_version_schema_and_copies(registry: SchemaRegistry) -> None:
    assert registry.version("community_join") == 1
    assert registry.version("envelope") == 1
    schema = registry.schema("identify")
    schema["properties"].clear()
    assert registry.schema("identify")["properties"], "schema() must hand out a copy"
    assert "community_join" in registry and "nope" not in registry
    assert ["community_join"] not in registry and None not in registry and {"a": 1} not in registry


@pytest.mark.parametrize("method", ["schema", "version", "pii_fields"])
def test_unknown_names_raise_key_error(registry: SchemaRegistry, method: str) -> None:
    with pytest.raises(KeyError, match="no schema for event 'nope'"):
        getattr(registry, method)("nope")


def test_pii_fields_include_envelope_and_prefixed_payload_paths(registry: SchemaRegistry) -> None:
    assert registry.pii_fields("identify") == {
        "context.ip": "ip",
        "properties.email": "hash",
        "properties.phone": "hash",
        "properties.username": "hash",
        "properties.name": "drop",
        "properties.first_name": "drop",
        "properties.last_name": "drop",
        "properties.birth_date": "drop",
        "properties.address": "drop",
        "properties.postcode": "drop",
        "properties.avatar_url": "drop",
    }
    assert registry.pii_fields("page_viewed") == {"context.ip": "ip"}
    assert registry.pii_fields("subscription_started") == {"context.ip": "ip", "properties.billing_email": "hash"}
    assert registry.pii_fields("envelope") == {"context.ip": "ip"}
    registry.pii_fields("identify").clear()
    assert len(registry.pii_fields("identify")) == 11, "pii_fields() must hand out a copy"


def test_pii_fields_cover_nested_arrays_and_maps(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_DIRECTORY / "envelope.schema.json", tmp_path)
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#", "title": "t", "description": "d", "x-version": 3,
        "type": "object", "additionalProperties": False,
        "properties": {
            "billing": {"type": "object", "additionalProperties": False,
                        "properties": {"email": {"type": "string", "x-pii": "hash"}}},
            "attendees": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                     "properties": {"phone": {"type": "string", "x-pii": "hash"}}}},
            "notes_by_author": {"type": "object", "additionalProperties": {"type": "string", "x-pii": "drop"}},
        },
    }
    (tmp_path / "webinar_registered.schema.json").write_text(json.dumps(schema))
    registry = SchemaRegistry.load(str(tmp_path))
    assert registry.events == ["webinar_registered"]
    assert registry.version("webinar_registered") == 3
    assert registry.pii_fields("webinar_registered") == {
        "context.ip": "ip",
        "properties.billing.email": "hash",
        "properties.attendees[].phone": "hash",
        "properties.notes_by_author.*": "drop",
    }


def test_load_reports_every_bad_file_at_once(tmp_path: Path) -> None:
    (tmp_path / "broken_json.schema.json").write_text('{"type": "object",\n  "properties": }')
    (tmp_path / "bad_type.schema.json").write_text(json.dumps({"x-version": 1, "type": "strin"}))
    (tmp_path / "no_version.schema.json").write_text(json.dumps({"type": "object"}))
    (tmp_path / "list.schema.json").write_text("[]")
    (tmp_path / "README.md").write_text("not a schema, ignored")
    with pytest.raises(SchemaLoadError) as caught:
        SchemaRegistry.load(tmp_path)
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert any(p.startswith("broken_json.schema.json: not valid JSON") and "line 2" in p for p in problems)
    assert any(p.startswith("bad_type.schema.json: not a valid draft-07 schema") for p in problems)
    assert any(p.startswith("no_version.schema.json: 'x-version' must be a positive integer") for p in problems)
    assert any(p.startswith("list.schema.json: a schema must be a JSON object") for p in problems)
    assert any(p.startswith("envelope.schema.json: missing") for p in problems)
    assert "broken_json.schema.json" in str(caught.value)


def test_load_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError, match="not a directory"):
        SchemaRegistry.load(tmp_path / "absent")


def test_unknown_event_is_an_issue_not_an_exception(registry: SchemaRegistry) -> None:
    event = make_event("rocket_launched", {"anything": 1})
    assert registry.validate(event) == [
        ValidationIssue("event", "unknown event 'rocket_launched': no schema is registered for it")
    ]


@pytest.mark.parametrize("value", [None, [], "event", 42, 3.5, True, b"{}", {"event": None}, {1: 2}])
def test_non_events_yield_issues(registry: SchemaRegistry, value: object) -> None:
    issues = registry.validate(value)
    assert issues and all(isinstance(issue, ValidationIssue) for issue in issues)


def test_validate_does_not_modify_the_event(registry: SchemaRegistry) -> None:
    event = make_event("subscription_started", {"subscription_id": "s", "plan_id": "p", "billing_interval": "year",
                                                "amount_minor": "12", "currency": "USD"})
    snapshot = copy.deepcopy(event)
    registry.validate(event)
    assert event == snapshot


def test_issue_count_is_bounded(registry: SchemaRegistry) -> None:
    event = make_event("automation_run", {
        "automation_id": "a", "run_id": "9f1c2b7e-3a44-4e1b-8c2d-6f0e1a2b3c4d", "trigger": "api",
        "status": "failed", "duration_ms": 5, "actions": [f"bogus_{i}" for i in range(500)],
    })
    issues = registry.validate(event)
    assert len(issues) == MAX_ISSUES + 1
    assert issues[-1].message.startswith(f"more than {MAX_ISSUES} issues")
    # maxItems on the array itself, then its items in numeric (not string) order.
    assert [issue.path for issue in issues[:4]] == [
        "properties.actions", "properties.actions[0]", "properties.actions[1]", "properties.actions[2]",
    ]
    assert issues[0].message == "array has 500 items, more than the maximum of 50"


def test_disagreeing_validators_still_report_the_fast_error() -> None:
    # An explainer that accepts everything stands in for a jsonschema/fastjsonschema disagreement.
    compiled = _Compiled(schema={}, version=1, fast=compile_fast({"type": "string", "maxLength": 2}),
                         explainer=build_explainer({}), pii={})
    assert _issues(compiled, "abc", "properties") == [
        ValidationIssue("properties", "must be shorter than or equal to 2 characters")
    ]
    assert _issues(compiled, "ab", "properties") == []


def test_remote_references_are_refused(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_DIRECTORY / "envelope.schema.json", tmp_path)
    schema = {"x-version": 1, "type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    (tmp_path / "remote.schema.json").write_text(json.dumps(schema))
    with pytest.raises(SchemaLoadError, match=r"remote.schema.json: only local references .* 'https://example.com/a.json'"):
        SchemaRegistry.load(tmp_path)


def test_lifted_presence_alternatives_keep_their_meaning() -> None:
    fast = _fast_validator({"anyOf": [{"required": ["a", "b"]}, {"required": ["c"]}], "properties": {"c": {"type": "integer"}}})
    for accepted in ({"a": 1, "b": 2}, {"c": 3, "z": 0}, "not an object", [1]):
        fast(accepted)
    for refused in ({"a": 1}, {}, {"c": "three"}):
        with pytest.raises(Exception):
            fast(refused)


@pytest.mark.parametrize("method", ["validate", "validate_json"])
def test_an_invalid_event_leaves_no_reference_cycle_behind(registry: SchemaRegistry, method: str) -> None:
    """Explaining an invalid event must not keep the caller's frame alive until a garbage collection: in the flow
    that frame holds the whole batch being processed, and in the gateway the whole request."""
    import gc
    import weakref

    class Batch:  # stands for what the caller has in its locals
        pass

    def caller() -> tuple[list[ValidationIssue], weakref.ref]:
        batch = Batch()
        event = make_event("page_viewed", {"path": "/pricing"})  # no url: required
        return getattr(registry, method)(event), weakref.ref(batch)

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        issues, batch = caller()
        assert issues  # the invalid path was taken
        assert batch() is None, "the caller's locals outlived the call: a reference cycle holds its frame"
    finally:
        if was_enabled:
            gc.enable()
