"""Choosing and preloading the gateway's allocator (headwater.allocator); the real preload is an integration test."""
from __future__ import annotations

import pytest

from headwater.allocator import STARTED, active_allocator, find_jemalloc, preload_environment


@pytest.fixture
def library(tmp_path):
    path = tmp_path / "lib" / "libjemalloc.so.2"
    path.parent.mkdir()
    path.write_bytes(b"\x7fELF")
    return path


def test_jemalloc_is_preloaded_ahead_of_what_is_preloaded_already(library):
    env = preload_environment("jemalloc", {"PATH": "/bin", "LD_PRELOAD": "/opt/libfoo.so"}, (str(library),))
    assert env == {"PATH": "/bin", "LD_PRELOAD": f"{library} /opt/libfoo.so", STARTED: str(library)}


def test_nothing_to_do_when_system_chosen_started_before_preloaded_or_missing(library, tmp_path):
    found = (str(library),)
    assert preload_environment("system", {}, found) is None
    assert preload_environment("jemalloc", {STARTED: str(library)}, found) is None  # the loader ignored it: no loop
    assert preload_environment("jemalloc", {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, found) is None
    assert preload_environment("jemalloc", {}, (str(tmp_path / "nowhere" / "libjemalloc.so.2"),)) is None
    with pytest.raises(ValueError, match="unknown allocator 'tcmalloc'"):
        preload_environment("tcmalloc", {}, found)


def test_candidates_may_be_patterns(library):
    assert find_jemalloc((str(library.parent.parent / "*" / "libjemalloc.so.2"),)) == str(library)
    assert find_jemalloc((str(library.parent / "missing.so"),)) is None


def test_the_active_allocator_is_read_from_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert active_allocator(maps) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert active_allocator(maps) == "system"
    assert active_allocator(tmp_path / "absent") == "system"
