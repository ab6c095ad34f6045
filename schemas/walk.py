"""Walk the fields a JSON Schema declares, for the registry's PII map and for the linter.

Paths use the same spelling everywhere in this package:

- object properties are joined with dots: ``context.device.os``;
- the items of an array add ``[]``: ``line_items[].sku``;
- the values of a map (``additionalProperties`` given as a schema) add ``*``: ``context.experiments.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

# Keywords whose subschemas describe the same instance as their parent: their fields keep its path.
_SAME_INSTANCE = ("allOf", "anyOf", "oneOf", "then", "else")


@dataclass(frozen=True)
class SchemaNode:
    """One declared field of a schema.

    :param path: dotted path of the field (see the module docstring for the spelling).
    :param name: the property name, or ``None`` for array items and map values.
    :param schema: the field's subschema (a dict, or a bare ``true``/``false`` schema).
    """

    path: str
    name: str | None
    schema: Any


def join(prefix: str, name: str) -> str:
    """Append ``name`` to a dotted ``prefix``.

    :param prefix: path so far, ``""`` at the root.
    :param name: next segment.
    """
    return f"{prefix}.{name}" if prefix else name


def iter_nodes(schema: Any, prefix: str = "") -> Iterator[SchemaNode]:
    """Yield every field declared below ``schema`` (not the root itself), depth first.

    :param schema: a JSON Schema object; anything else yields nothing.
    :param prefix: path under which ``schema`` sits.
    """
    if not isinstance(schema, dict):
        return
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, subschema in properties.items():
            path = join(prefix, name)
            yield SchemaNode(path, name, subschema)
            yield from iter_nodes(subschema, path)
    items = schema.get("items")
    for item_schema in items if isinstance(items, list) else [items]:
        if isinstance(item_schema, dict):
            path = prefix + "[]"
            yield SchemaNode(path, None, item_schema)
            yield from iter_nodes(item_schema, path)
    values = schema.get("additionalProperties")
    if isinstance(values, dict):
        path = join(prefix, "*")
        yield SchemaNode(path, None, values)
        yield from iter_nodes(values, path)
    for keyword in _SAME_INSTANCE:
        branches = schema.get(keyword)
        for branch in branches if isinstance(branches, list) else [branches]:
            yield from iter_nodes(branch, prefix)


def pii_marks(schema: Any, prefix: str = "") -> dict[str, str]:
    """Map the path of every field carrying ``x-pii`` to its mark.

    :param schema: a JSON Schema object.
    :param prefix: path under which ``schema`` sits (e.g. ``"properties"`` for an event's properties).
    """
    return {
        node.path: node.schema["x-pii"]
        for node in iter_nodes(schema, prefix)
        if isinstance(node.schema, dict) and "x-pii" in node.schema
    }
