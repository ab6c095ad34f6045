"""Format checks: what each accepts, and that fastjsonschema and jsonschema apply them identically."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.explain import build_explainer
from schemas.formats import FORMAT_CHECKS
from schemas.registry import compile_fast

CASES = {
    "date-time": (
        ["2026-12-03T12:00:00Z", "2026-12-03t12:00:00.5+05:30", "2024-02-29T23:59:59.123456789-08:00"],
        ["2026-12-03 12:00:00Z", "2026-12-03T12:00:00", "2023-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
         "2026-12-03T24:00:00Z", "2026-12-03T23:59:60Z", "2026-13-01T00:00:00Z", "١٢٠٢٦-12-03T12:00:00Z", ""],
    ),
    "date": (["2024-02-29", "1990-01-01"], ["2023-02-29", "1990-1-1", "1990-01-01T00:00:00Z"]),
    "uuid": (["0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41", "E0B7C1A3-98F2-4C55-9A0E-3C8D2F1B6E41"],
             ["0b7c1a398f2e4c559a0e3c8d2f1b6e41", "0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e4", "{0b7c1a39-8f2e-4c55-9a0e-3c8d2f1b6e41}"]),
    "email": (["ada@example.com", "a.b+tag@sub.example.co.uk"], ["ada", "ada@localhost", "a b@example.com", "@example.com"]),
    "uri": (["https://example.com/a?b=c", "mailto:ada@example.com"], ["example.com/path", "/relative", "https://exa mple.com"]),
    "ip": (["203.0.113.7", "0.0.0.0", "::1", "2001:db8::8a2e:370:7334"], ["256.0.0.1", "01.2.3.4", "1.2.3", "::g", "localhost"]),
    "ipv4": (["192.168.0.1"], ["::1", "192.168.0.256"]),
    "ipv6": (["fe80::1"], ["192.168.0.1", ":::"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_format_accepts_and_refuses(name: str) -> None:
    good, bad = CASES[name]
    check = FORMAT_CHECKS[name]
    assert [value for value in good if not check(value)] == []
    assert [value for value in bad if check(value)] == []


def test_every_format_has_cases() -> None:
    assert set(CASES) == set(FORMAT_CHECKS)


VALIDATORS = {
    name: (compile_fast({"type": "string", "format": name}), build_explainer({"type": "string", "format": name}))
    for name in FORMAT_CHECKS
}


def _fast_accepts(name: str, value: str) -> bool:
    try:
        VALIDATORS[name][0](value)
    except Exception:
        return False
    return True


near_misses = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"),
    st.from_regex(r"\A[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\Z"),
    st.from_regex(r"\A[0-9a-fA-F:]{2,20}\Z"),
    st.from_regex(r"\A[a-z]{1,5}@[a-z]{0,5}(\.[a-z]{0,3})?\Z"),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FORMAT_CHECKS)), near_misses)
def test_both_validators_agree(name: str, value: str) -> None:
    explainer_accepts = not list(VALIDATORS[name][1].iter_errors(value))
    assert _fast_accepts(name, value) == explainer_accepts == FORMAT_CHECKS[name](value)


def test_patterns_agree_on_trailing_newline() -> None:
    # fastjsonschema reads "$" as end-of-string; the explainer must too, or an event would be refused unexplained.
    schema = {"type": "string", "pattern": "^[a-z]+$"}
    fast, explainer = compile_fast(schema), build_explainer(schema)
    with pytest.raises(Exception):
        fast("abc\n")
    assert [e.validator for e in explainer.iter_errors("abc\n")] == ["pattern"]
    assert list(explainer.iter_errors("abc")) == []
