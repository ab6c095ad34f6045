"""The same pipeline written with quixstreams, Kafka to Kafka: the peer a user might pick instead of Bytewax.

Usage (from the project's ``.venv``; the quixstreams side runs in ``.venv-quix``)::

    python -m bench.bench_quix [--events N] [--runs R] [--json]

quixstreams pins ``confluent-kafka < 2.13`` and the project pins a newer one, so the quixstreams application runs
in a virtualenv of its own (``.venv-quix``: quixstreams, the project installed with ``--no-deps`` and the
project's runtime dependencies except Bytewax and confluent-kafka). This module is both halves:

- the parent (``main``, project venv): writes the records ``bench.bench_flow.make_records`` makes (the same ones
  the Bytewax benchmark uses) to a fresh 4-partition topic, prepares the same plan-tier table, geo database and
  salts, then alternately runs (a) a bare quixstreams pass-through and (b) the full pipeline, each as a
  ``.venv-quix/bin/python -m bench.bench_quix _child …`` process, and reads one JSON line from its stdout;
- the child: a quixstreams ``Application`` reading the raw topic. In ``full`` mode each message goes through
  :class:`flows.stages.Stages` exactly as the Bytewax flow does (decode, validate, clock, PII, geo, plan tier,
  user agent, row) and the row goes to an output topic as JSON keyed by event id, dead letters to a second
  topic; quixstreams processes a message at a time, so ``Stages.finish`` (the plan-tier look-up) runs per
  event, behind the same TTL cache. In ``bare`` mode messages are copied unchanged.

Timing matches ``bench_flow``: the child stamps the wall clock at the first message; the run's rate is N divided
by the time from that stamp to the child's exit, which comes once N messages are processed and the producer has
flushed (``Application.run(count=N)``). CPU time per event is taken as ``bench_flow`` takes it: the child's
CPU time at exit (``wait4``) less its CPU time at the first message, so start-up is not counted on either side. Peak memory is the child's VmHWM, which the child
reports at its end; :class:`PeakRss` samples VmHWM of any child from the parent, so that ``headwater bench``
measures the Bytewax children's memory the same way.
``main(argv)`` returns the figures as a dict, for ``headwater bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

QUIX_PYTHON = REPO / ".venv-quix" / "bin" / "python"
PARTITIONS = 4


# --- peak memory of child processes ------------------------------------------------------------------------------
class PeakRss:
    """Samples the peak resident set (VmHWM) of this process's children while it is open.

    VmHWM only grows, so sampling every ``interval`` seconds misses at most the growth of a process's last
    moments. ``label(cmdline)`` names a child (``None``: ignore it); :meth:`peaks` gives label → peak MiB per
    child process seen, in the order they started.

    :param label: child command line (arguments joined by spaces) → label or ``None``
    :param interval: seconds between samples
    """

    def __init__(self, label: Callable[[str], str | None], interval: float = 0.1):
        self._label = label
        self._interval = interval
        self._seen: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _watch(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self._interval)

    def sample(self, parent: int) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                    continue
                if pid not in self._seen:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    name = self._label(cmdline)
                    if name is None:
                        continue
                    self._seen[pid] = (name, 0)
                hwm = _vm_hwm_kib(pid)
            except (OSError, ValueError, IndexError):  # the child went away between two reads
                continue
            name, peak = self._seen[pid]
            self._seen[pid] = (name, max(peak, hwm))

    def peaks(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for pid in sorted(self._seen):
            name, kib = self._seen[pid]
            if kib:
                out.setdefault(name, []).append(round(kib / 1024, 1))
        return out


def _vm_hwm_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise ValueError(f"no VmHWM for {pid}")


# --- the child, inside .venv-quix ------------------------------------------------------------------------------
class _Consumed:
    """The part of a consumed message ``Stages.admit`` reads."""

    __slots__ = ("value", "key", "topic", "partition", "offset")

    def __init__(self, value: bytes, key: bytes | None, topic: str, partition: int, offset: int):
        self.value, self.key, self.topic, self.partition, self.offset = value, key, topic, partition, offset


def _child(argv: Sequence[str]) -> None:
    """Run one quixstreams application until ``--events`` messages are processed; print a JSON line."""
    parser = argparse.ArgumentParser(prog="bench_quix _child")
    parser.add_argument("--mode", choices=("full", "bare"), required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--raw-topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--invalid-topic", default=None, help="dead letters (full mode)")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--table", default=None, help="plan-tier accounts table (full mode)")
    args = parser.parse_args(argv)

    import orjson
    from quixstreams import Application, message_context
    from quixstreams.models.serializers import Serializer

    class Payload(Serializer):
        """The encoded bytes of a ``(is_row, key, payload)`` result."""

        def __call__(self, value: tuple, ctx: Any) -> bytes:
            return value[2]

    app = Application(
        broker_address=args.brokers, consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", loglevel="WARNING", use_changelog_topics=False,
        # what every group consumer needs on the devstack broker (DESIGN.md §5); the producer as the flow's
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 10},
        producer_extra_config={"linger.ms": 5, "acks": "all"},
    )
    started: list[float] = []

    def stamp(value: Any) -> None:
        if not started:  # wall clock and this process's CPU time (all threads) at the first message
            started.extend((time.time(), time.process_time()))

    raw = app.topic(args.raw_topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(raw)
    sdf = sdf.update(stamp)
    if args.mode == "bare":
        sdf.to_topic(app.topic(args.out_topic, value_serializer="bytes", key_serializer="bytes"))
    else:
        from flows.stages import DeadLetter, Stages
        from headwater.settings import load_settings
        from schemas.registry import SchemaRegistry

        settings = load_settings()
        stages = Stages.from_settings(settings, SchemaRegistry.load(), table=args.table)
        rows = app.topic(args.out_topic, value_serializer=Payload(), key_serializer="bytes")
        letters = app.topic(args.invalid_topic, value_serializer=Payload(), key_serializer="bytes")

        def process(value: bytes, key: bytes | None, timestamp: int, headers: Any) -> tuple:
            ctx = message_context()
            admitted = stages.admit(_Consumed(value, key, ctx.topic, ctx.partition, ctx.offset))
            if not isinstance(admitted, DeadLetter):
                admitted = stages.finish([admitted])[0]
            if isinstance(admitted, DeadLetter):
                return False, admitted.key, admitted.encode()
            return True, str(admitted["event_id"]).encode(), orjson.dumps(admitted, option=orjson.OPT_UTC_Z)

        sdf = sdf.apply(process, metadata=True)
        sdf.to_topic(lambda value, key, timestamp, headers: rows if value[0] else letters, key=lambda v: v[1])
    app.run(count=args.events, collect=False)
    finished = time.time()
    print(json.dumps({"mode": args.mode, "events": args.events, "started_at": started[0] if started else None,
                      "cpu_at_start_s": started[1] if started else None, "finished_at": finished,
                      "peak_rss_mib": round(_vm_hwm_kib() / 1024, 1)}), flush=True)


# --- the parent, in the project's venv --------------------------------------------------------------------------
def quix_label(cmdline: str) -> str | None:
    """:class:`PeakRss` label of a quixstreams child."""
    if "bench.bench_quix" in cmdline and "_child" in cmdline:
        return "quix_full" if "--mode full" in cmdline else "quix_bare"
    return None


def _run_child(mode: str, topics: dict[str, str], events: int, table: str, brokers: str, env: dict[str, str],
               work: Path, timeout_s: float) -> dict[str, Any]:
    """One child run: its JSON report (with ``peak_rss_mib``, its own VmHWM at the end) plus ``events_per_s`` and
    ``cpu_us_per_event`` (user + system, all threads, from ``wait4``, less what the child had used by its first
    message), both from the first message to the child's exit.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the high-water mark across ``exec``, so a child forked from a
    large parent reports at least the parent's size. VmHWM belongs to the child's own address space."""
    cmd = [str(QUIX_PYTHON), "-m", "bench.bench_quix", "_child", "--mode", mode, "--brokers", brokers,
           "--raw-topic", topics["raw"], "--out-topic", topics[mode], "--events", str(events)]
    if mode == "full":
        cmd += ["--invalid-topic", topics["invalid"], "--table", table]
    out_path, err_path = work / f"quix-{mode}.out", work / f"quix-{mode}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"quixstreams {mode} run did not finish in {timeout_s:.0f} s: "
                                   f"{err_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
    ended = time.time()
    lines = [line for line in out_path.read_text().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"quixstreams {mode} run failed ({proc.returncode}): "
                           f"{err_path.read_text(errors='replace')[-2000:]}")
    report = json.loads(lines[-1])
    if report.get("started_at") is None:
        raise RuntimeError(f"quixstreams {mode} run processed no message")
    report["events_per_s"] = events / (ended - report["started_at"])
    report["cpu_us_per_event"] = (usage.ru_utime + usage.ru_stime - report["cpu_at_start_s"]) / events * 1e6
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark.

    :param argv: command-line arguments without the program name (``None``: ``sys.argv[1:]``)
    :returns: ``{"events", "bare": [...], "full": [...], "ratios": [...], "median_*", "peak_rss_mib": {...},
        "bare_cpu_us": [...], "full_cpu_us": [...], "quixstreams"}`` (rates in events/s, ratios full/bare, peak
        memory in MiB and CPU time per event in µs, per run)
    """
    from bench.bench_flow import parse_pair_args  # the parent side only: bench_flow imports Bytewax

    parser = argparse.ArgumentParser(prog="bench_quix", description=__doc__.split("\n\n")[0])
    args = parse_pair_args(parser, argv)
    if not QUIX_PYTHON.exists():
        raise RuntimeError(f"{QUIX_PYTHON} is missing: create .venv-quix first (see the Makefile)")
    say = (lambda *a: None) if args.json else print

    from bench.bench_flow import (_accounts_table, _count_topic, _create_topics, _delete_topics, _drop_table,
                                  _produce, child_env, make_records)

    suffix = uuid.uuid4().hex[:8]
    raw_topic = f"bench.quix.raw.{suffix}"
    created = [raw_topic]
    _create_topics(args.brokers, [raw_topic])
    counts = _produce(args.brokers, raw_topic, make_records(args.events, max_request_events=args.request_events))
    say(f"quix: wrote {args.events:,} records to {raw_topic} (per partition {counts})")
    bare: list[float] = []
    full: list[float] = []
    memory: dict[str, list[float]] = {"bare": [], "full": []}
    cpu: dict[str, list[float]] = {"bare": [], "full": []}
    table = _accounts_table(args.postgres_url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-quix-") as tmp:
            work = Path(tmp)
            env = child_env(args, work, drop=("HEADWATER_", "VIRTUAL_ENV"))  # the child runs in .venv-quix
            timeout_s = max(120.0, args.events / 500)
            for run in range(1, args.runs + 1):
                topics = {"raw": raw_topic, **{k: f"bench.quix.{k}.{suffix}.{run}" for k in ("bare", "full", "invalid")}}
                created.extend(topics[k] for k in ("bare", "full", "invalid"))
                _create_topics(args.brokers, [topics[k] for k in ("bare", "full", "invalid")])
                runs = {}
                for mode in ("bare", "full"):
                    runs[mode] = _run_child(mode, topics, args.events, table, args.brokers, env, work, timeout_s)
                    memory[mode].append(runs[mode]["peak_rss_mib"])
                    cpu[mode].append(runs[mode]["cpu_us_per_event"])
                bare.append(runs["bare"]["events_per_s"])
                full.append(runs["full"]["events_per_s"])
                say(f"quix run {run}: bare {bare[-1]:10,.0f} events/s   full {full[-1]:10,.0f} events/s   "
                    f"ratio {full[-1] / bare[-1]:.2f}   (CPU per event: bare {cpu['bare'][-1]:.1f} µs, full "
                    f"{cpu['full'][-1]:.1f} µs; peak RSS bare {memory['bare'][-1]:.0f} MiB, full "
                    f"{memory['full'][-1]:.0f} MiB)")
                if run == 1 and not args.no_verify:
                    rows = _count_topic(args.brokers, topics["full"])
                    letters = _count_topic(args.brokers, topics["invalid"])
                    copied = _count_topic(args.brokers, topics["bare"])
                    say(f"       check: {rows:,} rows + {letters:,} dead letters; bare copied {copied:,}")
                    if rows + letters < args.events or copied < args.events:
                        raise RuntimeError("a quixstreams run wrote fewer records than it read")
    finally:
        _drop_table(args.postgres_url, table)
        _delete_topics(args.brokers, created)
    version = subprocess.run([str(QUIX_PYTHON), "-c", "import quixstreams; print(quixstreams.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    ratios = [f / b for f, b in zip(full, bare)]
    result = {
        "events": args.events, "quixstreams": version, "bare": [round(r) for r in bare],
        "full": [round(r) for r in full], "ratios": [round(r, 3) for r in ratios],
        "median_bare": round(statistics.median(bare)), "median_full": round(statistics.median(full)),
        "median_ratio": round(statistics.median(ratios), 3), "peak_rss_mib": memory,
        "bare_cpu_us": [round(c, 1) for c in cpu["bare"]], "full_cpu_us": [round(c, 1) for c in cpu["full"]],
    }
    say(f"quix median: bare {result['median_bare']:,} events/s, full {result['median_full']:,} events/s")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2:])
    else:
        main(sys.argv[1:])
