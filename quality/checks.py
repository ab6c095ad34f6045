"""The checks, run one ``event_date`` at a time over every store, each ending in a :class:`CheckResult`.

- ``reconciliation``: per date, the distinct event_ids of the lake, ClickHouse (FINAL) and Snowflake are the same
  set; every event_id missing from a store is a failure.
- ``duplicates``: the lake and Snowflake hold each event_id once (ClickHouse read with FINAL too), within a date
  and across the dates of the run; ClickHouse's unmerged copies before FINAL are only counted, since a background
  merge collapses them.
- ``mandatory_fields``: rows missing each mandatory field, per store (:data:`quality.stores.FIELDS_CHECKED`).
- ``referential_integrity``: user_ids not in the accounts snapshot are listed, and their rows must carry the plan
  tier ``unknown`` (the flow's answer for them); anonymous rows must carry ``anonymous``. For known users the tier
  is compared with the *current* snapshot. Tiers change, so a disagreement is a warning when the account changed
  after the event could have seen it (``updated_at`` later than the event's receive time minus the flow's plan-tier
  cache TTL, or no ``updated_at``), and a failure when the account already had its current tier then: the flow
  should have written that tier (an enrichment outage answers ``unknown`` and shows up here).
- ``kafka`` (optional): per gateway receive date, the valid events of the raw topic are the events of each store.

Memory: one date of every store at a time (the narrow columns), plus the event_ids seen so far per store (for
duplicates across dates) and, with ``kafka``, per receive date.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from quality.accounts import Account, AccountsSnapshot
from quality.kafka import RawTopicView
from quality.stores import FIELDS_CHECKED, DayData, Store

PASS, WARN, FAIL, SKIP, INFO = "PASS", "WARN", "FAIL", "SKIP", "INFO"
UNKNOWN_TIER, ANONYMOUS_TIER = "unknown", "anonymous"
_SEVERITY_ORDER = {FAIL: 0, WARN: 1, INFO: 2}


@dataclass
class Finding:
    """One event (or user) that a check flagged: where, which, what."""

    store: str
    event_id: str | None
    problem: str
    severity: str = FAIL


@dataclass
class CheckResult:
    """A check's table (one row per date, store or field), its status and a bounded list of findings.

    :param findings_total: findings before the list was bounded
    """

    name: str
    status: str
    summary: str
    columns: list[str]
    rows: list[list[Any]]
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class QualityReport:
    start: dt.date
    end: dt.date
    stores: list[str]
    checks: list[CheckResult]

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS

    @property
    def exit_code(self) -> int:
        return 1 if self.status == FAIL else 0


class _Findings:
    """Keeps at most ``limit`` findings per (store, severity); counts all of them."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: list[Finding] = []
        self.total = 0
        self._per: Counter = Counter()

    def add(self, store: str, event_id: str | None, problem: str, severity: str = FAIL) -> None:
        self.total += 1
        key = (store, severity)
        if self._per[key] < self.limit:
            self._per[key] += 1
            self.items.append(Finding(store, event_id, problem, severity))

    def listed(self) -> list[Finding]:
        """Failures first, then warnings, then information; store order kept within each."""
        return sorted(self.items, key=lambda f: _SEVERITY_ORDER.get(f.severity, len(_SEVERITY_ORDER)))


def _worst(statuses: Sequence[str]) -> str:
    for status in (FAIL, WARN, PASS):
        if status in statuses:
            return status
    return SKIP


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


