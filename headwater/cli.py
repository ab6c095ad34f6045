"""The ``headwater`` command: one entry point, one subcommand per job."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from headwater.settings import SettingsError, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _cmd_settings(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(config_file=args.config)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(settings.describe(), indent=2, default=str))
    return EXIT_OK


def _cmd_devstack(args: argparse.Namespace) -> int:
    from headwater.devstack import Devstack, DevstackError

    stack = Devstack(root=args.dir) if args.dir else Devstack()
    stack.install_missing = not getattr(args, "no_install", False)
    try:
        if args.action == "up":
            stack.up(args.services)
            if args.env:
                for key, value in stack.env().items():
                    print(f"export {key}={shlex.quote(value)}")
            else:
                _print_status(stack)
                print("\nSettings for this stack (use 'headwater devstack up --env' for export lines):")
                for key, value in stack.env().items():
                    print(f"  {key}={value}")
        elif args.action == "down":
            stopped = stack.down(args.services)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        else:
            rows = _print_status(stack)
            if args.env:
                for key, value in stack.env().items():
                    print(f"export {key}={shlex.quote(value)}")
            return EXIT_OK if all(r.state in ("running", "external-up") for r in rows) else EXIT_FAIL
    except DevstackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _print_status(stack) -> list:
    rows = stack.status()
    table = [("SERVICE", "STATE", "PID", "PORT", "DETAIL")] + [
        (r.name, r.state, str(r.pid or "-"), str(r.port), r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return rows


def _cmd_schemas_lint(args: argparse.Namespace) -> int:
    from schemas.lint import lint_directory

    problems = lint_directory(Path(args.directory) if args.directory else None)
    for p in problems:
        where = f"{p.schema}:{p.path}" if p.path else p.schema
        print(f"{where}: {p.message}")
    print(f"{len(problems)} problem(s)" if problems else "all schemas are clean")
    return EXIT_FAIL if problems else EXIT_OK


def _cmd_schemas_check(args: argparse.Namespace) -> int:
    from schemas.compat import check_paths

    try:
        results = check_paths(Path(args.old), Path(args.new))
    except (OSError, ValueError) as exc:
        print(f"schemas check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    breaking = 0
    for schema, problems in sorted(results.items()):
        for p in problems:
            breaking += 1
            print(f"BREAKING {schema}: {p.path or '(root)'}: {p.kind}: {p.reason}")
    if breaking:
        print(f"refused: {breaking} backward-incompatible change(s)")
        return EXIT_FAIL
    print("compatible: every change is additive")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater analytics-event pipeline: gateway, dataflow, sinks and their tooling.")
    parser.add_argument("--config", help="TOML settings file (default: $HEADWATER_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("settings", help="validate the settings and print them with secrets masked",
                       description="Load HEADWATER_* variables, *_FILE secrets and the TOML file; report every "
                                   "problem at once, or print the effective settings (secrets masked).")
    p.set_defaults(func=_cmd_settings)

    dev = sub.add_parser("devstack", help="start, stop or inspect the local services (Kafka, S3, ClickHouse, "
                                          "Snowflake stand-ins)",
                         description="The real local services that tests and the demo use. Logs and data live "
                                     "under var/devstack (or $HEADWATER_DEVSTACK_DIR); ports come from "
                                     "HEADWATER_DEVSTACK_<SERVICE>_PORT.")
    dev_sub = dev.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("up", "start the services (all, or those named) and wait until they answer"),
                         ("down", "stop the services this devstack started"),
                         ("status", "print a table of the services; exit 1 unless all are up")):
        a = dev_sub.add_parser(action, help=text, description=text)
        a.add_argument("services", nargs="*", help="kafka, s3, snowflake, clickhouse (default: all)")
        a.add_argument("--dir", help="state directory (default var/devstack)")
        if action in ("up", "status"):
            a.add_argument("--env", action="store_true", help="print 'export HEADWATER_...' lines for this stack")
        if action == "up":
            a.add_argument("--no-install", action="store_true",
                           help="fail instead of installing clickhouse-server with apt-get")
        a.set_defaults(func=_cmd_devstack)

    sch = sub.add_parser("schemas", help="lint the event schemas or check a change for compatibility",
                         description="Tools for the JSON Schema catalogue in schemas/.")
    sch_sub = sch.add_subparsers(dest="action", required=True, metavar="ACTION")
    lint = sch_sub.add_parser("lint", help="every schema compiles, is described, and marks its PII",
                              description="Check that every schema compiles, has descriptions, and marks fields "
                                          "that look like PII with x-pii. Exit 1 on any problem.")
    lint.add_argument("directory", nargs="?", help="schema directory (default: the shipped catalogue)")
    lint.set_defaults(func=_cmd_schemas_lint)
    check = sch_sub.add_parser("check", help="refuse a backward-incompatible change from OLD to NEW",
                               description="Compare two schema files or two schema directories. Exit 1 with a "
                                           "reason per breaking change (required field removed or renamed, type or "
                                           "enum narrowed, additionalProperties closed, ...); exit 0 when additive.")
    check.add_argument("old", help="old schema file or directory")
    check.add_argument("new", help="new schema file or directory")
    check.set_defaults(func=_cmd_schemas_check)
    # The gateway and the flow register their own commands; importing them here costs only argparse work.
    from flows.cli import add_parser as add_flow_commands
    from ingest_gateway.cli import add_parser as add_gateway_command

    add_gateway_command(sub)
    add_flow_commands(sub)

    geo = sub.add_parser("geoip", help="install or build a geo-IP database",
                         description="MaxMind-format city databases for the flow's geo enrichment.")
    geo_sub = geo.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = geo_sub.add_parser("fetch", help="download DB-IP City Lite (CC BY 4.0) into var/geoip",
                               description="Download this month's DB-IP City Lite database (IP Geolocation by "
                                           "DB-IP, https://db-ip.com, CC BY 4.0), check it opens, and print its "
                                           "path for HEADWATER_GEOIP_DB. The demo uses it when present.")
    fetch.add_argument("--dest", default="var/geoip", help="directory (default var/geoip)")
    fetch.add_argument("--month", help="YYYY-MM (default: this month, else last month)")
    fetch.add_argument("--base-url", help="a mirror of https://download.db-ip.com/free")
    fetch.set_defaults(func=_cmd_geoip_fetch)
    build = geo_sub.add_parser("build", help="write a small city database from a CSV of ranges",
                               description="Build a .mmdb from a CSV of start_ip,end_ip (or CIDR),country,region,"
                                           "city,lat,lon,time_zone rows: for tests and demos.")
    build.add_argument("csv", help="ranges CSV")
    build.add_argument("out", help="database to write")
    build.set_defaults(func=_cmd_geoip_build)

    from headwater.demo import add_parser as add_demo_command
    from headwater.smoke import add_parser as add_smoke_command

    add_demo_command(sub)
    add_smoke_command(sub)
    from quality.cli import add_parser as add_quality_command

    add_quality_command(sub)
    from bench.cli import add_parser as add_bench_command

    add_bench_command(sub)
    return parser


def _cmd_geoip_fetch(args: argparse.Namespace) -> int:
    from geoip.fetch import DBIP_BASE_URL, GeoFetchError, fetch_dbip_city_lite

    try:
        print(fetch_dbip_city_lite(args.dest, args.month, base_url=args.base_url or DBIP_BASE_URL))
    except GeoFetchError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _cmd_geoip_build(args: argparse.Namespace) -> int:
    from geoip.build import main as build_main

    return build_main([args.csv, args.out])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
