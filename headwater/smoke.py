"""``headwater smoke --url URL``: the synthetic golden-payload check.

Sends one canary event (a fixed, schema-valid ``screen_viewed`` with a fresh event id, PII-free) through the
gateway exactly as an SDK would, signed, then polls each sink until the event is there exactly once, and prints
the latency from accept to visible per sink. Exit status 0 when it arrived everywhere within ``--timeout``,
1 when it did not (or arrived twice), 2 when it could not be sent or the settings are wrong.

Where the sinks are comes from the usual ``HEADWATER_*`` settings; the signing key is ``HEADWATER_HMAC_KEYS``
(the first kid, or ``--kid``). With ``--textfile PATH`` the outcome is also written in Prometheus text format
(``headwater_canary_success``, ``headwater_canary_latency_seconds{sink}``, ``headwater_canary_last_run_timestamp``)
for node-exporter's textfile collector; with ``--pushgateway URL`` the same gauges are pushed under
``job="headwater-canary"``, which is how the chart's canary CronJob feeds the alert rules (ops/README.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headwater.sinkcheck import SINKS, SinkReader

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
CANARY_DEVICE = "headwater-canary"
CANARY_USER = "headwater-canary"


def canary_event(event_id: str | None = None) -> dict[str, Any]:
    """The golden payload: every sink must show it unchanged apart from enrichment."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "event": "screen_viewed", "event_id": event_id or str(uuid.uuid4()), "timestamp": now,
        "user_id": CANARY_USER, "device_id": CANARY_DEVICE,
        "properties": {"screen_name": "HeadwaterCanary", "load_time_ms": 1, "is_first_view": False},
        "context": {"app": {"name": "headwater-smoke", "version": "1"}, "library": {"name": "headwater-smoke",
                                                                                   "version": "1"}},
    }


