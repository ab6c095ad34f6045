import asyncio
import hashlib
import hmac

import pytest

from ingest_gateway.kv import MemoryKV
from ingest_gateway.signing import SignatureError, SignatureVerifier, device_secret, sign_request

KEY_A = b"a" * 32
KEY_B = b"b" * 32
NOW = 1_800_000_000
BODY = b'{"batch":[{"event":"page_viewed"}]}'


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def verifier(keys=None, skew=300) -> SignatureVerifier:
    return SignatureVerifier(keys if keys is not None else {"a": KEY_A}, skew, MemoryKV())


def code_of(fn) -> str:
    with pytest.raises(SignatureError) as info:
        fn()
    return info.value.code


def test_good_signature_returns_the_device():
    headers = lower(sign_request(BODY, "dev-1", "a", KEY_A, timestamp=NOW))
    device, signature = verifier().verify(headers, BODY, now=NOW)
    assert device == "dev-1"
    # The documented construction, computed independently.
    secret = hmac.new(KEY_A, b"dev-1", hashlib.sha256).digest()
    assert signature == hmac.new(secret, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers["x-headwater-signature"] == f"kid=a,v1={signature}"
    assert device_secret(KEY_A, "dev-1") == secret


def test_wrong_key_tampered_body_and_other_device_are_refused():
    v = verifier()
    forged = lower(sign_request(BODY, "dev-1", "a", b"z" * 32, timestamp=NOW))
    assert code_of(lambda: v.verify(forged, BODY, now=NOW)) == "signature_mismatch"
    good = lower(sign_request(BODY, "dev-1", "a", KEY_A, timestamp=NOW))
    assert code_of(lambda: v.verify(good, BODY + b" ", now=NOW)) == "signature_mismatch"
    assert code_of(lambda: v.verify({**good, "x-headwater-device": "dev-2"}, BODY, now=NOW)) == "signature_mismatch"
    assert code_of(lambda: v.verify({**good, "x-headwater-timestamp": str(NOW + 1)}, BODY, now=NOW)) == "signature_mismatch"


def test_expired_and_future_timestamps_are_refused():
    v = verifier(skew=300)
    old = lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW - 301))
    assert code_of(lambda: v.verify(old, BODY, now=NOW)) == "timestamp_expired"
    ahead = lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW + 301))
    assert code_of(lambda: v.verify(ahead, BODY, now=NOW)) == "timestamp_in_future"
    edge = lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW - 299))
    assert v.verify(edge, BODY, now=NOW)[0] == "d"


def test_missing_malformed_and_unknown_kid():
    v = verifier()
    good = lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW))
    assert code_of(lambda: v.verify({}, BODY, now=NOW)) == "signature_missing"
    no_sig = {k: val for k, val in good.items() if k != "x-headwater-signature"}
    assert code_of(lambda: v.verify(no_sig, BODY, now=NOW)) == "signature_missing"
    assert code_of(lambda: v.verify({**good, "x-headwater-signature": "v1=abc"}, BODY, now=NOW)) == "signature_malformed"
    assert code_of(lambda: v.verify({**good, "x-headwater-timestamp": "yesterday"}, BODY, now=NOW)) == "timestamp_invalid"
    other = lower(sign_request(BODY, "d", "retired", KEY_A, timestamp=NOW))
    with pytest.raises(SignatureError) as info:
        v.verify(other, BODY, now=NOW)
    assert info.value.code == "unknown_kid" and "retired" in info.value.message


def test_rotation_two_kids_live_at_once():
    v = verifier({"2026a": KEY_A, "2026b": KEY_B})
    for kid, key in (("2026a", KEY_A), ("2026b", KEY_B)):
        assert v.verify(lower(sign_request(BODY, "d", kid, key, timestamp=NOW)), BODY, now=NOW)[0] == "d"
    # A key is bound to its kid: signing with b's key but naming a fails.
    crossed = lower(sign_request(BODY, "d", "2026a", KEY_B, timestamp=NOW))
    assert code_of(lambda: v.verify(crossed, BODY, now=NOW)) == "signature_mismatch"
    # After rotation a is retired: its signatures become unknown_kid.
    after = verifier({"2026b": KEY_B})
    assert code_of(lambda: after.verify(lower(sign_request(BODY, "d", "2026a", KEY_A, timestamp=NOW)), BODY,
                                        now=NOW)) == "unknown_kid"


def test_replayed_signature_is_refused_once_used():
    v = verifier()
    headers = lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW))
    _, signature = v.verify(headers, BODY, now=NOW)
    asyncio.run(v.check_replay(signature))
    with pytest.raises(SignatureError) as info:
        asyncio.run(v.check_replay(signature))
    assert info.value.code == "signature_replayed"
    # A fresh signature (new timestamp) for the same body is fine.
    _, fresh = v.verify(lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW + 1)), BODY, now=NOW)
    asyncio.run(v.check_replay(fresh))


def test_uppercase_hex_is_accepted_in_constant_time_compare():
    headers = lower(sign_request(BODY, "d", "a", KEY_A, timestamp=NOW))
    kid, _, sig = headers["x-headwater-signature"].partition(",v1=")
    headers["x-headwater-signature"] = f"{kid},v1={sig.upper()}"
    assert verifier().verify(headers, BODY, now=NOW)[0] == "d"
