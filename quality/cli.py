"""``headwater quality``: register it with :func:`add_parser`; exit 0 when every check passes (warnings allowed),
1 when one fails, 2 for a usage, settings or connection problem."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
MAX_DAYS = 366


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-12-03") from None


def _store_list(text: str) -> list[str]:
    from quality.stores import STORE_NAMES

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STORE_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown store(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(STORE_NAMES)}")
    return list(dict.fromkeys(names))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``quality`` to the ``headwater`` command."""
    p = subparsers.add_parser(
        "quality", help="check that the lake, ClickHouse and Snowflake hold the same, complete events",
        description="Data-quality checks over event dates FROM..TO: reconciliation of distinct event_ids across "
                    "the stores (ClickHouse with FINAL), no duplicates in the lake and Snowflake, mandatory fields "
                    "populated, user_ids and plan tiers against the OLTP accounts table, and with --kafka the "
                    "valid events of the raw topic by receive date. Exit 0: all pass (warnings allowed); 1: a "
                    "check failed; 2: usage, settings or connection error.")
    p.add_argument("--from", dest="start", type=_date, required=True, metavar="YYYY-MM-DD",
                   help="first event date (UTC)")
    p.add_argument("--to", dest="end", type=_date, required=True, metavar="YYYY-MM-DD",
                   help="last event date (UTC), inclusive")
    p.add_argument("--stores", type=_store_list, default=["lake", "clickhouse", "snowflake"],
                   help="comma-separated subset of lake,clickhouse,snowflake (default: all three)")
    p.add_argument("--kafka", action="store_true",
                   help="also reconcile with the raw topic (read from the beginning: minutes on a large topic)")
    p.add_argument("--kafka-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="longest time to read each topic to its end (default 600)")
    p.add_argument("--no-accounts", action="store_true", help="skip the check against the accounts table")
    p.add_argument("--max-ids", type=int, default=20, metavar="N",
                   help="event_ids listed per check, store and severity (default 20)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="report format (default text)")
    # SUPPRESS: when not given here, a --config given to the main command stays in effect.
    p.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file (or HEADWATER_CONFIG)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from headwater.settings import SettingsError, load_settings
    from quality.kafka import KafkaReadError

    from quality.stores import StoreError

    if args.end < args.start:
        print("quality: --to is before --from", file=sys.stderr)
        return EXIT_USAGE
    if (args.end - args.start).days + 1 > MAX_DAYS:
        print(f"quality: at most {MAX_DAYS} days per run; split the range", file=sys.stderr)
        return EXIT_USAGE
    if args.max_ids < 0:
        print("quality: --max-ids must not be negative", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_settings(config_file=getattr(args, "config", None))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        report = check(settings, args.start, args.end, args.stores, kafka=args.kafka,
                       kafka_timeout=args.kafka_timeout, accounts=not args.no_accounts, max_ids=args.max_ids)
    except StoreError as exc:
        print(f"quality: cannot read {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaReadError as exc:
        print(f"quality: kafka: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from quality.report import render_json, render_text

    sys.stdout.write(render_json(report) if args.format == "json" else render_text(report))
    return report.exit_code


def check(settings: Any, start: dt.date, end: dt.date, stores: list[str], *, kafka: bool = False,
          kafka_timeout: float = 600.0, accounts: bool = True, max_ids: int = 20) -> Any:
    """Open the readers from ``settings``, run every check, close the readers; return the report.

    :raises quality.stores.StoreError: a store or the accounts table cannot be read
    :raises quality.kafka.KafkaReadError: a topic cannot be read to its end
    """
    from quality.accounts import AccountsSnapshot
    from quality.checks import run_checks
    from quality.kafka import read_raw_topic
    from quality.stores import open_stores

    view = read_raw_topic(settings, start, end, timeout_s=kafka_timeout) if kafka else None
    readers = open_stores(settings, stores)
    snapshot = AccountsSnapshot.from_settings(settings) if accounts else None
    try:
        return run_checks(readers, snapshot, start, end, raw_topic=view, max_ids=max_ids,
                          tier_cache_ttl_seconds=settings.plan_tier_ttl_seconds)
    finally:
        for reader in readers:
            reader.close()
        if snapshot is not None:
            snapshot.close()


def main(argv: list[str] | None = None) -> int:
    """Run the command on its own: ``python -m quality.cli --from 2026-12-03 --to 2026-12-03``."""
    parser = argparse.ArgumentParser(prog="headwater")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["quality", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
