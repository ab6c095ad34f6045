import argparse
import json

import pytest

from headwater.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """Every command path in the parser tree, e.g. ('devstack', 'up')."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


def test_the_contract_subcommands_exist():
    paths = set(_commands(build_parser()))
    for path in [("devstack", "up"), ("devstack", "down"), ("devstack", "status"), ("schemas", "lint"),
                 ("schemas", "check"), ("settings",)]:
        assert path in paths


@pytest.mark.parametrize("path", sorted(set(_commands(build_parser()))))
def test_help_on_every_subcommand(path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: headwater " + " ".join(path))
    assert len(out.splitlines()) > 3


def test_settings_command_reports_all_errors(monkeypatch, capsys):
    monkeypatch.setenv("HEADWATER_KAFKA_BROKERS", "nope")
    monkeypatch.setenv("HEADWATER_MAX_BATCH_EVENTS", "0")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert "HEADWATER_KAFKA_BROKERS" in err and "HEADWATER_MAX_BATCH_EVENTS" in err


def test_settings_command_masks_secrets(monkeypatch, capsys):
    monkeypatch.setenv("HEADWATER_ADMIN_TOKEN", "tok-that-must-not-print")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "tok-that-must-not-print" not in out
    assert json.loads(out)["admin_token"] == "**********"
