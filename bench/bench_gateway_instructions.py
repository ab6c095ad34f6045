"""CPU instructions per collect request of ``headwater gateway``, counted by valgrind (callgrind), not timed.

Usage::

    python bench/bench_gateway_instructions.py [--small 100] [--large 400] [--tree PATH] [--json]

On a shared machine the gateway's events per CPU-second swing by a factor of two from hour to hour with the
neighbours; an instruction count does not. This runs the gateway (one uvicorn worker, Redis, the devstack's
Kafka, signatures required, as ``bench_gateway`` does) under callgrind twice, sends ``--small`` and then
``--large`` signed gzipped 50-event requests after the same warm-up, and reports

    instructions per request = (total(large) - total(small)) / (large - small)

so start-up, imports and warm-up cancel out. Every thread counts (librdkafka's and the delivery-report thread
included); the kernel's share (system calls) does not. Two runs of the same tree agree within about 1 %.

Kafka's ``linger.ms`` is raised to 300 ms for the count: under valgrind the gateway is some fifty times slower,
and with the usual 5 ms every request would become its own message set per partition, which at full speed holds
the events of several requests; at 300 ms with four requests in flight the sets are about as full as under load.

The gateway runs with the system allocator here (valgrind substitutes its own ``malloc`` in any case), so the
count says nothing about jemalloc's gain: that is timed by ``bench_gateway``.

``--tree PATH`` counts another checkout (e.g. a ``git worktree`` of the previous commit) with this one's
interpreter, for a before/after comparison. Needs ``valgrind`` (Debian package) and the devstack.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import bench_gateway as bg  # noqa: E402
from headwater.procs import stop_process_group  # noqa: E402

WARMUP_REQUESTS = 60
CONNECTIONS = 4


async def _send(port: int, requests: list[bytes]) -> dict[str, int]:
    """Closed loop over ``CONNECTIONS`` connections; counts answers by status and whether all 50 were accepted."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)]
    pending = iter(requests)
    outcome: dict[str, int] = {}
    marker = f'"accepted":{bg.EVENTS_PER_BATCH}'.encode()

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in pending:
            status, body = await bg._exchange(reader, writer, request)
            label = f"{status}{'' if marker in body else ' (not all accepted)'}"
            outcome[label] = outcome.get(label, 0) + 1

    await asyncio.gather(*(worker(r, w) for r, w in conns))
    for _, writer in conns:
        writer.close()
    return outcome


def count(tree: Path, requests: list[bytes], brokers: str, linger_ms: int) -> tuple[int, dict[str, int]]:
    """Total instructions of one gateway process that served the warm-up and then ``requests``."""
    with tempfile.TemporaryDirectory(prefix="hw-bench-ir-") as work:
        out = Path(work) / "callgrind.out"
        env = bg.gateway_env(work, brokers, redis=True, log_level="WARNING")
        # The system allocator: valgrind replaces malloc anyway, and the gateway starting itself again under
        # jemalloc would leave valgrind behind (it does not follow execve unless told to).
        env.update({"HEADWATER_KAFKA_OPTIONS": f"linger.ms={linger_ms}", "PYTHONPATH": str(tree)})
        if "gateway_allocator" in (tree / "headwater" / "settings.py").read_text():  # older trees refuse it
            env["HEADWATER_GATEWAY_ALLOCATOR"] = "system"
        port = bg.free_port()
        log = open(Path(work) / "gateway.log", "wb")
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                 *bg.gateway_command(port)], cwd=tree, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            bg.wait_ready(port, proc, timeout=300,
                          output=lambda: (Path(work) / "gateway.log").read_text(errors="replace")[-2000:])
            asyncio.run(_send(port, requests[:WARMUP_REQUESTS]))
            outcome = asyncio.run(_send(port, requests[WARMUP_REQUESTS:]))
        finally:
            stop_process_group(proc, timeout=120)
            log.close()
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1]), outcome
    raise RuntimeError("callgrind wrote no totals")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100, help="measured requests of the first run")
    parser.add_argument("--large", type=int, default=400, help="measured requests of the second run")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose gateway is counted")
    parser.add_argument("--linger-ms", type=int, default=300)
    parser.add_argument("--brokers", default=os.environ.get("HEADWATER_KAFKA_BROKERS", "127.0.0.1:29092"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    if not 0 < args.small < args.large:
        parser.error("need 0 < --small < --large")
    for topic in bg.GATEWAY_TOPICS.values():
        bg.ensure_topic(args.brokers, topic)
    totals = {}
    for label, n in (("small", args.small), ("large", args.large)):
        print(f"counting {n} requests under callgrind ({args.tree}) ...", file=sys.stderr, flush=True)
        # Built afresh for each run (new event ids, new signatures): Redis remembers both across runs.
        requests = bg.build_requests(WARMUP_REQUESTS + n, seed=4242)
        totals[label], outcome = count(args.tree.resolve(), requests, args.brokers, args.linger_ms)
        if outcome != {"200": n}:
            raise RuntimeError(f"not every request was accepted whole: {outcome}")
    per_request = (totals["large"] - totals["small"]) / (args.large - args.small)
    report = {"tree": str(args.tree), "events_per_request": bg.EVENTS_PER_BATCH, "totals": totals,
              "instructions_per_request": per_request,
              "instructions_per_event": per_request / bg.EVENTS_PER_BATCH}
    print(f"| tree | instructions per request | per event |\n|---|---:|---:|\n"
          f"| {args.tree} | {per_request / 1e6:.3f} M | {per_request / bg.EVENTS_PER_BATCH / 1e3:.1f} k |")
    if args.json:
        print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
