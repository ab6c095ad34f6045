"""``headwater flow`` and ``headwater replay``: register them with :func:`add_parser`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def flow_command(args: argparse.Namespace) -> list[str]:
    """The ``python -m bytewax.run …`` command line for ``headwater flow`` arguments."""
    call = (f"flows.run:get_flow(output={args.output!r}, raw_topic={args.raw_topic!r}, "
            f"invalid_topic={args.invalid_topic!r}, batch_size={args.batch_size!r}, "
            f"batch_timeout_ms={args.batch_timeout_ms!r}, plan_tier_table={args.plan_tier_table!r})")
    cmd = [sys.executable, "-m", "bytewax.run", call]
    for flag, value in (("-w", args.workers_per_process), ("-i", args.process_id), ("-a", args.addresses),
                        ("-r", args.recovery_directory), ("-s", args.snapshot_interval),
                        ("-b", args.backup_interval)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _cmd_flow(args: argparse.Namespace) -> int:
    from headwater.settings import SettingsError, load_settings

    try:
        load_settings(config_file=getattr(args, "config", None))  # report every settings problem up front
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    if args.recovery_directory and not any(Path(args.recovery_directory).glob("*.sqlite3")):
        Path(args.recovery_directory).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "bytewax.recovery", args.recovery_directory,
                        str(args.recovery_partitions)], check=True)
    cmd = flow_command(args)
    if args.print_command:
        print(" ".join(cmd))
        return EXIT_OK
    env = dict(os.environ)
    if getattr(args, "config", None):
        env["HEADWATER_CONFIG"] = args.config
    os.execve(cmd[0], cmd, env)  # Bytewax owns the process from here: signals reach it directly
    return EXIT_FAIL  # not reached


def _cmd_replay(args: argparse.Namespace) -> int:
    from headwater.settings import SettingsError, load_settings
    from flows.replay import replay_dead_letters
    from schemas.registry import SchemaRegistry

    try:
        settings = load_settings(config_file=getattr(args, "config", None))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        report = replay_dead_letters(
            settings, SchemaRegistry.load(), from_topic=args.from_topic, to_topic=args.to_topic,
            stage=args.stage, event=args.event, include_invalid=args.all, dry_run=args.dry_run,
            limit=args.limit, idle_seconds=args.idle_seconds)
    except Exception as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(("dry run: " if args.dry_run else "") + str(report))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``flow`` and ``replay`` to the ``headwater`` command."""
    p = subparsers.add_parser(
        "flow", help="run the Bytewax dataflow (Bytewax run flags pass through)",
        description="Run the dataflow: analytics.events.raw -> schema -> PII -> geo -> plan tier -> sinks, dead "
                    "letters to analytics.events.invalid. Settings come from HEADWATER_*; -w/-i/-a/-r/-s/-b are "
                    "Bytewax's own flags. With -r, the recovery store is initialised when the directory has none.")
    p.add_argument("--output", default=None,
                   help="lake[:URL], clickhouse, snowflake, all, stdout, jsonl:DIR or kafka:TOPIC, comma-separated "
                        "(default: HEADWATER_FLOW_OUTPUTS, all)")
    p.add_argument("--raw-topic", default=None, help="input topic (default: settings)")
    p.add_argument("--invalid-topic", default=None, help="dead-letter topic (default: settings)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="most events per plan-tier batch (default: HEADWATER_FLOW_BATCH_SIZE, 1000)")
    p.add_argument("--batch-timeout-ms", type=int, default=None,
                   help="longest wait for a batch to fill (default: HEADWATER_FLOW_BATCH_TIMEOUT_MS, 500)")
    p.add_argument("--plan-tier-table", default=None,
                   help="accounts table for plan tiers (default: HEADWATER_PLAN_TIER_TABLE, accounts)")
    p.add_argument("-w", "--workers-per-process", type=int, default=None)
    p.add_argument("-i", "--process-id", type=int, default=None)
    p.add_argument("-a", "--addresses", default=None, help='"host:port;host:port" of every process')
    p.add_argument("-r", "--recovery-directory", default=None)
    p.add_argument("-s", "--snapshot-interval", type=int, default=None, help="seconds")
    p.add_argument("-b", "--backup-interval", type=int, default=None, help="seconds")
    p.add_argument("--recovery-partitions", type=int, default=1, help="partitions when initialising recovery")
    p.add_argument("--print-command", action="store_true", help="print the bytewax.run command and exit")
    p.set_defaults(func=_cmd_flow)

    r = subparsers.add_parser(
        "replay", help="re-drive dead letters from analytics.events.invalid to analytics.events.raw",
        description="Read the dead-letter topic from the beginning and produce the original records again, by "
                    "default only those that validate against the current schemas.")
    r.add_argument("--from-topic", default=None, help="dead-letter topic (default: settings)")
    r.add_argument("--to-topic", default=None, help="raw topic (default: settings)")
    r.add_argument("--stage", choices=["decode", "validate", "time", "pii"], help="only this failure stage")
    r.add_argument("--event", help="only this event name")
    r.add_argument("--all", action="store_true", help="also re-drive letters that would still be invalid")
    r.add_argument("--dry-run", action="store_true", help="count only, produce nothing")
    r.add_argument("--limit", type=int, default=None, help="stop after this many")
    r.add_argument("--idle-seconds", type=float, default=3.0, help="stop after this long without a message")
    r.set_defaults(func=_cmd_replay)
