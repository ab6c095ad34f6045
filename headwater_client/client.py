"""``AnalyticsClient``: what an app embeds to record product events from one device or install."""
from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any, Mapping

from headwater_client.core import LIBRARY, Collector

_ANON_KEY, _USER_KEY = "anonymous_id", "user_id"


class AnalyticsClient(Collector):
    """Records events for one device: durably queued in SQLite before ``track`` returns, sent in signed
    batches of at most 50 by a background thread (every ``flush_interval`` seconds, or as soon as a batch
    is full) and by :meth:`flush`. Thread-safe: ``track`` may be called from any number of threads.

    :param url: gateway base URL; events go to ``{url}/analytics/collect``
    :param device_id: stable device id, sent as ``X-Headwater-Device`` and on every event
    :param kid: id of the master key the device secret derives from
    :param device_secret: ``HMAC-SHA256(master_key, device_id)``; or pass ``master_key`` (server-side tools)
    :param queue_path: the SQLite queue; ``~/.cache/headwater/queue-<device>.sqlite3`` by default
    :param anonymous_id: the install's anonymous id; generated once and kept in the queue file when None
    :param app_version, locale, experiments: context merged into every event
    :param consent: analytics consent; False captures nothing (a persisted :meth:`opt_out` also stays in force)
    :param batch_size: events per request, at most 50
    :param flush_interval: background send period in seconds; 0 or None for no background thread
    :param max_attempts: attempts per batch before its events go to the failure log
    :param backoff_base, backoff_max: full-jitter exponential backoff bounds (``Retry-After`` wins when sent)
    :param gzip: gzip request bodies larger than 1 KiB
    :param timeout: per-request timeout in seconds
    """

    def __init__(self, url: str, device_id: str, kid: str, device_secret: bytes | None = None,
                 master_key: bytes | None = None, queue_path: str | Path | None = None,
                 anonymous_id: str | None = None, app_version: str | None = None, locale: str | None = None,
                 experiments: Mapping[str, str] | None = None, consent: bool = True, batch_size: int = 50,
                 flush_interval: float | None = 1.0, max_attempts: int = 5, backoff_base: float = 0.25,
                 backoff_max: float = 30.0, gzip: bool = True, timeout: float = 10.0) -> None:
        super().__init__(url, device_id, kid, device_secret=device_secret, master_key=master_key,
                         queue_path=queue_path, consent=consent, batch_size=batch_size,
                         flush_interval=flush_interval, max_attempts=max_attempts, backoff_base=backoff_base,
                         backoff_max=backoff_max, gzip=gzip, timeout=timeout)
        if anonymous_id is None:
            anonymous_id = self._queue.get_meta(_ANON_KEY) or str(uuid.uuid4())
        self._queue.set_meta(_ANON_KEY, anonymous_id)
        self.anonymous_id = anonymous_id
        self.user_id: str | None = self._queue.get_meta(_USER_KEY)
        context: dict[str, Any] = {"library": dict(LIBRARY)}
        if app_version is not None:
            context["app"] = {"version": app_version}
        if locale is not None:
            context["locale"] = locale
        if experiments:
            context["experiments"] = dict(experiments)
        self._context = context

    def track(self, event: str, properties: dict[str, Any] | None = None, user_id: str | None = None,
              timestamp: dt.datetime | str | None = None, event_id: str | None = None,
              context: dict[str, Any] | None = None) -> str:
        """Queue one event; returns its ``event_id`` (a new UUID unless given, reuse it to make a retry safe).

        :param user_id: overrides the identified user for this event
        :param timestamp: when it happened (now by default); a naive datetime is taken as UTC
        :param context: merged over the automatic context (``app`` and ``experiments`` key by key)
        """
        return self._enqueue(event, properties, user_id=user_id if user_id is not None else self.user_id,
                             anonymous_id=self.anonymous_id, timestamp=timestamp, event_id=event_id,
                             context=_merge_context(self._context, context))

    def identify(self, user_id: str, traits: dict[str, Any] | None = None,
                 timestamp: dt.datetime | str | None = None, event_id: str | None = None,
                 context: dict[str, Any] | None = None) -> str:
        """Record an ``identify`` event with ``traits`` (see ``schemas/identify.schema.json``); later events
        carry ``user_id`` (kept across restarts, until :meth:`reset`)."""
        if not isinstance(user_id, str) or not 1 <= len(user_id) <= 128:
            raise ValueError("user_id must be a string of 1-128 characters")
        event_id = self._enqueue("identify", dict(traits or {}), user_id=user_id, anonymous_id=self.anonymous_id,
                                 timestamp=timestamp, event_id=event_id,
                                 context=_merge_context(self._context, context))
        if self._consent:
            self.user_id = user_id
            self._queue.set_meta(_USER_KEY, user_id)
        return event_id

    def reset(self) -> None:
        """Log out: forget the user id and start a new anonymous id."""
        self.user_id = None
        self._queue.set_meta(_USER_KEY, None)
        self.anonymous_id = str(uuid.uuid4())
        self._queue.set_meta(_ANON_KEY, self.anonymous_id)

    def screen(self, name: str, properties: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """A ``screen_viewed`` event for the app screen ``name``."""
        return self.track("screen_viewed", {"screen_name": name, **(properties or {})}, **kwargs)

    def page(self, path: str, properties: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """A ``page_viewed`` event. ``properties`` must carry the full ``url``; ``path`` must start with ``/``."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        props = {"path": path, **(properties or {})}
        if "url" not in props:
            raise ValueError("page_viewed needs the full 'url' in properties")
        return self.track("page_viewed", props, **kwargs)


def _merge_context(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    if not extra:
        return base
    if not isinstance(extra, dict):
        raise TypeError("context must be a dict")
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
