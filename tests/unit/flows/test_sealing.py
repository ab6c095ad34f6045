"""Dead letters' originals sealed under keys derived from the PII salts: round trips, rotation, tampering."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flows.sealing import NONCE_BYTES, LetterSeal, SealError, derive_key
from flows.stages import DeadLetter, decode_dead_letter
from headwater.settings import parse_pii_salts
from tests.flowkit import PLANTED, SALT_Q1, SALT_Q4, identify_event, salts_env, wire

DEC = dt.date(2026, 12, 3)
JAN_OVERLAP = dt.date(2027, 1, 5)  # 2026Q4's salt still valid; 2027Q1's too


def seal_on(day: dt.date, env: str | None = None) -> LetterSeal:
    return LetterSeal(parse_pii_salts(env or salts_env(), 14), today=lambda: day)


def test_round_trip_under_the_quarters_salt_with_a_fresh_nonce_each_time():
    seal = seal_on(DEC)
    original = wire(identify_event("user-1"))
    first, second = seal.seal(original), seal.seal(original)
    assert first[0] == second[0] == "2026Q4"
    assert first[1] != second[1] and first[1][:NONCE_BYTES] != second[1][:NONCE_BYTES]
    assert seal.open(*first) == seal.open(*second) == original
    for value in PLANTED.values():
        assert value.encode() not in first[1]


def test_the_key_is_derived_not_the_salt_itself_and_differs_per_salt():
    assert derive_key(SALT_Q4) != SALT_Q4 and len(derive_key(SALT_Q4)) == 32
    assert derive_key(SALT_Q4) != derive_key(SALT_Q1)
    # and it is exactly what the module says: AES-GCM under HKDF(salt), the key id as associated data
    key_id, sealed = seal_on(DEC).seal(b"x")
    assert AESGCM(derive_key(SALT_Q4)).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], key_id.encode()) == b"x"


def test_after_a_rotation_new_letters_use_the_new_salt_and_old_ones_still_open():
    old_id, old = seal_on(DEC).seal(b"sealed in December")
    new_id, new = seal_on(JAN_OVERLAP).seal(b"sealed in January")
    assert (old_id, new_id) == ("2026Q4", "2027Q1")
    replay = seal_on(dt.date(2027, 3, 1))  # Q4's salt is past its overlap, but still configured: it opens
    assert replay.open(old_id, old) == b"sealed in December" and replay.open(new_id, new) == b"sealed in January"


def test_a_letter_whose_salt_was_removed_cannot_be_opened():
    key_id, sealed = seal_on(DEC).seal(b"x")
    only_q1 = seal_on(JAN_OVERLAP, salts_env().split(",")[1])
    with pytest.raises(SealError, match="no PII salt '2026Q4' is configured"):
        only_q1.open(key_id, sealed)


@pytest.mark.parametrize("change", ["flip a byte", "other key id", "truncate"])
def test_an_altered_letter_does_not_open(change):
    seal = seal_on(JAN_OVERLAP)
    key_id, sealed = seal.seal(b"the original record")
    if change == "flip a byte":
        sealed = sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]
    elif change == "other key id":
        key_id = "2026Q4"  # a configured salt, but not the one it was sealed under
    else:
        sealed = sealed[:NONCE_BYTES + 3]
    with pytest.raises(SealError):
        seal.open(key_id, sealed)


def test_past_every_salt_letters_are_sealed_under_the_latest_and_the_flow_goes_on():
    # A flow that runs into a quarter nobody configured a salt for dead-letters every event: they must still be
    # sealed (never in clear) and the sink must not fail on them.
    seal = seal_on(dt.date(2027, 6, 1))
    key_id, sealed = seal.seal(b"x")
    assert key_id == "2027Q1" and seal.open(key_id, sealed) == b"x"
    with pytest.raises(SealError, match="no PII salt is configured"):
        LetterSeal([], today=lambda: DEC).seal(b"x")


def test_a_dead_letter_writes_its_original_sealed_and_reads_back_with_the_salts():
    original = wire(identify_event("user-1"))
    letter = DeadLetter("validate", [{"path": "", "message": "m"}], "raw", 0, 7, key=b"user-1", original=original,
                        event_id="e", event="identify", seal=seal_on(DEC))
    value = letter.encode()
    assert PLANTED["email"].encode() not in value
    doc = decode_dead_letter(value, seal_on(DEC))
    assert doc["sealed"] and doc["original"] == original and doc["original_key"] == b"user-1"
    assert doc["original_seal_key"] == "2026Q4" and doc["original_b64"] is None
    assert decode_dead_letter(value)["original"] is None  # without the salts there is nothing to read
    unsealed = DeadLetter("decode", [], "raw", 0, 8, key=None, original=b"\x00x").encode()
    assert decode_dead_letter(unsealed) | {"failed_at": None} == decode_dead_letter(unsealed, seal_on(DEC)) | {
        "failed_at": None}
    assert decode_dead_letter(unsealed)["original"] == b"\x00x" and not decode_dead_letter(unsealed)["sealed"]
