"""The catalogue's house rules: the shipped catalogue is clean, and each planted problem is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas import LintProblem, lint_directory
from schemas.lint import looks_personal
from schemas.registry import DEFAULT_DIRECTORY


def test_shipped_catalogue_is_clean() -> None:
    assert lint_directory() == []
    assert lint_directory(DEFAULT_DIRECTORY) == []


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    # The smallest clean catalogue (just the envelope) keeps each planted problem the only one.
    shutil.copy(DEFAULT_DIRECTORY / "envelope.schema.json", tmp_path)
    return tmp_path


def _schema(**properties: Any) -> dict[str, Any]:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Webinar registered",
        "description": "Someone registered for a webinar.",
        "x-version": 1,
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def _plant(directory: Path, schema: Any, name: str = "webinar_registered") -> list[LintProblem]:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    (directory / f"{name}.schema.json").write_text(text)
    return lint_directory(directory)


def _where(problems: list[LintProblem]) -> list[tuple[str, str]]:
    return [(p.schema, p.path) for p in problems]


def test_clean_planted_schema_passes(catalogue: Path) -> None:
    assert _plant(catalogue, _schema(webinar_id={"description": "Id.", "type": "string"})) == []


def test_missing_property_description(catalogue: Path) -> None:
    schema = _schema(host={"description": "Host.", "type": "object", "additionalProperties": False,
                           "properties": {"company_id": {"type": "string"}}})
    problems = _plant(catalogue, schema)
    assert _where(problems) == [("webinar_registered", "host.company_id")]
    assert problems[0].message == "property has no description"


def test_missing_top_level_fields(catalogue: Path) -> None:
    schema = _schema(webinar_id={"description": "Id.", "type": "string"})
    del schema["title"], schema["x-version"]
    schema["description"] = "  "
    messages = [p.message for p in _plant(catalogue, schema)]
    assert any("'title' is missing" in m for m in messages)
    assert any("'description' is missing" in m for m in messages)
    assert any("'x-version' must be a positive integer" in m for m in messages)


@pytest.mark.parametrize("field", ["email", "attendeeEmail", "e-mail", "phone_number", "ip_address", "first_name",
                                   "name", "postcode", "date_of_birth", "street"])
def test_unmarked_personal_field(catalogue: Path, field: str) -> None:
    problems = _plant(catalogue, _schema(**{field: {"description": "Personal.", "type": "string"}}))
    assert _where(problems) == [("webinar_registered", field)]
    assert "looks like personal data but has no x-pii mark" in problems[0].message


def test_marked_personal_field_is_fine(catalogue: Path) -> None:
    schema = _schema(email={"description": "Email.", "type": "string", "format": "email", "x-pii": "hash"},
                     email_confirmed={"description": "Flag.", "type": "boolean"})
    assert _plant(catalogue, schema) == []


def test_bad_pii_marks(catalogue: Path) -> None:
    schema = _schema(
        email={"description": "Email.", "type": "string", "x-pii": "encrypt"},
        host_ip={"description": "IP.", "type": "integer", "x-pii": "ip"},
        attendee={"description": "Person.", "type": "object", "additionalProperties": False, "x-pii": "hash",
                  "properties": {}},
        answers={"description": "Free-text answers, dropped whole.", "type": "array", "x-pii": "drop",
                 "items": {"type": "string"}},
    )
    problems = {p.path: p.message for p in _plant(catalogue, schema)}
    assert set(problems) == {"email", "host_ip", "attendee"}
    assert problems["email"] == "x-pii must be one of ['drop', 'hash', 'ip'], found 'encrypt'"
    assert problems["host_ip"] == "x-pii 'ip' can only mark a string field"
    assert problems["attendee"].startswith("x-pii 'hash' can only mark a field with scalar types")


def test_schema_that_does_not_compile(catalogue: Path) -> None:
    problems = _plant(catalogue, _schema(webinar_id={"description": "Id.", "type": "strin"}))
    assert _where(problems) == [("webinar_registered", "")]
    assert "not a valid draft-07 schema" in problems[0].message


def test_bad_regex_is_reported(catalogue: Path) -> None:
    problems = _plant(catalogue, _schema(webinar_id={"description": "Id.", "type": "string", "pattern": "(["}))
    assert _where(problems) == [("webinar_registered", "")]


def test_invalid_json_is_reported(catalogue: Path) -> None:
    problems = _plant(catalogue, '{"title": "x",')
    assert _where(problems) == [("webinar_registered", "")]
    assert problems[0].message.startswith("not valid JSON")


def test_unknown_format_and_open_object(catalogue: Path) -> None:
    schema = _schema(starts_at={"description": "Start.", "type": "string", "format": "date_time"},
                     answers={"description": "Form answers.", "type": "object"})
    problems = {p.path: p.message for p in _plant(catalogue, schema)}
    assert set(problems) == {"starts_at", "answers"}
    assert problems["starts_at"].startswith("format 'date_time' is not checked by Headwater")
    assert problems["answers"].startswith("object must declare additionalProperties")


def test_bad_file_name_and_missing_envelope(catalogue: Path) -> None:
    (catalogue / "envelope.schema.json").unlink()
    problems = _plant(catalogue, _schema(), name="Webinar-Registered")
    assert _where(problems) == [("Webinar-Registered", ""), ("envelope", "")]


def test_every_problem_in_every_file_is_reported(catalogue: Path) -> None:
    _plant(catalogue, _schema(email={"type": "string"}), name="first_bad")
    problems = _plant(catalogue, "[1, 2]", name="second_bad")
    assert _where(problems) == [("first_bad", "email"), ("first_bad", "email"), ("second_bad", "")]


@pytest.mark.parametrize(("name", "parent", "expected"), [
    ("email", "", True), ("billingEmail", "", True), ("eMail", "", True), ("IPAddress", "", True),
    ("client_ip", "", True), ("zip_code", "", True), ("birthDate", "", True), ("ssn", "", True),
    ("display_name", "", True), ("lastName", "", True), ("username", "", True), ("name", "", True),
    ("name", "author", True), ("name", "app", False), ("name", "line_items", False),
    ("plan_name", "", False), ("community_name", "", False), ("screen_name", "", False),
    ("ship_date", "", False), ("description", "", False), ("recipient_count", "", False), ("tipping", "", False),
])
def test_personal_name_rule(name: str, parent: str, expected: bool) -> None:
    assert looks_personal(name, parent) is expected