class _Reconciliation:
    def __init__(self, names: list[str], limit: int):
        self.names, self.rows, self.findings = names, [], _Findings(limit)

    def add(self, day: dt.date, data: dict[str, DayData]) -> None:
        sets = {name: set(data[name].event_ids) for name in self.names}
        union = set().union(*sets.values())
        status = PASS
        for name in self.names:
            for event_id in sorted(union - sets[name]):
                holders = ", ".join(n for n in self.names if event_id in sets[n])
                self.findings.add(name, event_id, f"missing on {day} (held by {holders})")
                status = FAIL
        self.rows.append([day.isoformat(), *(len(sets[n]) for n in self.names), status])

    def result(self) -> CheckResult:
        if len(self.names) < 2:
            return CheckResult("reconciliation", SKIP, "needs at least two stores", ["date", *self.names, "status"],
                               self.rows)
        failed = sum(r[-1] == FAIL for r in self.rows)
        summary = (f"{failed} of {len(self.rows)} date(s) differ, {self.findings.total} missing event_id(s)"
                   if failed else f"{len(self.rows)} date(s), the same distinct event_ids in every store")
        return CheckResult("reconciliation", FAIL if failed else PASS, summary,
                           ["date", *(f"{n} distinct" for n in self.names), "status"], self.rows,
                           self.findings.listed(), self.findings.total)


class _Duplicates:
    """Copies within a date, and an event_id stored under two dates (which FINAL does not collapse either: the
    ClickHouse table is partitioned by month of event_date). The ids of earlier dates are kept for the run."""

    def __init__(self, names: list[str], limit: int):
        self.names, self.rows, self.findings = names, [], _Findings(limit)
        self.first_day: dict[str, dict[str, dt.date]] = {n: {} for n in names}

    def add(self, day: dt.date, data: dict[str, DayData]) -> None:
        for name in self.names:
            d, earlier = data[name], self.first_day[name]
            counts = Counter(d.event_ids)
            copies = {i: n for i, n in counts.items() if n > 1}
            for event_id in sorted(copies):
                self.findings.add(name, event_id, f"stored {copies[event_id]} times on {day}")
            twice = sorted(i for i in counts if i in earlier)
            for event_id in twice:
                self.findings.add(name, event_id, f"stored on {earlier[event_id]} and again on {day}")
            for event_id in counts:
                earlier.setdefault(event_id, day)
            extra = d.rows - len(counts) + len(twice)
            status = FAIL if extra else PASS
            unmerged = "-" if d.unmerged_copies is None else d.unmerged_copies
            self.rows.append([day.isoformat(), name, d.rows, len(counts), extra, unmerged, status])

    def result(self) -> CheckResult:
        failed = [r for r in self.rows if r[-1] == FAIL]
        unmerged = sum(r[5] for r in self.rows if isinstance(r[5], int))
        notes = []
        if unmerged:
            notes.append(f"ClickHouse holds {unmerged} unmerged cop(ies) before FINAL: allowed, a background merge "
                         f"collapses them")
        summary = (f"{sum(r[4] for r in failed)} duplicate row(s) in {len({r[1] for r in failed})} store(s)"
                   if failed else "every event_id stored once")
        return CheckResult("duplicates", FAIL if failed else PASS, summary,
                           ["date", "store", "rows", "distinct", "duplicates", "unmerged (allowed)", "status"],
                           self.rows, self.findings.listed(), self.findings.total, notes)


class _MandatoryFields:
    def __init__(self, names: list[str], limit: int):
        self.names, self.findings = names, _Findings(limit)
        self.missing: dict[str, Counter] = {n: Counter() for n in names}
        self.rows_seen: Counter = Counter()

    def add(self, day: dt.date, data: dict[str, DayData]) -> None:
        for name in self.names:
            d = data[name]
            self.rows_seen[name] += d.rows
            self.missing[name].update(d.missing)
            for column, event_ids in d.missing_examples.items():
                for event_id in event_ids:
                    self.findings.add(name, event_id, f"{column} missing ({day})")

    def result(self) -> CheckResult:
        rows = []
        for column in FIELDS_CHECKED:
            counts = [self.missing[n][column] for n in self.names]
            rows.append([column, *counts, FAIL if any(counts) else PASS])
        bad = sum(r[-1] == FAIL for r in rows)
        total = sum(sum(c.values()) for c in self.missing.values())
        summary = (f"{total} missing value(s) in {bad} field(s)" if bad else
                   f"{len(FIELDS_CHECKED)} fields populated in " + ", ".join(
                       f"{self.rows_seen[n]} {n} rows" for n in self.names))
        return CheckResult("mandatory_fields", FAIL if bad else PASS, summary,
                           ["field", *(f"{n} missing" for n in self.names), "status"], rows,
                           self.findings.listed(), self.findings.total,
                           ["missing = NULL, an empty string, or the epoch/'' a non-nullable ClickHouse column stores "
                            "for NULL"])


