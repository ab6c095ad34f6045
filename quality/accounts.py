"""The OLTP accounts table as a snapshot: each user's current plan tier and when it last changed.

Read through the plan-tier enricher's own store (PostgreSQL when ``postgres_url`` is set, else the embedded SQLite
file), from the table ``plan_tier_table`` names, so the check sees exactly what the flow looks tiers up in.
``updated_at`` tells a tier that changed after an event (a warning) from one the flow should have seen (a failure);
a table without that column makes every disagreement a warning.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable

from quality.stores import StoreError

_CHUNK = 1000


@dataclass(frozen=True)
class Account:
    plan_tier: str | None
    updated_at: dt.datetime | None


def _as_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    return None


class AccountsSnapshot:
    """Look-ups of many users at once, cached for the run.

    :param store: a ``PostgresAccountStore`` or ``SqliteAccountStore`` from :mod:`enrichers.plan_tier`
    """

    name = "accounts"

    def __init__(self, store: Any):
        self.store = store
        self.has_updated_at = True
        self._known: dict[str, Account | None] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> AccountsSnapshot:
        from enrichers.plan_tier import PlanTierLookup

        return cls(PlanTierLookup.from_settings(settings, table=settings.plan_tier_table).store)

    @property
    def where(self) -> str:
        path = getattr(self.store, "path", None)
        return f"{self.store.table} ({'SQLite ' + str(path) if path is not None else 'PostgreSQL'})"

    def lookup(self, user_ids: Iterable[str]) -> dict[str, Account | None]:
        """Account of each id (``None``: not in the table)."""
        ids = list(dict.fromkeys(u for u in user_ids if u is not None))
        todo = [u for u in ids if u not in self._known]
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start:start + _CHUNK]
            found = self._fetch(chunk)
            for user_id in chunk:
                self._known[user_id] = found.get(user_id)
        return {u: self._known[u] for u in ids}

    def _fetch(self, user_ids: list[str]) -> dict[str, Account]:
        try:
            if self.has_updated_at:
                try:
                    return self._fetch_with_updated_at(user_ids)
                except Exception as exc:
                    if "updated_at" not in str(exc):
                        raise
                    self.has_updated_at = False  # an older table: tiers only
            return {u: Account(t, None) for u, t in self.store.fetch(user_ids).items()}
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(self.name, f"cannot read {self.where}: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc

    def _fetch_with_updated_at(self, user_ids: list[str]) -> dict[str, Account]:
        return {u: Account(t, _as_time(when)) for u, (t, when) in self.store.fetch_accounts(user_ids).items()}

    def close(self) -> None:
        self.store.close()
