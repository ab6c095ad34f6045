"""Look up where an IP address is, from a MaxMind-format city database, with an LRU cache in front.

Works with every database that uses MaxMind's city layout: GeoLite2-City, GeoIP2-City, DB-IP City Lite and the
small databases :mod:`geoip.build` writes for tests. The reader is the ``maxminddb`` C extension (memory-mapped),
which is thread-safe for reads, so one :class:`GeoReader` can serve every Bytewax worker thread of a process.

A look-up never raises: an address that is malformed, private, loopback, reserved or simply not in the database
gives ``None``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import maxminddb

DEFAULT_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class GeoResult:
    """Where an address is, as far as the database knows; any field may be ``None``.

    :param country: ISO 3166-1 alpha-2 code, e.g. ``DE``
    :param region: first-level subdivision, by English name (ISO code when the database has no name)
    :param city: English city name
    :param latitude: approximate latitude in degrees
    :param longitude: approximate longitude in degrees
    :param time_zone: IANA time zone, e.g. ``Europe/Berlin`` (DB-IP Lite databases do not carry it)
    """

    country: str | None = None
    region: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    time_zone: str | None = None


def _english_name(node: Any) -> str | None:
    if not isinstance(node, dict):
        return None
    names = node.get("names")
    if isinstance(names, dict) and names:
        return names.get("en") or next(iter(names.values()))
    return None


def parse_city_record(record: Any) -> GeoResult | None:
    """Turn one database record in MaxMind's city layout into a :class:`GeoResult`.

    :param record: what ``maxminddb`` returned for an address (``None`` when it had nothing)
    """
    if not isinstance(record, dict):
        return None
    country = record.get("country") or record.get("registered_country") or {}
    subdivisions = record.get("subdivisions") or [{}]
    first_subdivision = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else {}
    location = record.get("location") or {}
    region = _english_name(first_subdivision) or (
        first_subdivision.get("iso_code") if isinstance(first_subdivision, dict) else None)
    result = GeoResult(
        country=country.get("iso_code") if isinstance(country, dict) else None,
        region=region,
        city=_english_name(record.get("city")),
        latitude=_as_float(location.get("latitude")) if isinstance(location, dict) else None,
        longitude=_as_float(location.get("longitude")) if isinstance(location, dict) else None,
        time_zone=location.get("time_zone") if isinstance(location, dict) else None,
    )
    return None if result == GeoResult() else result


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def routable_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address to look up for ``ip``, or ``None`` when it is malformed or not globally routable.

    IPv4-mapped IPv6 addresses (``::ffff:81.2.69.1``) are looked up as the IPv4 address they carry.

    :param ip: textual IPv4 or IPv6 address
    """
    try:
        address = ipaddress.ip_address(ip.strip())
    except (ValueError, AttributeError):
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address if address.is_global else None


class GeoReader:
    """A MaxMind-format city database opened with the C extension, behind an LRU cache keyed on the address text.

    :param path: the ``.mmdb`` file
    :param cache_size: how many distinct addresses to remember (misses and ``None`` results included)
    :param mode: a ``maxminddb.MODE_*`` constant; the default picks the C extension with mmap when available
    :raises FileNotFoundError: when ``path`` does not exist
    :raises maxminddb.InvalidDatabaseError: when it is not a MaxMind database
    """

    def __init__(self, path: str | Path, cache_size: int = DEFAULT_CACHE_SIZE, mode: int = maxminddb.MODE_AUTO):
        self.path = Path(path)
        self._db = maxminddb.open_database(str(self.path), mode)
        meta = self._db.metadata()
        self.database_type: str = meta.database_type
        self.ip_version: int = meta.ip_version
        self._cached_lookup = lru_cache(maxsize=cache_size)(self._lookup_uncached)

    def lookup(self, ip: str | None) -> GeoResult | None:
        """Where ``ip`` is, or ``None``. Never raises.

        :param ip: textual IPv4 or IPv6 address
        """
        if not ip or not isinstance(ip, str):
            return None
        try:
            return self._cached_lookup(ip)
        except Exception:  # a corrupt database region must not stop the flow; the caller sees "unknown"
            return None

    def _lookup_uncached(self, ip: str) -> GeoResult | None:
        address = routable_address(ip)
        if address is None or (address.version == 6 and self.ip_version == 4):
            return None
        return parse_city_record(self._db.get(address))

    def cache_stats(self) -> tuple[int, int]:
        """``(hits, misses)`` of the cache since the reader was opened."""
        info = self._cached_lookup.cache_info()
        return info.hits, info.misses

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> GeoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