@dataclass
class SmokeResult:
    event_id: str
    accepted: bool = False
    answer: Any = None
    latency: dict[str, float | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.accepted and not self.problems and all(v is not None for v in self.latency.values())

    def push(self, gateway: str, namespace: str | None = None) -> None:
        """Push the outcome to a Prometheus Pushgateway under ``job="headwater-canary"`` (plus ``namespace``)."""
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

        registry = CollectorRegistry()
        Gauge("headwater_canary_success", "1 when the last canary reached every sink in time, else 0.",
              registry=registry).set(int(self.ok))
        latency = Gauge("headwater_canary_latency_seconds", "Accept-to-visible time of the last canary per sink.",
                        ["sink"], registry=registry)
        for sink, seconds in self.latency.items():
            if seconds is not None:
                latency.labels(sink).set(seconds)
        push_to_gateway(gateway, job="headwater-canary", registry=registry,
                        grouping_key={"namespace": namespace} if namespace else {})

    def prometheus(self) -> str:
        lines = ["# HELP headwater_canary_success 1 when the last canary reached every sink in time, else 0.",
                 "# TYPE headwater_canary_success gauge", f"headwater_canary_success {int(self.ok)}",
                 "# HELP headwater_canary_latency_seconds Accept-to-visible time of the last canary per sink "
                 "(absent when it did not arrive).",
                 "# TYPE headwater_canary_latency_seconds gauge"]
        lines += [f'headwater_canary_latency_seconds{{sink="{s}"}} {v:.3f}' for s, v in self.latency.items()
                  if v is not None]
        lines += ["# HELP headwater_canary_last_run_timestamp Unix time of the last canary run.",
                  "# TYPE headwater_canary_last_run_timestamp gauge",
                  f"headwater_canary_last_run_timestamp {time.time():.0f}"]
        return "\n".join(lines) + "\n"


def send_canary(url: str, kid: str, master_key: bytes, event: dict[str, Any], timeout: float = 10.0) -> dict:
    """POST the canary to ``{url}/analytics/collect``; returns the gateway's JSON answer.

    :raises RuntimeError: for a non-2xx answer, with the gateway's error
    """
    from ingest_gateway.signing import sign_request

    body = gzip.compress(json.dumps({"sent_at": event["timestamp"], "batch": [event]}).encode())
    headers = {**sign_request(body, CANARY_DEVICE, kid, master_key), "Content-Type": "application/json",
               "Content-Encoding": "gzip", "Idempotency-Key": event["event_id"]}
    req = urllib.request.Request(url.rstrip("/") + "/analytics/collect", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"gateway answered {exc.code}: {exc.read()[:500].decode(errors='replace')}") from None


def run_smoke(settings: Any, url: str, *, kid: str | None = None, sinks: tuple[str, ...] = SINKS,
              timeout: float = 60.0, poll: float = 0.5, out=sys.stdout) -> SmokeResult:
    keys = settings.hmac_keys.reveal()
    if not keys:
        raise ValueError("HEADWATER_HMAC_KEYS is empty: the canary must be signed like any client request")
    kid = kid or next(iter(keys))
    if kid not in keys:
        raise ValueError(f"--kid {kid!r} is not in HEADWATER_HMAC_KEYS (have: {', '.join(keys)})")
    event = canary_event()
    result = SmokeResult(event["event_id"])
    answer = send_canary(url, kid, keys[kid], event)
    accepted_at = time.monotonic()
    result.answer = answer
    result.accepted = answer.get("accepted") == 1
    if not result.accepted:
        result.problems.append(f"the gateway did not accept the canary: {json.dumps(answer)[:300]}")
        result.latency = dict.fromkeys(sinks)
        return result
    print(f"canary {event['event_id']} accepted by {url}; waiting for {', '.join(sinks)} (limit {timeout:.0f} s)",
          file=out)
    day = dt.date.fromisoformat(event["timestamp"][:10])
    pending = set(sinks)
    result.latency = dict.fromkeys(sinks)
    errors: dict[str, str] = {}
    with SinkReader(settings, sinks=sinks) as reader:
        while pending and time.monotonic() - accepted_at < timeout:
            for sink in sorted(pending):
                try:
                    found = reader.find(sink, [event["event_id"]], day=day)
                except Exception as exc:  # a sink down is a failed check, reported at the end
                    errors[sink] = f"{type(exc).__name__}: {exc}"
                    continue
                errors.pop(sink, None)
                copies = found.get(event["event_id"], 0)
                if copies:
                    result.latency[sink] = time.monotonic() - accepted_at
                    pending.discard(sink)
                    print(f"  {sink:11s} visible after {result.latency[sink]:.2f} s", file=out)
                    if copies > 1:
                        result.problems.append(f"{sink}: the canary is there {copies} times")
            if pending:
                time.sleep(poll)
    for sink in sorted(pending):
        detail = f" (last error: {errors[sink]})" if sink in errors else ""
        result.problems.append(f"{sink}: not visible within {timeout:.0f} s{detail}")
    return result


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "smoke", help="send a canary event through the gateway and confirm it reaches every sink",
        description="Send one signed canary event to the gateway at --url and poll the lake, ClickHouse and "
                    "Snowflake (from HEADWATER_* settings) until it is there once. Prints the latency per sink. "
                    "Exit 0 when it arrived everywhere in time, 1 when not, 2 for a usage or sending error.")
    p.add_argument("--url", required=True, help="gateway base URL, e.g. https://collect.example.com")
    p.add_argument("--kid", help="key id from HEADWATER_HMAC_KEYS to sign with (default: the first)")
    p.add_argument("--sinks", default=",".join(SINKS), help="comma-separated subset of lake,clickhouse,snowflake")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds the canary may take (default 60)")
    p.add_argument("--textfile", type=Path, help="also write the outcome as Prometheus text to this file")
    p.add_argument("--pushgateway", help="also push the outcome to this Prometheus Pushgateway URL "
                                         "(job headwater-canary, namespace from $POD_NAMESPACE)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_smoke)


def _cmd_smoke(args: argparse.Namespace) -> int:
    from headwater.settings import SettingsError, load_settings

    try:
        settings = load_settings(config_file=getattr(args, "config", None))
        sinks = tuple(s.strip() for s in args.sinks.split(",") if s.strip())
        bad = set(sinks) - set(SINKS)
        if bad or not sinks:
            raise ValueError(f"--sinks: unknown {', '.join(sorted(bad)) or '(empty)'}; use {', '.join(SINKS)}")
        result = run_smoke(settings, args.url, kid=args.kid, sinks=sinks, timeout=args.timeout)
    except (SettingsError, ValueError) as exc:
        print(f"smoke: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError, urllib.error.URLError) as exc:
        print(f"smoke: could not send the canary: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.textfile:
        tmp = args.textfile.with_suffix(args.textfile.suffix + ".tmp")
        tmp.write_text(result.prometheus())
        os.replace(tmp, args.textfile)  # the collector never reads a half-written file
    if args.pushgateway:
        try:
            result.push(args.pushgateway, os.environ.get("POD_NAMESPACE"))
        except OSError as exc:  # the check's own outcome still decides the exit status
            print(f"smoke: could not push to {args.pushgateway}: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps({"event_id": result.event_id, "ok": result.ok, "latency_seconds": result.latency,
                          "problems": result.problems}))
    for problem in result.problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if result.ok:
        print(f"OK canary reached {', '.join(result.latency)}; slowest "
              f"{max(v for v in result.latency.values() if v is not None):.2f} s")
    return EXIT_OK if result.ok else EXIT_FAIL
