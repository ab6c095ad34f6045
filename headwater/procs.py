"""Stopping the processes that the demo, the benchmarks and the tests start in sessions of their own."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) and everything it spawned: ``sig`` to the whole
    group (SIGINT lets Bytewax finish its epoch), then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass
