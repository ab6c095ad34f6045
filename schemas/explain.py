"""Turn a failed validation into every reason it failed, as short, specific, PII-safe messages.

The registry's fast path (fastjsonschema) stops at the first error and says little. This module is the slow
path, used only once an event is known to be invalid: a jsonschema Draft 7 validator collects *all* errors,
and each one becomes a :class:`ValidationIssue` whose path points at the offending field.

Messages are written here rather than taken from jsonschema because rejected events end up in the audit
store and on a Kafka topic: a message must not quote the value of a field marked ``x-pii``, must not paste
a whole object into a log line, and must stay short whatever the client sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator

import jsonschema
from jsonschema.exceptions import ValidationError

from schemas.formats import jsonschema_format_checker

#: An invalid event reports at most this many issues; a client that sends 10,000 bad array items
#: learns what is wrong from the first ones, and the rejection record stays bounded.
MAX_ISSUES = 100

_SHOWN_STRING_CHARS = 40
_SHOWN_LIST_CHARS = 200
# fastjsonschema reads "$" as "end of string" (\Z); Python's re would also accept a trailing newline.
# Both validators must agree, so the explaining side is told the same.
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_INDEX = re.compile(r"\[(\d+)\]")
_TOO_DEEP = "value is nested too deeply to check"


@dataclass(frozen=True, order=True)
class ValidationIssue:
    """One reason an event is invalid.

    :param path: dotted path of the offending field, e.g. ``properties.join_source`` or
        ``context.app.version``; list positions are written ``[3]``; ``""`` is the event itself.
    :param message: what is wrong, in words, e.g. ``'foo' is not one of ['invite_link', ...]``.
    """

    path: str
    message: str


@lru_cache(maxsize=1024)
def _end_anchored(pattern: str) -> re.Pattern[str]:
    return re.compile(_UNESCAPED_DOLLAR.sub(r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _end_anchored(pattern).search(instance):
        yield ValidationError(f"does not match pattern {pattern!r}")


def _required(validator: Any, required: list[str], instance: Any, schema: Any) -> Iterator[ValidationError]:
    # One issue per missing field, located at the field itself, so a client sees which key to add.
    if not validator.is_type(instance, "object"):
        return
    for name in required:
        if name not in instance:
            yield ValidationError(f"{name!r} is a required property", path=[name], instance=None)


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    declared = schema.get("properties", {})
    patterns = [_end_anchored(p) for p in schema.get("patternProperties", {})]
    extras = [
        key
        for key in instance
        if key not in declared and not (isinstance(key, str) and any(p.search(key) for p in patterns))
    ]
    if validator.is_type(allowed, "object"):
        for key in extras:
            yield from validator.descend(instance[key], allowed, path=key)
    elif allowed is False:
        # One issue per unexpected key (not jsonschema's single summary), so each carries its own path.
        for key in extras:
            yield ValidationError(
                "unexpected property: not declared in the schema", path=[key], instance=instance[key]
            )


def _guarded(check: Any) -> Any:
    # jsonschema writes repr(instance) into every message; for a value nested thousands of levels deep
    # that repr overflows the stack and would end the whole explanation. Contain it to the one keyword.
    def guarded(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        try:
            yield from check(validator, value, instance, schema)
        except RecursionError:
            yield ValidationError(_TOO_DEEP)

    return guarded


_KEYWORDS = {keyword: _guarded(check) for keyword, check in jsonschema.Draft7Validator.VALIDATORS.items()}
_KEYWORDS.update(pattern=_pattern, required=_required, additionalProperties=_additional_properties)
_Explainer = jsonschema.validators.extend(jsonschema.Draft7Validator, _KEYWORDS)
_FORMAT_CHECKER = jsonschema_format_checker()


def build_explainer(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for ``schema`` that applies Headwater's formats and pattern semantics.

    :param schema: a JSON Schema (assumed to be a valid draft-07 schema).
    """
    return _Explainer(schema, format_checker=_FORMAT_CHECKER)


def explain(explainer: Any, instance: Any, prefix: str = "") -> list[ValidationIssue]:
    """The issues ``explainer`` finds in ``instance``: all of them, or :data:`MAX_ISSUES` + 1 when there are more.

    :param explainer: a validator from :func:`build_explainer`.
    :param instance: the value that failed validation.
    :param prefix: path of ``instance`` inside the event (``"properties"`` for event payloads).
    """
    issues: dict[ValidationIssue, bool] = {}
    for error in explainer.iter_errors(instance):
        issues[ValidationIssue(issue_path(prefix, error.absolute_path), _message(error))] = error.validator == "type"
        if len(issues) > MAX_ISSUES:
            break  # enough to tell the caller there are too many (see finish())
    # Once a value has the wrong type, what its enum or length would have been is noise: keep the type error.
    mistyped = {issue.path for issue, is_type_error in issues.items() if is_type_error}
    return [issue for issue, is_type_error in issues.items() if is_type_error or issue.path not in mistyped]


