"""Rollout flags: stable device buckets, the flags file re-read while running, /analytics/config per device."""
from __future__ import annotations

import os
import time

import orjson
import pytest

from ingest_gateway.rollout import Flags, FlagSource, parse_flags, rollout_bucket
from ingest_gateway.signing import sign_request
from tests.unit.ingest_gateway.conftest import KID, MASTER_KEY, make_event


def test_buckets_are_stable_uniform_and_monotone_in_the_percentage():
    devices = [f"device-{i}" for i in range(20_000)]
    assert [rollout_bucket(d, "s") for d in devices[:50]] == [rollout_bucket(d, "s") for d in devices[:50]]
    for percent in (1, 10, 50):
        share = sum(Flags(rollout_percent=percent).enabled_for(d, "s") for d in devices) / len(devices)
        assert abs(share - percent / 100) < 0.015, (percent, share)
    at_10 = {d for d in devices if Flags(rollout_percent=10).enabled_for(d, "s")}
    at_30 = {d for d in devices if Flags(rollout_percent=30).enabled_for(d, "s")}
    assert at_10 < at_30  # raising the percentage only adds devices
    other_salt = {d for d in devices if Flags(rollout_percent=10).enabled_for(d, "another")}
    assert len(at_10 & other_salt) < len(at_10) * 0.2  # a new salt picks an independent population
    assert not any(Flags(edge_proxy_enabled=False).enabled_for(d, "s") for d in devices[:100])
    assert not any(Flags(rollout_percent=0).enabled_for(d, "s") for d in devices[:100])


def test_flags_file_validation_reports_every_problem():
    with pytest.raises(ValueError) as info:
        parse_flags('rollout_percent = 101\ndark_mode = "yes"\ncolour = 1', Flags())
    message = str(info.value)
    assert "0-100" in message and "dark_mode must be a bool" in message and "unknown flag 'colour'" in message
    assert parse_flags("rollout_percent = 5", Flags(dark_mode=True)) == Flags(dark_mode=True, rollout_percent=5)


def _write(path, text: str, bump: int) -> None:
    path.write_text(text)
    stamp = time.time() + bump  # mtime granularity must not hide a quick second write
    os.utime(path, (stamp, stamp))


def test_flag_source_follows_the_file(tmp_path):
    path = tmp_path / "flags.toml"
    source = FlagSource(Flags(rollout_percent=100), path, check_seconds=0)
    assert source.current() == Flags()
    _write(path, "rollout_percent = 20\ndark_mode = true", 1)
    assert source.current() == Flags(rollout_percent=20, dark_mode=True)
    _write(path, "rollout_percent = [", 2)
    assert source.current() == Flags(rollout_percent=20, dark_mode=True)  # the last good flags stay
    assert "not valid TOML" in source.error
    path.unlink()
    assert source.current() == Flags() and source.error is None


def test_config_and_dark_mode_change_without_a_restart(offline_client, tmp_path):
    flags = tmp_path / "flags.toml"
    client = offline_client(flags_file=flags, flags_check_seconds=0.01, rollout_salt="test-salt")
    doc = client.get("/analytics/config").json()
    assert (doc["mode"], doc["edge_proxy_enabled"], doc["rollout_percent"], doc["enabled"]) == ("live", True, 100, True)
    devices = [f"dev-{i}" for i in range(200)]
    _write(flags, "rollout_percent = 30\n", 1)
    time.sleep(0.02)
    answers = {d: client.get("/analytics/config", params={"device_id": d}).json() for d in devices}
    assert all(a["rollout_percent"] == 30 and a["device_id"] == d for d, a in answers.items())
    enabled = {d for d, a in answers.items() if a["enabled"]}
    assert enabled == {d for d in devices if rollout_bucket(d, "test-salt") < 3000}
    assert 30 < len(enabled) < 90
    # The device may also be named by the signing header.
    r = client.get("/analytics/config", headers={"X-Headwater-Device": devices[0]})
    assert r.json()["enabled"] == answers[devices[0]]["enabled"] and "max-age" in r.headers["Cache-Control"]
    assert client.get("/analytics/config", params={"device_id": "x" * 200}).status_code == 400

    # Dark mode switched on by the file: events are validated and counted, nothing is published.
    _write(flags, "dark_mode = true\nedge_proxy_enabled = false\n", 2)
    time.sleep(0.02)
    doc = client.get("/analytics/config", params={"device_id": devices[0]}).json()
    assert (doc["mode"], doc["enabled"], doc["rollout_percent"]) == ("dark", False, 100)
    body = orjson.dumps({"batch": [make_event(), make_event()]})
    r = client.post("/analytics/collect", content=body, headers=sign_request(body, "dev-1", KID, MASTER_KEY))
    assert r.status_code == 200 and r.json()["dark"] == 2 and r.json()["accepted"] == 0
