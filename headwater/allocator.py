"""jemalloc for the gateway's processes: found, preloaded, and the process started again under it.

The gateway allocates and frees a few kilobytes per event (the decoded event, its JSON text, the raw record, the
delivery report), much of it in blocks too large for Python's own small-object allocator, so the C library's
``malloc`` is on its hot path. Under jemalloc the same gateway serves about a tenth more events per CPU-second
(``bench/bench_gateway.py``, side by side on one machine). The flow is the other way round: measured the same way
it is slower under jemalloc, so only the gateway asks for it.

A library can only be preloaded when a process starts, so :func:`restart_under` re-executes the process with
``LD_PRELOAD`` set, once: the environment it leaves behind (``PRELOADED_BY_HEADWATER``) stops a second
attempt even when the dynamic loader ignored the library. uvicorn's worker processes inherit the variable.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Mapping

#: Where Debian/Ubuntu (``libjemalloc2``), Alpine, Red Hat and a source build put the library.
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/*-linux-gnu/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
STARTED = "PRELOADED_BY_HEADWATER"  # not HEADWATER_*: those are settings, and unknown ones are refused
CHOICES = ("jemalloc", "system")


def find_jemalloc(candidates: tuple[str, ...] = CANDIDATES) -> str | None:
    """The path of an installed jemalloc shared library, or ``None``."""
    for pattern in candidates:
        for path in sorted(glob.glob(pattern)):
            if Path(path).is_file():
                return path
    return None


def preload_environment(choice: str, environ: Mapping[str, str],
                        candidates: tuple[str, ...] = CANDIDATES) -> dict[str, str] | None:
    """The environment to start the process again with so that it runs under ``choice``, or ``None`` when it
    should simply go on: the system allocator was chosen, jemalloc is preloaded already, this process was already
    started again once, or no jemalloc is installed.

    :param choice: ``jemalloc`` or ``system`` (the ``gateway_allocator`` setting)
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown allocator {choice!r}: one of {', '.join(CHOICES)}")
    if choice == "system" or environ.get(STARTED):
        return None
    preloaded = [p for p in environ.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if any("jemalloc" in Path(p).name for p in preloaded):
        return None
    library = find_jemalloc(candidates)
    if library is None:
        return None
    return {**environ, "LD_PRELOAD": " ".join([library, *preloaded]), STARTED: library}


def restart_under(choice: str) -> None:
    """Start this process again under ``choice`` when :func:`preload_environment` says so (never returns then);
    otherwise return at once. The command line is the one this process was started with."""
    environment = preload_environment(choice, os.environ)
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)


def active_allocator(maps: str | Path = "/proc/self/maps") -> str:
    """``jemalloc`` when the library is mapped into this process, else ``system``."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in text else "system"