class _ReferentialIntegrity:
    def __init__(self, names: list[str], accounts: AccountsSnapshot, cache_ttl_seconds: float, limit: int):
        self.names, self.accounts = names, accounts
        self.ttl = dt.timedelta(seconds=cache_ttl_seconds)
        self.findings = _Findings(limit)
        self.stats: dict[str, Counter] = {n: Counter() for n in names}
        self.users: dict[str, set[str]] = {n: set() for n in names}
        self.unknown_users: dict[str, set[str]] = {n: set() for n in names}

    def add(self, day: dt.date, data: dict[str, DayData]) -> None:
        known = self.accounts.lookup(u for n in self.names for u in data[n].user_ids if u is not None)
        for name in self.names:
            d, stats = data[name], self.stats[name]
            for event_id, user_id, tier, received in zip(d.event_ids, d.user_ids, d.plan_tiers, d.received_at):
                if user_id is None:
                    if tier != ANONYMOUS_TIER:
                        stats["mismatch"] += 1
                        self.findings.add(name, event_id, f"anonymous event has plan_tier {tier!r}, not 'anonymous'")
                    continue
                self.users[name].add(user_id)
                stats["tier_unknown_rows"] += tier == UNKNOWN_TIER
                self._compare(name, event_id, user_id, tier, received, known.get(user_id))

    def _compare(self, name: str, event_id: str, user_id: str, tier: str | None, received: dt.datetime | None,
                 account: Account | None) -> None:
        stats = self.stats[name]
        if account is None:
            stats["unknown_user_rows"] += 1
            if user_id not in self.unknown_users[name]:
                self.unknown_users[name].add(user_id)
                self.findings.add(name, event_id, f"user {user_id!r} is not in the accounts table", INFO)
            if tier != UNKNOWN_TIER:
                stats["mismatch"] += 1
                self.findings.add(name, event_id, f"user {user_id!r} is not in the accounts table but plan_tier "
                                                  f"is {tier!r}, not 'unknown'")
            return
        if tier == account.plan_tier:
            return
        since = account.updated_at
        if since is not None and received is not None and received > since + self.ttl:
            stats["mismatch"] += 1
            self.findings.add(name, event_id, f"plan_tier {tier!r} but user {user_id!r} has been "
                                              f"{account.plan_tier!r} since {since.isoformat()}, before the event")
        else:
            stats["changed"] += 1
            self.findings.add(name, event_id, f"plan_tier {tier!r}, user {user_id!r} is {account.plan_tier!r} now "
                                              f"(changed since the event)", WARN)

    def result(self) -> CheckResult:
        rows = []
        for name in self.names:
            s = self.stats[name]
            status = FAIL if s["mismatch"] else WARN if s["changed"] else PASS
            rows.append([name, len(self.users[name]), len(self.unknown_users[name]), s["unknown_user_rows"],
                         s["tier_unknown_rows"], s["mismatch"], s["changed"], status])
        status = _worst([r[-1] for r in rows])
        summary = {FAIL: f"{sum(r[5] for r in rows)} row(s) with a plan tier the flow could not have written",
                   WARN: f"{sum(r[6] for r in rows)} row(s) whose user changed tier since the event",
                   PASS: "every user's plan tier agrees with the accounts table"}.get(status, "no rows")
        notes = [f"accounts: {self.accounts.where}"]
        if not self.accounts.has_updated_at:
            notes.append("the accounts table has no updated_at: every tier disagreement is a warning")
        return CheckResult("referential_integrity", status, summary,
                           ["store", "users", "unknown users", "unknown-user rows", "tier=unknown rows",
                            "wrong tier (FAIL)", "tier changed since (WARN)", "status"],
                           rows, self.findings.listed(), self.findings.total, notes)


