"""PII marks applied by the registry's paths: hash (deterministic, salted per quarter, rotation overlap), drop, ip."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest

from enrichers.pii import MissingSaltError, PiiHasher, check_salts_cover, hash_value, mask_ip
from headwater.settings import parse_pii_salts
from schemas.registry import SchemaRegistry
from tests.flowkit import PLANTED, SALT_Q1, SALT_Q4, identify_event, make_settings, salts_env

DEC = dt.date(2026, 12, 3)
JAN_OVERLAP = dt.date(2027, 1, 5)   # 2026Q4's salt is valid 14 days into 2027Q1
JAN_LATER = dt.date(2027, 2, 1)


@pytest.fixture(scope="module")
def registry():
    return SchemaRegistry.load()


@pytest.fixture()
def hasher(registry):
    return PiiHasher(parse_pii_salts(salts_env(), 14), registry.pii_fields)


def expected(value: str, key: bytes) -> str:
    return hmac.new(key, value.strip().lower().encode(), hashlib.sha256).hexdigest()


def test_hash_marks_become_hmac_under_the_quarter_salt(hasher):
    out = hasher.protect(identify_event(), DEC)
    props = out.event["properties"]
    assert props["email"] == expected(PLANTED["email"], SALT_Q4)
    assert props["phone"] == expected(PLANTED["phone"], SALT_Q4)
    assert out.salt_id == "2026Q4" and out.salt_id_prev is None
    assert "email__prev" not in props


def test_hashing_is_deterministic_and_normalised(hasher):
    a = hasher.protect(identify_event(), DEC).event["properties"]["email"]
    b = hasher.protect(identify_event(), DEC).event["properties"]["email"]
    assert a == b == hash_value("  planted.person@example.ORG ", SALT_Q4)
    assert hash_value("x", SALT_Q4) != hash_value("x", SALT_Q1)


def test_drop_marks_remove_the_field_and_input_is_untouched(hasher):
    event = identify_event()
    out = hasher.protect(event, DEC).event
    assert "name" not in out["properties"] and "address" not in out["properties"]
    assert out["properties"]["country"] == "DE"
    assert event["properties"]["name"] == PLANTED["name"]  # the caller's event is not modified
    assert event["context"]["ip"] == PLANTED["ip"]


def test_ip_fields_are_taken_out_for_geo_and_client_ip_comes_after(hasher):
    out = hasher.protect(identify_event(), DEC, client_ip=PLANTED["client_ip"])
    assert "ip" not in out.event["context"]
    assert out.ips == [PLANTED["ip"], PLANTED["client_ip"]]
    assert out.ip == PLANTED["ip"]


@pytest.mark.parametrize("ip, masked", [
    ("81.2.69.142", "81.2.69.0"), ("2a02:ec0:1:2:3:4:5:6", "2a02:ec0:1::"), ("::ffff:81.2.69.9", "81.2.69.0"),
    ("2001:4860:4860::8888", "2001:4860:4860::"), ("not an ip", None), ("", None)])
def test_mask_ip_truncates_to_24_and_48(ip, masked):
    assert mask_ip(ip) == masked


def test_rotation_overlap_hashes_under_both_salts_so_joins_bridge_the_quarters(hasher):
    december = hasher.protect(identify_event(), DEC).event["properties"]
    overlap = hasher.protect(identify_event(when="2027-01-05T10:00:00Z"), JAN_OVERLAP)
    later = hasher.protect(identify_event(when="2027-02-01T10:00:00Z"), JAN_LATER)
    assert (overlap.salt_id, overlap.salt_id_prev) == ("2027Q1", "2026Q4")
    props = overlap.event["properties"]
    # bridge: the overlap row joins the old quarter on __prev and the new quarter on the field itself
    assert props["email__prev"] == december["email"]
    assert props["email"] == later.event["properties"]["email"]
    assert props["email"] != december["email"]
    assert later.salt_id_prev is None and "email__prev" not in later.event["properties"]


def test_missing_salt_raises_at_runtime(hasher):
    with pytest.raises(MissingSaltError, match="2027Q2"):
        hasher.protect(identify_event(when="2027-05-01T00:00:00Z"), dt.date(2027, 5, 1))


def test_start_up_check_names_the_quarter_and_the_setting(tmp_path):
    settings = make_settings(tmp_path, HEADWATER_PII_SALTS=salts_env(q1=None))
    assert check_salts_cover(settings, DEC) == []
    with pytest.raises(MissingSaltError) as err:
        check_salts_cover(settings, JAN_LATER)
    assert "2027Q1" in str(err.value) and "HEADWATER_PII_SALTS" in str(err.value)
    # the previous quarter's overlap does not stand in for a missing own salt
    with pytest.raises(MissingSaltError):
        check_salts_cover(settings, JAN_OVERLAP)


def test_start_up_check_warns_before_the_next_quarter_lacks_a_salt(tmp_path):
    settings = make_settings(tmp_path, HEADWATER_PII_SALTS=salts_env(q1=None))
    warnings = check_salts_cover(settings, dt.date(2026, 12, 25))
    assert len(warnings) == 1 and "2027Q1" in warnings[0]


def test_nested_array_and_map_paths():
    marks = {"properties.contacts[].email": "hash", "properties.notes[]": "drop",
             "properties.meta.*": "hash", "properties.servers[].ip": "ip", "context.ip": "ip"}
    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), lambda name: marks)
    event = {"event": "custom", "properties": {
        "contacts": [{"email": "a@b.co", "kind": "work"}, {"kind": "none"}, "junk"],
        "notes": ["free text"], "meta": {"x": "secret-x", "y": 7},
        "servers": [{"ip": "8.8.8.8", "role": "db"}]}}
    out = hasher.protect(event, DEC)
    props = out.event["properties"]
    assert props["contacts"][0] == {"email": expected("a@b.co", SALT_Q4), "kind": "work"}
    assert props["contacts"][1:] == [{"kind": "none"}, "junk"]
    assert "notes" not in props
    assert props["meta"] == {"x": expected("secret-x", SALT_Q4), "y": expected("7", SALT_Q4)}
    assert props["servers"] == [{"role": "db"}] and out.ips == ["8.8.8.8"]
    assert event["properties"]["contacts"][0]["email"] == "a@b.co"


def test_unknown_event_name_still_applies_envelope_marks(registry):
    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), registry.pii_fields)
    out = hasher.protect({"event": "not_registered", "context": {"ip": "81.2.69.1"}}, DEC)
    assert "ip" not in out.event["context"] and out.ips == ["81.2.69.1"]


def test_plain_paths_take_the_single_copy_walk_with_the_same_result(registry):
    from enrichers.pii import _action, _apply

    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), registry.pii_fields)
    event = identify_event()
    plan = hasher._plans("identify")
    assert plan.flat is not None  # the catalogue's marks are all plain object paths
    primary, previous = hasher.salts_on(JAN_OVERLAP)
    general, ips = dict(event), []
    for segments, mark in plan.steps:
        _apply(general, segments, _action(mark, primary, previous, ips))
    out = hasher.protect(event, JAN_OVERLAP)
    assert out.event == general and out.ips == ips
    assert event == identify_event() | {"event_id": event["event_id"]}  # the input is untouched


@pytest.mark.parametrize("key_length", [0, 1, 31, 32, 64, 65, 200])
def test_keyed_hasher_gives_the_standard_hmac_for_any_key_length(key_length):
    from enrichers.pii import KeyedHasher

    key = bytes(range(key_length))
    hasher = KeyedHasher(key)
    for message in (b"", b"ann@example.com", "Ünïcode ✓".encode(), b"x" * 1000):
        assert hasher.hexdigest(message) == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert hasher.hash(" Ann@Example.com ") == hash_value("ann@example.com", key)
    assert hasher.hash(True) == hash_value(True, key) and hasher.hash(42) == hash_value(42, key)


def test_an_event_without_marked_values_is_copied_untouched(registry):
    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), registry.pii_fields)
    event = identify_event()
    for field in ("email", "phone", "username", "name", "address"):
        del event["properties"][field]
    del event["context"]["ip"]
    before = {**event, "properties": dict(event["properties"]), "context": dict(event["context"])}
    out = hasher.protect(event, DEC)
    assert out.event == before and out.event is not event and out.ips == []
    assert event == before


def test_protect_parts_is_protect_as_a_tuple(registry):
    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), registry.pii_fields)
    event = identify_event()
    outcome = hasher.protect(event, JAN_OVERLAP, "203.0.113.9")
    assert hasher.protect_parts(event, JAN_OVERLAP, "203.0.113.9") == (outcome.event, outcome.ips, outcome.salt_id,
                                                                      outcome.salt_id_prev)
    assert outcome.salt_id_prev is not None and outcome.event["properties"]["email__prev"]


@pytest.mark.parametrize("day", [DEC, JAN_OVERLAP])
def test_in_place_gives_the_same_result_on_the_event_itself(registry, day):
    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), registry.pii_fields)
    event = identify_event()
    copied = hasher.protect_parts(event, day, "203.0.113.9")
    assert event == identify_event() | {"event_id": event["event_id"]}  # the copying form leaves it alone
    own = identify_event() | {"event_id": event["event_id"]}
    in_place = hasher.protect_parts(own, day, "203.0.113.9", in_place=True)
    assert in_place == copied
    assert in_place[0] is own and "ip" not in own["context"]
    assert own["properties"]["email"] == copied[0]["properties"]["email"] != event["properties"]["email"]


def test_in_place_copies_when_a_plan_is_not_plain(registry):
    # Marks through arrays or maps take the general, copying walk: the caller's event is then left as it was.
    marks = {"properties.people[].email": "hash", "context.ip": "ip"}
    hasher = PiiHasher(parse_pii_salts(salts_env(), 14), lambda name: marks)
    event = {"event": "x", "properties": {"people": [{"email": "a@example.org"}]}, "context": {"ip": "81.2.69.1"}}
    out, ips, _, _ = hasher.protect_parts(event, DEC, in_place=True)
    assert out is not event and ips == ["81.2.69.1"]
    assert out["properties"]["people"][0]["email"] == expected("a@example.org", SALT_Q4)
    assert event["properties"]["people"][0]["email"] == "a@example.org"
