"""schemas/_spans.c against a reference built on the standard library's JSON decoder, on generated and nasty texts.

The C module is imported directly: an install that could not build it fails here rather than quietly decoding every
context again.
"""
from __future__ import annotations

import json
import random

import pytest

from schemas import _spans

_DECODER = json.JSONDecoder()
REFUSED = "refused"


def _space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _reference_object(text: str, i: int, path: tuple[str, ...], level: int, member: tuple[str, ...] | None):
    """(index after the object, found) where found is the span at path (and the items, with member), or REFUSED."""
    i = _space(text, i)
    if i >= len(text) or text[i] != "{":
        return REFUSED
    i = _space(text, i + 1)
    found = None
    seen = False
    if text[i] == "}":
        return i + 1, found
    while True:
        if text[i] != '"':
            return REFUSED
        name, after = json.decoder.scanstring(text, i + 1)
        if "\\" in text[i + 1:after - 1]:
            return REFUSED
        i = _space(text, after)
        assert text[i] == ":"
        i = _space(text, i + 1)
        if name == path[level]:
            if seen:
                return REFUSED
            seen = True
            if level < len(path) - 1:
                inner = _reference_object(text, i, path, level + 1, member)
                if inner == REFUSED:
                    return REFUSED
                end, found = inner
            else:
                _, end = _DECODER.raw_decode(text, i)
                found = (i, end)
                if member is not None:
                    items = _reference_items(text, i, member)
                    if items == REFUSED:
                        return REFUSED
                    found = items
        else:
            _, end = _DECODER.raw_decode(text, i)
        i = _space(text, end)
        if text[i] == "}":
            return i + 1, found
        assert text[i] == ","
        i = _space(text, i + 1)


def _reference_items(text: str, i: int, member: tuple[str, ...]):
    if text[i] != "[":
        return REFUSED
    items = []
    i = _space(text, i + 1)
    if text[i] == "]":
        return items
    while True:
        _, end = _DECODER.raw_decode(text, i)
        inner = (-1, -1)
        if text[i] == "{":
            result = _reference_object(text, i, member, 0, None)
            if result == REFUSED:
                return REFUSED
            inner = result[1] or (-1, -1)
        items.append((i, end, *inner))
        i = _space(text, end)
        if text[i] == "]":
            return items
        i = _space(text, i + 1)


def reference(text: str, path: tuple[str, ...], member: tuple[str, ...] | None = None):
    """What member_span (member None) or item_members should answer for an ASCII JSON text."""
    result = _reference_object(text, 0, path, 0, member)
    return REFUSED if result == REFUSED else result[1]


def answer(data: bytes, path: tuple[bytes, ...], member: tuple[bytes, ...] | None = None):
    try:
        if member is None:
            return _spans.member_span(data, path)
        return _spans.item_members(data, path, member)
    except ValueError:
        return REFUSED


NASTY = ['"', "\\", '\\"', "\\\\", "{", "}", "[", "]", ",", ":", '"context":{', "é", "\u2028", "\x01", "\\u0022", " "]


def _string(rng: random.Random) -> str:
    return "".join(rng.choice(NASTY + ["a", "b", "context", "event"]) for _ in range(rng.randrange(0, 6)))


def _value(rng: random.Random, depth: int):
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        return _string(rng)
    if kind == 1:
        return rng.choice([0, -1, 12.5, 1e30, True, False, None])
    if kind in (2, 3, 4):
        return rng.choice(["x", "", "a" * rng.randrange(1, 40)])
    if kind in (5, 6):
        keys = [rng.choice(["a", "context", "event", "batch", _string(rng)]) for _ in range(rng.randrange(0, 5))]
        return {k: _value(rng, depth + 1) for k in keys}
    return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]


def _text(rng: random.Random, doc) -> str:
    style = rng.randrange(3)
    if style == 0:
        return json.dumps(doc)
    if style == 1:
        return json.dumps(doc, separators=(",", ":"))
    return json.dumps(doc, indent=rng.choice([1, 2, "\t"]))


def test_member_span_agrees_with_the_reference_on_generated_documents():
    rng = random.Random(20261204)
    found = 0
    for _ in range(3000):
        doc = {"v": 1, "event": _value(rng, 0), "other": _value(rng, 1)}
        if rng.random() < 0.5 and isinstance(doc["event"], dict):
            doc["event"]["context"] = _value(rng, 1)
        text = _text(rng, doc)
        data = text.encode()
        if not text.isascii():  # the reference counts characters, the module bytes: compare on ASCII texts only
            continue
        for path in [("event",), ("event", "context"), ("context",), ("other", "a")]:
            expected = reference(text, path)
            got = answer(data, tuple(p.encode() for p in path))
            assert got == expected, (text, path)
            if got not in (None, REFUSED):
                found += 1
                assert json.loads(data[got[0]:got[1]]) is not None or data[got[0]:got[1]] == b"null"
    assert found > 2000  # the generator does reach the interesting cases


def test_path_spans_are_the_member_spans_of_each_prefix_of_the_path():
    rng = random.Random(41)
    found = 0
    for _ in range(2000):
        doc = {"v": 1, "event": _value(rng, 0), "other": {"a": _value(rng, 1)}}
        if rng.random() < 0.7 and isinstance(doc["event"], dict):
            doc["event"]["context"] = _value(rng, 1)
        data = _text(rng, doc).encode()
        for path in [(b"event",), (b"event", b"context"), (b"other", b"a"), (b"event", b"context", b"x")]:
            try:
                got = _spans.path_spans(data, path)
            except ValueError:
                got = REFUSED
            expected = answer(data, path)
            assert (got == REFUSED) == (expected == REFUSED), (data, path)  # the same refusals
            if got == REFUSED:
                continue
            if expected is None:
                assert got is None, (data, path)
                continue
            # one pair per level, each what member_span gives for the path up to that level
            assert got == tuple(answer(data, path[:k + 1]) for k in range(len(path))), (data, path)
            found += len(path) > 1
    assert found > 500