class _KafkaReconciliation:
    def __init__(self, names: list[str], stores: dict[str, Store], view: RawTopicView, start: dt.date,
                 end: dt.date, limit: int):
        self.names, self.stores, self.view = names, stores, view
        self.start, self.end = start, end
        self.findings = _Findings(limit)
        self.received: dict[str, dict[dt.date, set[str]]] = {n: defaultdict(set) for n in names}

    def add(self, day: dt.date, data: dict[str, DayData]) -> None:
        for name in self.names:
            for event_id, received in zip(data[name].event_ids, data[name].received_at):
                when = received.astimezone(dt.timezone.utc).date() if received is not None else None
                if when is not None and self.start <= when <= self.end:
                    self.received[name][when].add(event_id)

    def result(self) -> CheckResult:
        rows = []
        for day in _days(self.start, self.end):
            expected = self.view.by_date.get(day, set())
            if self.view.covered_from is not None and day < self.view.covered_from:
                rows.append([day.isoformat(), len(expected), *("-" for _ in self.names), SKIP])
                continue
            counts, status = [], PASS
            for name in self.names:
                held = self.received[name][day]
                # Events received that day whose event_date lies outside the dates read: look them up by id.
                elsewhere = self.stores[name].find_event_ids(sorted(expected - held)) if expected - held else {}
                for event_id in sorted(expected - held - set(elsewhere)):
                    self.findings.add(name, event_id, f"valid on the raw topic (received {day}) but not stored")
                    status = FAIL
                for event_id in sorted(held - expected):
                    self.findings.add(name, event_id, f"stored (received {day}) but not a valid event on the raw "
                                                      f"topic")
                    status = FAIL
                counts.append(len(held) + len(elsewhere))
            rows.append([day.isoformat(), len(expected), *counts, status])
        status = _worst([r[-1] for r in rows])
        v = self.view
        notes = [f"raw topic: {v.records} record(s), {v.dead_lettered} dead-lettered, {v.undecodable} "
                 f"undecodable, {v.repeated} repeated event_id(s)"]
        if v.covered_from is not None:
            notes.append(f"retention: the topic holds complete days from {v.covered_from} only")
        failed = sum(r[-1] == FAIL for r in rows)
        summary = (f"{failed} receive date(s) differ from the raw topic" if failed else
                   "every store holds the raw topic's valid events" if status == PASS else "nothing to compare")
        return CheckResult("kafka", status, summary,
                           ["received", "raw topic valid", *(f"{n}" for n in self.names), "status"], rows,
                           self.findings.listed(), self.findings.total, notes)


def run_checks(stores: Sequence[Store], accounts: AccountsSnapshot | None, start: dt.date, end: dt.date, *,
               raw_topic: RawTopicView | None = None, max_ids: int = 20,
               tier_cache_ttl_seconds: float = 300.0) -> QualityReport:
    """Every check over ``start``..``end`` (event dates, inclusive), one date at a time.

    :param accounts: the accounts snapshot; ``None`` skips referential integrity
    :param raw_topic: the raw topic's valid events; ``None`` skips the Kafka check
    :param max_ids: the most event_ids listed per check, store and severity
    :param tier_cache_ttl_seconds: the flow's plan-tier cache TTL (``plan_tier_ttl_seconds``)
    :raises quality.stores.StoreError: when a store cannot be read
    """
    names = [s.name for s in stores]
    by_name = {s.name: s for s in stores}
    checks: list[Any] = [_Reconciliation(names, max_ids), _Duplicates(names, max_ids),
                         _MandatoryFields(names, max_ids)]
    if accounts is not None:
        checks.append(_ReferentialIntegrity(names, accounts, tier_cache_ttl_seconds, max_ids))
    if raw_topic is not None:
        checks.append(_KafkaReconciliation(names, by_name, raw_topic, start, end, max_ids))
    for day in _days(start, end):
        data = {s.name: s.load_day(day, max_ids) for s in stores}
        for check in checks:
            check.add(day, data)
    return QualityReport(start, end, names, [c.result() for c in checks])
