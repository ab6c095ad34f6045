"""String formats that Headwater schemas may use, checked the same way by both validators.

fastjsonschema and jsonschema each ship their own idea of ``date-time``, ``email`` and friends, and
they disagree at the edges (jsonschema does not check ``date-time`` at all without an optional package).
The registry validates with fastjsonschema first and explains failures with jsonschema, so both must
apply the *same* rules, or an event could be rejected with no explanation. Every format here is a plain
function ``str -> bool`` that is handed to both libraries.

Formats not listed here are not enforced by either validator; ``schemas.lint`` reports them so a typo
such as ``"date_time"`` cannot silently switch validation off.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from typing import Callable

import jsonschema

# RFC 3339 profile: a "T" separator and an explicit offset are mandatory, because a timestamp without
# an offset cannot be placed on the pipeline's UTC time line. Any number of fraction digits is
# accepted (Go clients send nanoseconds). Leap seconds (":60") are refused: no client runtime we
# accept events from produces them, and Python cannot represent them downstream.
# Field ranges are checked by the regex itself because this runs for every event on the hot path;
# only days 29-31 need a calendar.
_DATE_TIME = re.compile(
    r"(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12]\d|3[01])"
    r"[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,  # "\d" must not match Arabic-Indic or other non-ASCII digits
)
_date_time_shape = _DATE_TIME.fullmatch
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Deliberately loose: the mailbox is hashed, never delivered to, so we only need to refuse values that
# are obviously not an address (which usually means a field mix-up on the client).
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)", re.ASCII)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s]+")


def is_date_time(value: str) -> bool:
    """Whether ``value`` is an RFC 3339 timestamp with an offset and a real calendar date.

    :param value: candidate string.
    """
    # The regex fixes where the date's fields are, so slicing finds them faster than the match's groups would.
    if _date_time_shape(value) is None:
        return False
    return value[8:10] <= "28" or _is_calendar_day(value[:4], value[5:7], value[8:10])


def _is_calendar_day(year: str, month: str, day: str) -> bool:
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def is_date(value: str) -> bool:
    """Whether ``value`` is a full calendar date ``YYYY-MM-DD``.

    :param value: candidate string.
    """
    return _DATE.fullmatch(value) is not None and _is_calendar_day(value[:4], value[5:7], value[8:10])


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a hyphenated UUID (any version, either case).

    :param value: candidate string.
    """
    return _UUID.fullmatch(value) is not None


def is_email(value: str) -> bool:
    """Whether ``value`` looks like a mailbox address ``local@domain.tld``.

    :param value: candidate string.
    """
    return len(value) <= 320 and _EMAIL.fullmatch(value) is not None


def is_uri(value: str) -> bool:
    """Whether ``value`` is an absolute URI (it has a scheme and no whitespace).

    :param value: candidate string.
    """
    return _URI.fullmatch(value) is not None


def _parses_as(kind: Callable[[str], object], value: str) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def is_ipv4(value: str) -> bool:
    """Whether ``value`` is a dotted-quad IPv4 address (no leading zeros, as ``ipaddress`` demands).

    :param value: candidate string.
    """
    return _IPV4.fullmatch(value) is not None


def is_ipv6(value: str) -> bool:
    """Whether ``value`` is an IPv6 address.

    :param value: candidate string.
    """
    return _parses_as(ipaddress.IPv6Address, value)


def is_ip(value: str) -> bool:
    """Whether ``value`` is an IPv4 or IPv6 address (Headwater's own ``ip`` format).

    :param value: candidate string.
    """
    # Most traffic is IPv4: a regex answers that in a fraction of ipaddress's time.
    if _IPV4.fullmatch(value) is not None:
        return True
    return ":" in value and is_ipv6(value)


#: The regex versions of the checks that also exist in C: the reference the C ones are tested against.
REFERENCE_CHECKS: dict[str, Callable[[str], bool]] = {
    "date-time": is_date_time, "uri": is_uri, "email": is_email, "uuid": is_uuid,
}

try:  # the same answers from schemas/_cformats.c, in a fraction of the time (built with the package)
    from schemas import _cformats
except ImportError:  # pragma: no cover - an install that could not compile it keeps the regexes
    _cformats = None
if _cformats is not None:
    is_date_time = _cformats.is_date_time  # noqa: F811
    is_uri = _cformats.is_uri  # noqa: F811
    is_email = _cformats.is_email  # noqa: F811
    is_uuid = _cformats.is_uuid  # noqa: F811

#: Schema ``pattern`` texts that a format check answers exactly (fastjsonschema reads ``$`` as the end of the
#: string), so the generated checks can call the check instead of running the regex.
PATTERN_CHECKS: dict[str, Callable[[str], bool]] = {
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$": is_uuid,
}

#: Format name -> check. The single source of truth for both validators and for the linter.
FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "date-time": is_date_time,
    "date": is_date,
    "uuid": is_uuid,
    "email": is_email,
    "uri": is_uri,
    "ipv4": is_ipv4,
    "ipv6": is_ipv6,
    "ip": is_ip,
}


def fastjsonschema_formats() -> dict[str, Callable[[str], bool]]:
    """Formats in the shape ``fastjsonschema.compile(formats=...)`` expects.

    fastjsonschema only calls these for ``str`` values, as JSON Schema formats apply to strings only.
    """
    return dict(FORMAT_CHECKS)


def jsonschema_format_checker() -> jsonschema.FormatChecker:
    """A ``jsonschema.FormatChecker`` that applies exactly :data:`FORMAT_CHECKS`."""
    checker = jsonschema.FormatChecker(formats=())
    for name, check in FORMAT_CHECKS.items():
        checker.checks(name)(_strings_only(check))
    return checker


def _strings_only(check: Callable[[str], bool]) -> Callable[[object], bool]:
    # jsonschema hands every instance to a format check; non-strings are the "type" keyword's business.
    def checked(instance: object) -> bool:
        return not isinstance(instance, str) or check(instance)

    return checked
