"""The instruction-count benchmark refuses sizes that cannot give a difference (the count itself needs valgrind and
the devstack, and a minute and a half: it is a benchmark, run by hand)."""
from __future__ import annotations

import pytest

from bench import bench_gateway_instructions as ir


@pytest.mark.parametrize("argv", [["--small", "400", "--large", "100"], ["--small", "0", "--large", "10"],
                                  ["--small", "5", "--large", "5"]])
def test_sizes_must_grow(argv, monkeypatch):
    monkeypatch.setattr(ir.shutil, "which", lambda name: "/usr/bin/valgrind")
    with pytest.raises(SystemExit) as stopped:
        ir.main(argv)
    assert stopped.value.code == 2


def test_without_valgrind_it_says_so(monkeypatch, capsys):
    monkeypatch.setattr(ir.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit):
        ir.main([])
    assert "valgrind is not installed" in capsys.readouterr().err
