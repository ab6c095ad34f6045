"""User-agent classification and clock-skew correction."""
from __future__ import annotations

import datetime as dt

import pytest

from enrichers.context import (UserAgentInfo, correct_timestamp, event_time, parse_time, parse_user_agent,
                               user_agent_info)
from tests.flowkit import IPHONE_UA, utc

CHROME_WIN = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")
IPAD = ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.6 Mobile/15E148 Safari/604.1")
PIXEL = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/124.0.0.0 Mobile Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.mark.parametrize("ua, browser, os, device_class", [
    (IPHONE_UA, "Mobile Safari", "iOS", "mobile"),
    (CHROME_WIN, "Chrome", "Windows", "desktop"),
    (IPAD, "Mobile Safari", "iOS", "tablet"),
    (PIXEL, "Chrome Mobile", "Android", "mobile"),
    (GOOGLEBOT, "Googlebot", None, "bot"),
    ("curl/8.5.0", "curl", None, "other"),
])
def test_user_agents(ua, browser, os, device_class):
    assert parse_user_agent(ua) == UserAgentInfo(browser, os, device_class)


def test_context_user_agent_beats_the_gateways_and_declared_device_beats_a_guess():
    event = {"context": {"user_agent": IPHONE_UA}}
    assert user_agent_info(event, CHROME_WIN).os == "iOS"
    assert user_agent_info({"context": {}}, CHROME_WIN).browser == "Chrome"
    declared = {"context": {"user_agent": CHROME_WIN, "device": {"type": "tablet", "os": "iPadOS"}}}
    assert user_agent_info(declared, None) == UserAgentInfo("Chrome", "iPadOS", "tablet")
    assert user_agent_info({}, None) == UserAgentInfo()


def test_skew_correction_moves_the_timestamp_by_the_client_clock_error():
    # the client clock is 10 minutes slow
    out = correct_timestamp(utc("2026-12-03T11:49:00Z"), utc("2026-12-03T11:50:00Z"), utc("2026-12-03T12:00:00Z"))
    assert out.timestamp == utc("2026-12-03T11:59:00Z")
    assert out.skew_seconds == 600


def test_skew_correction_is_bounded_and_never_after_receipt():
    received = utc("2026-12-03T12:00:00Z")
    far_past_clock = correct_timestamp(utc("2000-01-01T00:00:00Z"), utc("2000-01-01T00:00:01Z"), received,
                                       max_skew=dt.timedelta(days=2))
    assert far_past_clock.timestamp == utc("2000-01-03T00:00:00Z")
    fast_clock = correct_timestamp(utc("2026-12-03T12:30:00Z"), utc("2026-12-03T12:20:00Z"), received)
    assert fast_clock.timestamp == received  # 12:30 - 20 min would still be after receipt
    future = correct_timestamp(utc("2026-12-03T13:00:00Z"), None, received)
    assert future.timestamp == received


def test_event_date_follows_the_corrected_time_across_midnight():
    when = event_time({"timestamp": "2026-12-31T23:58:00Z", "sent_at": "2026-12-31T23:59:00Z"},
                      "2027-01-01T00:03:00Z", None)
    assert when.event_date == dt.date(2027, 1, 1)


def test_event_sent_at_wins_over_the_batch_and_missing_sent_at_means_no_correction():
    ev = {"timestamp": "2026-12-03T11:00:00Z", "sent_at": "2026-12-03T11:00:00Z"}
    assert event_time(ev, "2026-12-03T11:00:05Z", "2026-12-03T10:00:00Z").skew_seconds == 5
    assert event_time({"timestamp": "2026-12-03T11:00:00Z"}, "2026-12-03T11:00:05Z", None).skew_seconds == 0
    assert event_time({"timestamp": "garbage"}, "2026-12-03T11:00:05Z", None) is None


def test_parse_time_handles_offsets_and_nanoseconds():
    assert parse_time("2026-12-03T13:00:00.123456789+01:00") == utc("2026-12-03T12:00:00.123456Z")
    assert parse_time("2026-12-03T12:00:00") is None  # no offset: not on the UTC time line
    assert parse_time(None) is None
