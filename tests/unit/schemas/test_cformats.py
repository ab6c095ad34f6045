"""The C format checks answer exactly what their regex twins answer, for every string.

Importing ``schemas._cformats`` directly (not through the fallback in ``schemas.formats``) makes an install
that failed to compile it fail here, instead of silently running at regex speed.
"""
from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import _cformats, formats
from schemas.compiler import _fastjsonschema_regex

C_CHECKS = {"date-time": _cformats.is_date_time, "uri": _cformats.is_uri, "email": _cformats.is_email,
            "uuid": _cformats.is_uuid}

# Strings close to each format's edge: every field at and just past its limits, other digits, whitespace
# of other scripts, and the lookalikes the regexes refuse.
EDGES = [
    "", "a", "2026-12-03T12:00:00Z", "2026-12-03T12:00:00.123456Z", "2026-12-03t12:00:00z", "2026-12-03 12:00:00Z",
    "2026-12-03T12:00:00", "2026-12-03T12:00:00.Z", "2026-12-03T12:00:00+01:00", "2026-12-03T12:00:00-23:59",
    "2026-12-03T12:00:00+24:00", "2026-12-03T12:00:00+01:60", "2026-12-03T12:00:00+0100", "2026-12-03T24:00:00Z",
    "2026-12-03T23:60:00Z", "2026-12-03T23:59:60Z", "2026-00-03T12:00:00Z", "2026-13-03T12:00:00Z",
    "2026-12-00T12:00:00Z", "2026-12-32T12:00:00Z", "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-04-30T00:00:00Z",
    "0000-01-28T00:00:00Z", "0000-01-29T00:00:00Z", "0001-01-31T00:00:00Z", "9999-12-31T23:59:59Z",
    "2026-12-03T12:00:00Z\n", "\n2026-12-03T12:00:00Z", "２０２６-12-03T12:00:00Z", "2026-12-03T12:00:00.١Z",
    "2026-12-03T12:00:00Zx", "2026-12-03T12:00:00+01:00x", "2026-12-03T12:00:00.5+01:00",
    "https://acme.example/x?y=1", "a:b", "a:", ":b", "1a:b", "a1+.-:b", "ht tp://x", "http://x y", "http://x\u00a0y",
    "http://x\u2028", "http:\u3000", "http:/\u200b", "mailto:a@b", "a_b:c", "é:x", "http//x", "a:b:c",
    "a@b.co", "a@b", "@b.co", "a@.co", "a@b..co", "a@b.co.", "a@@b.co", "a b@c.co", "a@b .co", "a.b@c.d.e",
    "a@b\u2003.co", "x" * 310 + "@b.co", "x" * 320 + "@b.co", "ü@ö.ä",
    "0f0e0d0c-0b0a-4908-8706-050403020100", "0F0E0D0C-0B0A-4908-8706-05040302010A", "0f0e0d0c0b0a490887060504030201",
    "0f0e0d0c-0b0a-4908-8706-05040302010", "0f0e0d0c-0b0a-4908-8706-0504030201000", "0f0e0d0g-0b0a-4908-8706-050403020100",
    "0f0e0d0c-0b0a-4908-8706-050403020100\n", "0f0e0d0c_0b0a-4908-8706-050403020100", "٠f0e0d0c-0b0a-4908-8706-050403020100",
]

# Characters the formats are made of, plus whitespace and digits of other scripts, so generated strings
# often come close to valid.
_ALPHABET = st.sampled_from(list("0123456789-:.+TtZz@abcdefABCDEFxyz/ ") + ["\n", "\u00a0", "\u2003", "١", "é", "\U0001F600"])


def _near_date_times() -> st.SearchStrategy[str]:
    two = st.integers(0, 99).map(lambda n: f"{n:02d}")
    return st.builds(lambda y, mo, d, h, mi, s, frac, off: f"{y:04d}-{mo}-{d}T{h}:{mi}:{s}{frac}{off}",
                     st.integers(0, 9999), two, two, two, two, two,
                     st.sampled_from(["", ".1", ".123456", "."]),
                     st.sampled_from(["Z", "z", "+00:00", "-23:59", "+24:00", "+01:60", ""]))


@pytest.mark.parametrize("name", sorted(C_CHECKS))
def test_edges_agree(name: str) -> None:
    reference, fast = formats.REFERENCE_CHECKS[name], C_CHECKS[name]
    for value in EDGES:
        assert fast(value) is reference(value), (name, value)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(_ALPHABET, max_size=48), st.text(max_size=40), _near_date_times()))
def test_generated_strings_agree(value: str) -> None:
    for name, fast in C_CHECKS.items():
        assert fast(value) is formats.REFERENCE_CHECKS[name](value), (name, value)


def test_a_valid_sample_of_each_is_accepted() -> None:
    samples = {"date-time": "2026-02-28T23:59:59.999+05:30", "uri": "https://acme.example/pricing",
               "email": "ada@acme.example", "uuid": "123e4567-e89b-42d3-a456-426614174000"}
    for name, value in samples.items():
        assert C_CHECKS[name](value) is True, name


def test_the_formats_module_uses_them() -> None:
    assert formats.FORMAT_CHECKS["date-time"] is _cformats.is_date_time
    assert formats.FORMAT_CHECKS["uuid"] is _cformats.is_uuid


@pytest.mark.parametrize("pattern", sorted(formats.PATTERN_CHECKS))
def test_pattern_checks_answer_what_fastjsonschema_regex_answers(pattern: str) -> None:
    regex, check = _fastjsonschema_regex(pattern), formats.PATTERN_CHECKS[pattern]
    for value in EDGES + ["".join(p) for p in zip(string.hexdigits, string.hexdigits)]:
        assert check(value) is (regex.search(value) is not None), value


def test_anything_but_a_string_is_a_type_error() -> None:
    for fast in C_CHECKS.values():
        with pytest.raises(TypeError):
            fast(b"2026-12-03T12:00:00Z")
