"""Byte spans of a JSON object's members and an array's items, found without decoding the text.

``member_span``, ``path_spans`` and ``item_members`` come from ``schemas/_spans.c`` (see its notes for what they
promise); all are ``None`` when the package was installed without a C compiler, and callers then simply decode
everything.
"""
from __future__ import annotations

try:
    from schemas._spans import item_members, member_span, path_spans
except ImportError:  # pragma: no cover - an install without the C module
    item_members = member_span = path_spans = None

__all__ = ["item_members", "member_span", "path_spans"]