def _natural_key(issue: ValidationIssue) -> tuple[str, str]:
    # "actions[2]" before "actions[10]", as a reader expects.
    return _INDEX.sub(lambda m: f"[{int(m.group(1)):012d}]", issue.path), issue.message


def finish(issues: Iterable[ValidationIssue]) -> list[ValidationIssue]:
    """Merge duplicates, sort by path (list positions numerically) and cap at :data:`MAX_ISSUES`.

    :param issues: issues gathered from the envelope and the payload.
    """
    ordered = sorted(set(issues), key=_natural_key)
    if len(ordered) > MAX_ISSUES:
        ordered = ordered[:MAX_ISSUES]
        ordered.append(ValidationIssue("", f"more than {MAX_ISSUES} issues; the rest are not listed"))
    return ordered


def issue_path(prefix: str, parts: Iterable[Any]) -> str:
    """Spell a location inside an event the way :class:`ValidationIssue` does.

    :param prefix: path of the validated value inside the event, ``""`` for the event itself.
    :param parts: keys (``str``) and list positions (``int``) below it.
    """
    path = prefix
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            path += f"[{part}]"
        else:
            text = _shorten(str(part), _SHOWN_STRING_CHARS)
            path = f"{path}.{text}" if path else text
    return path


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def show(instance: Any, redact: bool = False) -> str:
    """A short rendering of a value for a message: scalars as Python literals, containers by kind.

    :param instance: the offending value.
    :param redact: hide the value entirely (the field is marked ``x-pii``).
    """
    if redact:
        return "value (redacted, x-pii)"
    if isinstance(instance, str):
        return repr(instance) if len(instance) <= _SHOWN_STRING_CHARS else repr(instance[:_SHOWN_STRING_CHARS]) + "..."
    if instance is None or isinstance(instance, (bool, int, float)):
        return _shorten(repr(instance), _SHOWN_STRING_CHARS)
    if isinstance(instance, dict):
        return "object"
    if isinstance(instance, (list, tuple)):
        return "array"
    return f"{type(instance).__name__} value"


def _size(instance: Any) -> int:
    try:
        return len(instance)
    except TypeError:
        return 0


# Message per keyword. {shown}: the offending value (or "object"/"array"/redacted); {value}: the keyword's
# value as a bounded literal; {raw}: the keyword's value as text; {size}: length of the offending container.
_TEMPLATES = {
    "type": "{shown} is not of type {value}",
    "enum": "{shown} is not one of {value}",
    "const": "{shown} is not the expected constant {value}",
    "format": "{shown} is not a valid {raw}",
    "minLength": "{shown} is shorter than the minimum length of {raw}",
    "maxLength": "{shown} is longer than the maximum length of {raw}",
    "minimum": "{shown} is less than the minimum of {raw}",
    "maximum": "{shown} is greater than the maximum of {raw}",
    "exclusiveMinimum": "{shown} is not greater than {raw}",
    "exclusiveMaximum": "{shown} is not less than {raw}",
    "multipleOf": "{shown} is not a multiple of {raw}",
    "minItems": "array has {size} items, fewer than the minimum of {raw}",
    "maxItems": "array has {size} items, more than the maximum of {raw}",
    "uniqueItems": "array items are not unique",
    "minProperties": "object has {size} properties, fewer than the minimum of {raw}",
    "maxProperties": "object has {size} properties, more than the maximum of {raw}",
    "oneOf": "{shown} does not match exactly one of the allowed alternatives",
    "not": "{shown} matches a schema it must not match",
}


def _message(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    keyword = error.validator
    value = error.validator_value
    shown = show(error.instance, redact="x-pii" in schema)
    if error.message == _TOO_DEEP and keyword in ("uniqueItems", "contains"):
        # These compare the nested values themselves, so the check did not finish. For every other
        # keyword only jsonschema's own message failed, and the one written here needs no repr.
        return _TOO_DEEP
    if keyword in ("required", "additionalProperties"):
        return error.message  # written by this module's own keyword functions
    if keyword == "pattern":
        return f"{shown} {error.message}"
    if keyword == "anyOf":
        return _any_of_message(value, shown)
    template = _TEMPLATES.get(keyword)
    if template is not None:
        return template.format(
            shown=shown, value=_shorten(repr(value), _SHOWN_LIST_CHARS), raw=value, size=_size(error.instance)
        )
    # Anything rarer keeps jsonschema's wording, bounded; it may quote a value, so never for PII fields.
    if "x-pii" in schema:
        return f"{shown} fails the {keyword!r} constraint"
    return _shorten(error.message, _SHOWN_LIST_CHARS)


def _any_of_message(alternatives: Any, shown: str) -> str:
    # "anyOf: [{required: [a]}, {required: [b]}]" is how "at least one of a, b" is spelled in JSON Schema.
    names = []
    for branch in alternatives if isinstance(alternatives, list) else []:
        if isinstance(branch, dict) and set(branch) == {"required"}:
            names.extend(branch["required"])
        else:
            return f"{shown} does not match any of the allowed alternatives"
    return "at least one of " + ", ".join(repr(n) for n in names) + " is required"
