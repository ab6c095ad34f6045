"""Context enrichment: the user agent as browser / OS / device class, and the client's clock skew corrected.

Clock skew: a client stamps ``timestamp`` and ``sent_at`` with its own clock; the gateway stamps ``received_at``
with a good one. ``received_at - sent_at`` is the client's clock error (plus network latency, which is small),
so ``corrected = timestamp + (received_at - sent_at)``. The correction is clamped to ``max_skew`` so that a garbage
``sent_at`` cannot move an event by years, and the result is never later than ``received_at``: nothing happens
after the gateway received it. Without a usable ``sent_at`` the timestamp is kept as sent. ``event_date`` is the
UTC date of the corrected time; it selects the Parquet partition and the PII salt quarter.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DEFAULT_MAX_SKEW = dt.timedelta(days=2)
UTC = dt.timezone.utc


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 string as an aware UTC datetime (nanoseconds truncated to microseconds); ``None`` if unusable."""
    if not isinstance(value, str) or len(value) < 20:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    zone = parsed.tzinfo
    if zone is UTC:  # "Z" and "+00:00" parse to the UTC singleton: nothing to convert
        return parsed
    if zone is None:
        return None
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class EventTime:
    """:param timestamp: corrected event time (UTC); :param skew_seconds: the correction applied"""

    timestamp: dt.datetime
    skew_seconds: float

    @property
    def event_date(self) -> dt.date:
        return self.timestamp.date()


def correct_timestamp(timestamp: dt.datetime, sent_at: dt.datetime | None, received_at: dt.datetime,
                      max_skew: dt.timedelta = DEFAULT_MAX_SKEW) -> EventTime:
    """Shift ``timestamp`` by the client's clock error, bounded.

    :param timestamp: when the event happened, by the client's clock
    :param sent_at: when the client sent it, by the same clock (``None``: no correction)
    :param received_at: when the gateway received it, by the gateway's clock
    :param max_skew: the largest correction applied, either way
    """
    skew = dt.timedelta(0) if sent_at is None else received_at - sent_at
    skew = max(-max_skew, min(max_skew, skew))
    corrected = min(timestamp + skew, received_at)
    return EventTime(corrected, (corrected - timestamp).total_seconds())


def event_time(event: dict[str, Any], received_at: str, batch_sent_at: str | None,
               max_skew: dt.timedelta = DEFAULT_MAX_SKEW) -> EventTime | None:
    """:func:`correct_timestamp` from the raw strings: the event's own ``sent_at`` wins over the batch's.
    ``None`` when ``timestamp`` or ``received_at`` cannot be parsed."""
    timestamp = parse_time(event.get("timestamp"))
    received = parse_time(received_at)
    if timestamp is None or received is None:
        return None
    sent = parse_time(event.get("sent_at")) or parse_time(batch_sent_at)
    return correct_timestamp(timestamp, sent, received, max_skew)


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """:param browser: e.g. ``Chrome``; :param os: e.g. ``Windows``; :param device_class: mobile, tablet,
    desktop, tv, console, wearable, bot or other"""

    browser: str | None = None
    os: str | None = None
    device_class: str | None = None


# context.device.type as the SDK declares it → device class. A declared type beats a guess from the UA.
_DECLARED_CLASS = {"phone": "mobile", "tablet": "tablet", "desktop": "desktop", "tv": "tv", "wearable": "wearable",
                   "console": "console", "server": "server", "other": "other"}
_DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "ChromeOS", "Fedora", "FreeBSD", "Debian"}
_TABLET_HINTS = ("iPad", "Tablet", "Kindle", "Nexus 7", "Nexus 9", "SM-T", "Tab")


def _unknown(value: str | None) -> str | None:
    return None if not value or value == "Other" else value


@lru_cache(maxsize=20_000)
def parse_user_agent(user_agent: str) -> UserAgentInfo:
    """Browser, OS and device class of a User-Agent string (uap-core rules via ``ua-parser``); cached."""
    from ua_parser import parse  # imported here: the rules load lazily and only the flow needs them

    result = parse(user_agent[:1024])
    browser = _unknown(result.user_agent.family if result.user_agent else None)
    os_family = _unknown(result.os.family if result.os else None)
    device = result.device.family if result.device else ""
    return UserAgentInfo(browser, os_family, _device_class(user_agent, browser, os_family, device or ""))


def _device_class(ua: str, browser: str | None, os_family: str | None, device: str) -> str:
    if device == "Spider" or (browser or "").lower().endswith(("bot", "spider", "crawler")):
        return "bot"
    if any(hint in device for hint in _TABLET_HINTS) or (os_family == "Android" and "Mobile" not in ua):
        return "tablet"
    if os_family in ("iOS", "Android") or "Mobile" in ua or device in ("iPhone", "Generic Smartphone"):
        return "mobile"
    if "SmartTV" in ua or "Smart-TV" in ua or "AppleTV" in device or "tvOS" == os_family:
        return "tv"
    if "PlayStation" in ua or "Xbox" in ua or "Nintendo" in ua:
        return "console"
    if os_family in _DESKTOP_OS:
        return "desktop"
    return "other"


def user_agent_info(event: dict[str, Any], gateway_user_agent: str | None) -> UserAgentInfo:
    """Browser / OS / device class for an event: the UA in ``context.user_agent`` (a server SDK forwarding its
    end user's) wins over the one the gateway saw; the SDK's ``context.device`` wins over a guess."""
    context = event.get("context") if isinstance(event.get("context"), dict) else {}
    ua = context.get("user_agent") or gateway_user_agent
    info = parse_user_agent(ua) if isinstance(ua, str) and ua else UserAgentInfo()
    device = context.get("device") if isinstance(context.get("device"), dict) else {}
    declared = _DECLARED_CLASS.get(device.get("type"))
    os_name = device.get("os") or info.os
    if declared or os_name != info.os:
        return UserAgentInfo(info.browser, os_name, declared or info.device_class)
    return info


def user_agent_cache_stats() -> tuple[int, int]:
    """``(hits, misses)`` of the user-agent cache, process-wide."""
    info = parse_user_agent.cache_info()
    return info.hits, info.misses
