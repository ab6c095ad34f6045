"""The gateway's resources, opened once per worker process and shared by every request.

:class:`Gateway` is built from the settings, opened in the app's lifespan (``open``) and closed at shutdown;
request handlers only read from it. Nothing here is global: two apps in one process are independent, apart
from sharing a spool directory (each opens its own slot).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import Any

from headwater.settings import Settings
from ingest_gateway.audit import AuditLog
from ingest_gateway.consent import OptOutRegistry
from ingest_gateway.dedup import EventDedup, IdempotencyCache
from ingest_gateway.kv import MemoryKV, RedisKV
from ingest_gateway.metrics import GatewayMetrics
from ingest_gateway.options import GatewayOptions, deployment_key
from ingest_gateway.producer import Publisher
from ingest_gateway.rollout import Flags, FlagSource
from ingest_gateway.signing import SignatureVerifier
from ingest_gateway.spool import open_free_spool
from ingest_gateway.sqlstore import SqlStore
from schemas.registry import SchemaRegistry

log = logging.getLogger("headwater.gateway")


def _reveal(value: Any) -> Any:
    return value.reveal() if hasattr(value, "reveal") else value


class Gateway:
    """:param settings: the shared settings; :param options: gateway options (see :mod:`ingest_gateway.options`)"""

    def __init__(self, settings: Settings, options: GatewayOptions | None = None,
                 registry: SchemaRegistry | None = None) -> None:
        self.settings = settings
        self.options = options or GatewayOptions.from_settings(settings)
        self.registry = registry
        self.signing_keys: dict[str, bytes] = dict(_reveal(settings.hmac_keys) or {})
        self.require_signature = self.options.signature_required(bool(self.signing_keys))
        self.write_keys: tuple[bytes, ...] = tuple(k.encode() for k in (_reveal(settings.write_keys) or ()))
        self.inflight = 0
        # Request ids need to be unique, not unpredictable: a random prefix per app and a counter make them
        # so for the price of a string format (uuid4 costs a getrandom() system call per request).
        self._request_id_prefix = uuid.uuid4().hex[:16]
        self._request_numbers = itertools.count(1)
        o = self.options
        self.flags = FlagSource(Flags(edge_proxy_enabled=o.edge_proxy_enabled, dark_mode=o.dark_mode,
                                      rollout_percent=o.rollout_percent), o.flags_file, o.flags_check_seconds)
        self.publisher: Publisher | None = None
        self.metrics = GatewayMetrics(lambda: self.publisher.spool.pending_bytes if self.publisher else 0)
        self.kv: MemoryKV | RedisKV | None = None
        self.verifier: SignatureVerifier | None = None
        self.dedup: EventDedup | None = None
        self.idempotency: IdempotencyCache | None = None
        self.store: SqlStore | None = None
        self.audit: AuditLog | None = None
        self.optouts: OptOutRegistry | None = None
        self.audit_key = b""
        self._kafka_check: tuple[float, bool] = (0.0, False)

    def new_request_id(self) -> str:
        """A 32-hex-digit id for a request that brought none (``X-Request-ID``)."""
        return f"{self._request_id_prefix}{next(self._request_numbers):016x}"

    @property
    def dark(self) -> bool:
        """Dark mode as the flags say now (the flags file may change it while we run)."""
        return self.flags.current().dark_mode

    async def open(self) -> None:
        s, o = self.settings, self.options
        if self.registry is None:
            self.registry = await asyncio.to_thread(SchemaRegistry.load)
        redis_url = _reveal(s.redis_url)
        self.kv = RedisKV.from_url(redis_url) if redis_url else MemoryKV()
        if not redis_url:
            log.info("no redis_url: de-duplication and replay protection are local to this process")
        self.verifier = SignatureVerifier(self.signing_keys, s.signature_skew_seconds, self.kv)
        if not self.require_signature:
            log.warning("request signatures are NOT required (no hmac_keys configured)")
        self.dedup = EventDedup(self.kv, s.dedup_window_seconds,
                                on_error=lambda _exc: self.metrics.dependency_errors.labels("redis").inc())
        self.idempotency = IdempotencyCache(self.kv, s.dedup_window_seconds)
        self.audit_key = o.audit_hash_key or await asyncio.to_thread(
            deployment_key, o.sqlite_path.parent / "audit-hash.key")
        self.store = await asyncio.to_thread(SqlStore.open, _reveal(s.postgres_url), o.sqlite_path)
        self.audit = AuditLog(self.store)
        self.optouts = OptOutRegistry(self.store, o.optout_refresh_seconds)
        await asyncio.to_thread(self.audit.setup)
        await asyncio.to_thread(self.optouts.setup)
        self.optouts.start()
        spool = await asyncio.to_thread(open_free_spool, o.spool_dir, o.spool_max_bytes)
        self.publisher = Publisher(s.kafka_config(), spool, o.delivery_timeout_ms)
        self.publisher.start()
        log.info("gateway open", extra={"gateway_id": o.gateway_id, "mode": "dark" if self.dark else "live",
                                        "spool": str(spool.directory), "spooled_batches": len(spool),
                                        "store": self.store.dialect, "schemas": len(self.registry.events)})

    async def close(self) -> None:
        if self.optouts:
            await self.optouts.stop()
        if self.publisher:
            await asyncio.to_thread(self.publisher.close)
        if self.dedup:
            try:
                await self.dedup.close()
            except Exception as exc:  # they expire as pending claims instead; see EventDedup
                log.warning("could not write the last event-id confirmations: %s", exc)
        if self.kv:
            await self.kv.close()
        if self.store:
            await asyncio.to_thread(self.store.close)

    async def kafka_ready(self) -> bool:
        """Whether Kafka answers, cached for a second so probes cannot hammer the brokers."""
        checked_at, ok = self._kafka_check
        if time.monotonic() - checked_at < 1.0:
            return ok
        ok = bool(self.publisher) and await asyncio.to_thread(
            self.publisher.kafka_reachable, self.settings.kafka_topic_raw, 2.0)
        self._kafka_check = (time.monotonic(), ok)
        return ok
