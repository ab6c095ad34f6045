"""Prometheus metrics of the enrichers, in the default registry (Bytewax serves it at :3030/metrics).

Defined once here so that every enricher reports under the same names, whichever worker thread runs it.
"""
from __future__ import annotations

from prometheus_client import Counter

ENRICH_CACHE = Counter(
    "analytics_enrich_cache",
    "Enricher cache look-ups by cache (geoip, plan_tier, user_agent) and result (hit, miss).",
    ["cache", "result"],
)

ENRICH_ERRORS = Counter(
    "analytics_enrich_errors",
    "Enrichment degraded to a default value, by enricher and reason (db_error, overflow, ...).",
    ["enricher", "reason"],
)


class CacheCounter:
    """Publishes hit/miss counts of a cache that keeps its own totals (e.g. ``functools.lru_cache``).

    :param cache: the ``cache`` label
    """

    def __init__(self, cache: str):
        self._hit = ENRICH_CACHE.labels(cache=cache, result="hit")
        self._miss = ENRICH_CACHE.labels(cache=cache, result="miss")
        self._seen = (0, 0)

    def hit(self, n: int = 1) -> None:
        self._hit.inc(n)

    def miss(self, n: int = 1) -> None:
        self._miss.inc(n)

    def publish_totals(self, hits: int, misses: int) -> None:
        """Add what changed since the last call, given the cache's running totals."""
        seen_hits, seen_misses = self._seen
        if hits > seen_hits:
            self._hit.inc(hits - seen_hits)
        if misses > seen_misses:
            self._miss.inc(misses - seen_misses)
        self._seen = (max(hits, seen_hits), max(misses, seen_misses))