def test_item_members_agrees_with_the_reference_on_generated_batches():
    rng = random.Random(7)
    checked = 0
    for _ in range(2000):
        batch = [_value(rng, 1) for _ in range(rng.randrange(0, 6))]
        for item in batch:
            if isinstance(item, dict) and rng.random() < 0.7:
                item["context"] = _value(rng, 2)
        doc = {"sent_at": _string(rng), "batch": batch}
        text = _text(rng, doc)
        if not text.isascii():
            continue
        got = answer(text.encode(), (b"batch",), (b"context",))
        assert got == reference(text, ("batch",), ("context",)), text
        if got != REFUSED:
            checked += 1
            for (start, end, c_start, c_end), item in zip(got, batch):
                assert json.loads(text[start:end]) == item
                if c_start >= 0:
                    assert json.loads(text[c_start:c_end]) == item["context"]
    assert checked > 1000


def test_non_ascii_texts_give_byte_spans():
    doc = {"ä": "ö" * 3, "event": {"name": "日本", "context": {"city": "Zürich", "q": "\"]}"}}}
    data = json.dumps(doc, ensure_ascii=False).encode()
    start, end = _spans.member_span(data, (b"event", b"context"))
    assert json.loads(data[start:end]) == doc["event"]["context"]


@pytest.mark.parametrize("text, why", [
    ('{"event": {"cont\\u0065xt": {}}}', "escape"),                 # a parser sees the key "context"
    ('{"event": {"context": {}, "context": {"a": 1}}}', "more than once"),
    ('{"event": {}, "event": {"context": {}}}', "more than once"),
    ('{"event": [1, 2]}', "not a JSON object"),                      # the path leads through an array
    ('[{"event": {}}]', "not a JSON object"),
    ('{"event": {"context": {}}} x', "text after"),
    ('{"event": {"context": {}}', "expected ','"),
    ('{"event": {"context": "unterminated}}', "member value"),
    ('{"event" {"context": {}}}', "expected ':'"),
    ('{event: {}}', "member name"),
])
def test_what_cannot_be_told_for_sure_is_refused(text, why):
    with pytest.raises(ValueError, match=why):
        _spans.member_span(text.encode(), (b"event", b"context"))


def test_absent_members_and_deeper_namesakes():
    assert _spans.member_span(b'{"event": {"a": {"context": 1}}}', (b"event", b"context")) is None
    assert _spans.member_span(b'{"x": {"event": {"context": 1}}}', (b"event", b"context")) is None
    assert _spans.member_span(b" { } ", (b"event",)) is None
    data = b'{"a": "\\\\", "event": {"p": "{\\"context\\": 1}", "context": [1, "]"]}}'
    start, end = _spans.member_span(data, (b"event", b"context"))
    assert data[start:end] == b'[1, "]"]'
    assert _spans.member_span(b'xx{"y": 2}', (b"y",), 2, 10) == (8, 9)


def test_item_members_cases():
    data = b'{"batch": [{"context": {}}, 1, "s", [], {"b": 2}], "sent_at": null}'
    items = _spans.item_members(data, (b"batch",), (b"context",))
    assert [(data[s:e], (cs, ce) != (-1, -1)) for s, e, cs, ce in items] == [
        (b'{"context": {}}', True), (b"1", False), (b'"s"', False), (b"[]", False), (b'{"b": 2}', False)]
    assert _spans.item_members(b'{"batch": []}', (b"batch",), (b"context",)) == []
    assert _spans.item_members(b'{"other": []}', (b"batch",), (b"context",)) is None
    for bad in (b'{"batch": {}}', b'{"batch": [{"context": 1, "context": 2}]}', b'{"batch": [1 2]}'):
        with pytest.raises(ValueError):
            _spans.item_members(bad, (b"batch",), (b"context",))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="at most 8"):
        _spans.path_spans(b"{}", (b"a",) * 9)
    with pytest.raises(TypeError, match="path_spans"):
        _spans.path_spans(b"{}")
    with pytest.raises(TypeError):
        _spans.member_span("text", (b"a",))
    with pytest.raises(TypeError):
        _spans.member_span(b"{}", b"a")
    with pytest.raises(TypeError):
        _spans.member_span(b"{}", ())
    with pytest.raises(IndexError):
        _spans.member_span(b"{}", (b"a",), 0, 5)
    with pytest.raises(TypeError):
        _spans.item_members(b"{}", (b"a",))


def test_mutilated_texts_never_crash_and_spans_stay_inside():
    rng = random.Random(99)
    base = json.dumps({"v": 1, "event": {"event": "x", "context": {"a": ["b", {"c": "\\\"}"}]}, "p": [1, 2]}})
    for _ in range(20000):
        chars = list(base)
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            at = rng.randrange(len(chars))
            if op == 0:
                del chars[at]
            elif op == 1:
                chars.insert(at, rng.choice('"\\{}[],: ax'))
            else:
                chars[at] = rng.choice('"\\{}[],: ax')
        data = "".join(chars).encode()
        try:
            got = _spans.member_span(data, (b"event", b"context"))
            spans = _spans.path_spans(data, (b"event", b"context"))
        except ValueError:
            continue
        assert (spans[-1] if spans is not None else None) == got
        if got is not None:
            (outer_start, outer_end), _ = spans
            assert 0 <= outer_start <= got[0] < got[1] <= outer_end <= len(data)
