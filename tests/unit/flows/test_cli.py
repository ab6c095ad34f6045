"""`headwater flow` / `headwater replay` argument handling and the run module's outputs."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from flows.cli import add_parser, flow_command
from flows.outputs import JsonLinesSink, KafkaRowSink, read_json_lines
from flows.run import parse_outputs
from flows.stages import DeadLetter, decode_dead_letter
from tests.flowkit import make_settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headwater")
    add_parser(p.add_subparsers(dest="command"))
    return p


def test_flow_passes_bytewax_flags_through():
    args = parser().parse_args(["flow", "--output", "jsonl:/tmp/x", "-w", "2", "-i", "1", "-a", "h0:1;h1:2",
                                "-r", "/tmp/rec", "-s", "5", "-b", "30"])
    cmd = flow_command(args)
    assert cmd[1:3] == ["-m", "bytewax.run"]
    assert "output='jsonl:/tmp/x'" in cmd[3]
    assert cmd[4:] == ["-w", "2", "-i", "1", "-a", "h0:1;h1:2", "-r", "/tmp/rec", "-s", "5", "-b", "30"]
    assert args.func.__name__ == "_cmd_flow"


def test_replay_options():
    args = parser().parse_args(["replay", "--stage", "validate", "--event", "page_viewed", "--dry-run"])
    assert (args.stage, args.event, args.dry_run, args.all) == ("validate", "page_viewed", True, False)
    with pytest.raises(SystemExit):
        parser().parse_args(["replay", "--stage", "nonsense"])


def test_print_command_runs_without_bytewax(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import sys, argparse; from flows.cli import add_parser;"
                          "p = argparse.ArgumentParser(); add_parser(p.add_subparsers());"
                          "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))",
                          "flow", "--print-command", "-w", "2"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HEADWATER_DATA_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "bytewax.run" in out.stdout and "-w 2" in out.stdout


def test_parse_outputs(tmp_path):
    settings = make_settings(tmp_path)
    sinks = parse_outputs(f"stdout, jsonl:{tmp_path}/rows, kafka:rows.topic", settings)
    assert set(sinks) == {"stdout", "jsonl", "kafka_rows.topic"}
    assert isinstance(sinks["jsonl"], JsonLinesSink) and isinstance(sinks["kafka_rows.topic"], KafkaRowSink)
    with pytest.raises(ValueError, match="unknown output"):
        parse_outputs("s3:bucket", settings)


def test_json_lines_skip_a_torn_last_line(tmp_path):
    (tmp_path / "rows-0.jsonl").write_bytes(b'{"event_id":"a"}\n{"event_id":"b"}\n{"event_id":"c')
    assert [r["event_id"] for r in read_json_lines(tmp_path)] == ["a", "b"]


def test_dead_letter_round_trip():
    letter = DeadLetter("decode", [{"path": "", "message": "not JSON"}], "raw", 2, 17, key=b"k", original=b"\xff\x00")
    doc = decode_dead_letter(letter.encode())
    assert (doc["stage"], doc["source_partition"], doc["source_offset"]) == ("decode", 2, 17)
    assert (doc["original"], doc["original_key"]) == (b"\xff\x00", b"k")
