"""Headwater's event schemas and the tools around them.

The ``*.schema.json`` files of this directory are the catalogue: ``envelope.schema.json`` for the fields every
event carries, one ``{event}.schema.json`` per event name for its ``properties``. This package imports nothing
from the rest of the project, so the gateway, the flow and the CLI can all depend on it.

- :class:`SchemaRegistry` loads and compiles the catalogue once and validates events (:mod:`schemas.registry`);
- :func:`check_schema` / :func:`check_paths` tell whether a schema change is backward compatible
  (:mod:`schemas.compat`);
- :func:`lint_directory` enforces the catalogue's house rules (:mod:`schemas.lint`).
"""

from schemas.compat import Incompatibility, check_paths, check_schema, version_warning
from schemas.explain import ValidationIssue
from schemas.lint import LintProblem, lint_directory
from schemas.registry import SchemaLoadError, SchemaRegistry

__all__ = [
    "Incompatibility",
    "LintProblem",
    "SchemaLoadError",
    "SchemaRegistry",
    "ValidationIssue",
    "check_paths",
    "check_schema",
    "lint_directory",
    "version_warning",
]
