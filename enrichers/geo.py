"""Geo columns from the client's IP address, looked up while the raw address is still in memory.

The flow calls :meth:`GeoEnricher.columns` with the address :mod:`enrichers.pii` took out of the event, before
anything is stored; afterwards only the country/region/city/… columns (and, when configured, a truncated network)
remain. Without a database every column is ``None``: geo is an enrichment, never a reason to drop an event.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from enrichers.metrics import CacheCounter
from geoip.reader import GeoReader, GeoResult

GEO_COLUMNS = ("country", "region", "city", "latitude", "longitude", "time_zone")
_EMPTY = dict.fromkeys(GEO_COLUMNS)
_NO_VALUES = (None,) * len(GEO_COLUMNS)


class GeoEnricher:
    """:param reader: an open :class:`GeoReader`, or ``None`` to fill every geo column with ``None``"""

    def __init__(self, reader: GeoReader | None):
        self._reader = reader
        self._metrics = CacheCounter("geoip")

    @classmethod
    def from_settings(cls, settings: Any, cache_size: int = 100_000) -> GeoEnricher:
        """Open ``settings.geoip_db`` when set.

        :raises FileNotFoundError: when the setting names a file that is not there (a start-up error, not a
            silent loss of every geo column)
        """
        path: Path | None = settings.geoip_db
        if path is None:
            return cls(None)
        if not Path(path).is_file():
            raise FileNotFoundError(f"HEADWATER_GEOIP_DB: {path} does not exist (build a test database with "
                                    f"'python -m geoip.build' or fetch DB-IP City Lite with geoip.fetch)")
        return cls(GeoReader(path, cache_size=cache_size))

    @property
    def enabled(self) -> bool:
        return self._reader is not None

    def lookup(self, ips: Iterable[str]) -> GeoResult | None:
        """The first of ``ips`` the database knows (candidates best first), or ``None``."""
        if self._reader is None:
            return None
        for ip in ips:
            found = self._reader.lookup(ip)
            if found is not None:
                return found
        return None

    def columns(self, ips: Iterable[str]) -> dict[str, Any]:
        """``{country, region, city, latitude, longitude, time_zone}`` for the first address found."""
        found = self.lookup(ips)
        if found is None:
            return dict(_EMPTY)
        return {"country": found.country, "region": found.region, "city": found.city,
                "latitude": found.latitude, "longitude": found.longitude, "time_zone": found.time_zone}

    def values(self, ips: Iterable[str]) -> tuple[Any, ...]:
        """The geo columns as a tuple in :data:`GEO_COLUMNS` order (all ``None`` when no address is found): what the
        flow puts in its rows, without building a dict per event."""
        found = self.lookup(ips)
        if found is None:
            return _NO_VALUES
        return found.country, found.region, found.city, found.latitude, found.longitude, found.time_zone

    def publish_metrics(self) -> None:
        """Add the reader's cache hits and misses since the last call to ``analytics_enrich_cache_total``."""
        if self._reader is not None:
            self._metrics.publish_totals(*self._reader.cache_stats())
